package local

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Block volumes are sparse files under the root, each attached to a loop
// device while published; the device node is bind-mounted on the target
// file the kubelet names. Everything is done in-process with the loop
// ioctls (see loop(4)); nothing shells out to losetup.
//
// The devices are attached without LO_FLAGS_AUTOCLEAR: nothing holds a raw
// block device open between NodePublishVolume and the container's first
// open of it, so autoclear would detach it the moment the driver closed
// it. A device is detached instead when its last publication goes (and at
// start when no publication uses it, see reconcileLoops); LOOP_CLR_FD of a
// device a process still has open only marks it for autoclear, so the
// process keeps its data until it closes the device.

const (
	defaultLoopControl = "/dev/loop-control"
	sysBlock           = "/sys/block"
	devDir             = "/dev"
)

// loopDev is a bound loop device.
type loopDev struct {
	path     string // /dev/loopN
	name     string // loopN
	backing  string // the backing file's path as sysfs shows it, " (deleted)" cut off
	deleted  bool   // the backing file was unlinked (or replaced by a rename)
	dev, ino uint64 // the backing file's identity (LOOP_GET_STATUS64)
	readOnly bool
	// autoclear: the kernel detaches it on its last close (a LOOP_CLR_FD
	// while it was open elsewhere).
	autoclear bool
}

// errNoFreeLoop: the kernel has no loop device left to give.
var errNoFreeLoop = errors.New("no free loop device (raise the loop module's max_loop)")

// loopSupport tells whether loop devices can be attached here: the loop
// control device opens. why names what is missing otherwise.
func loopSupport(control string) (ok bool, why string) {
	fd, err := unix.Open(control, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Sprintf("%s cannot be opened (%v): load the loop module and give the node plugin the host's /dev", control, err)
	}
	unix.Close(fd)
	return true, ""
}

// listLoops returns the bound loop devices.
func listLoops() ([]loopDev, error) {
	entries, err := os.ReadDir(sysBlock)
	if err != nil {
		return nil, err
	}
	var out []loopDev
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, "loop") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(sysBlock, name, "loop", "backing_file"))
		if err != nil {
			continue // not bound
		}
		l := loopDev{path: filepath.Join(devDir, name), name: name, backing: strings.TrimSuffix(string(b), "\n")}
		l.backing, l.deleted = strings.CutSuffix(l.backing, " (deleted)")
		info, err := loopStatus(l.path)
		switch {
		case errors.Is(err, unix.ENXIO) || errors.Is(err, fs.ErrNotExist):
			continue // detached or removed meanwhile
		case err != nil:
			// A device that cannot be read may be a volume's: skipping it
			// would leak it, or give its volume a second device.
			return nil, fmt.Errorf("status of %s: %w", l.path, err)
		}
		l.dev, l.ino = info.Device, info.Inode
		l.readOnly, l.autoclear = info.Flags&unix.LO_FLAGS_READ_ONLY != 0, info.Flags&unix.LO_FLAGS_AUTOCLEAR != 0
		out = append(out, l)
	}
	return out, nil
}

func loopStatus(path string) (*unix.LoopInfo64, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	return unix.IoctlLoopGetStatus64(fd)
}

// attachLoop attaches a free loop device to the open file fd (name is
// recorded as its file name), read-only when ro.
func attachLoop(control string, fd int, name string, ro bool) (string, error) {
	ctl, err := unix.Open(control, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("open %s: %w", control, err)
	}
	defer unix.Close(ctl)
	info := unix.LoopInfo64{}
	if ro {
		info.Flags = unix.LO_FLAGS_READ_ONLY
	}
	copy(info.File_name[:len(info.File_name)-1], name)
	// Another process may take the free device between the two calls:
	// EBUSY, and the next free one is tried.
	for range 16 {
		n, err := unix.IoctlRetInt(ctl, unix.LOOP_CTL_GET_FREE)
		if errors.Is(err, unix.ENOSPC) {
			return "", errNoFreeLoop
		}
		if err != nil {
			return "", fmt.Errorf("find a free loop device: %w", err)
		}
		path := filepath.Join(devDir, "loop"+strconv.Itoa(n))
		dfd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return "", fmt.Errorf("open %s (does the node plugin see the host's /dev?): %w", path, err)
		}
		err = unix.IoctlLoopConfigure(dfd, &unix.LoopConfig{Fd: uint32(fd), Info: info})
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTTY) {
			err = setFD(dfd, fd, &info) // a kernel before 5.8: no LOOP_CONFIGURE
		}
		unix.Close(dfd)
		switch {
		case err == nil:
			return path, nil
		case !errors.Is(err, unix.EBUSY):
			return "", fmt.Errorf("attach %s to %s: %w", name, path, err)
		}
	}
	return "", fmt.Errorf("attach %s: every free loop device was taken by someone else first", name)
}

func setFD(dfd, fd int, info *unix.LoopInfo64) error {
	if err := unix.IoctlSetInt(dfd, unix.LOOP_SET_FD, fd); err != nil {
		return err
	}
	if err := unix.IoctlLoopSetStatus64(dfd, info); err != nil {
		unix.IoctlSetInt(dfd, unix.LOOP_CLR_FD, 0)
		return err
	}
	return nil
}

// detachLoop detaches the device if it is still attached to the file l
// was (checked on the descriptor that detaches it: while it is open the
// device cannot be released and taken by someone else); one already
// detached is fine. A device still open elsewhere is only marked to detach
// on its last close.
func detachLoop(l loopDev) error {
	fd, err := unix.Open(l.path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	info, err := unix.IoctlLoopGetStatus64(fd)
	if errors.Is(err, unix.ENXIO) {
		return nil
	}
	if err != nil {
		return err
	}
	if info.Device != l.dev || info.Inode != l.ino {
		return nil // released and reused meanwhile: not ours any more
	}
	if err := unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0); err != nil && !errors.Is(err, unix.ENXIO) {
		return err
	}
	return nil
}

// refreshLoop makes the device's size its backing file's again.
func refreshLoop(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.IoctlSetInt(fd, unix.LOOP_SET_CAPACITY, 0)
}

// deviceSize is the size in bytes of the block device at path.
func deviceSize(path string) (int64, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	n, err := unix.IoctlGetUint64(fd, unix.BLKGETSIZE64)
	return int64(n), err
}

// loopMounts lists where the device node of loop is bind-mounted, from
// /proc/self/mountinfo: the entries of the filesystem holding the node
// (its major:minor) whose root is the node. A bind mount of a device node
// does not open the device, so this, not an open count, is what tells a
// published device from an unused one.
func loopMounts(l loopDev) ([]string, error) {
	var st unix.Stat_t
	if err := unix.Stat(l.path, &st); err != nil {
		return nil, err
	}
	want := fmt.Sprintf("%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev))
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent major:minor root mount-point ...
		fs := strings.Fields(sc.Text())
		if len(fs) >= 5 && fs[2] == want && fs[3] == "/"+l.name {
			out = append(out, unescapeMount(fs[4]))
		}
	}
	return out, sc.Err()
}

// rdevOf is the device number of the loop device path.
func rdevOf(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Rdev, nil
}
