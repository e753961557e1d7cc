package local

// Enforced sizes: project quotas, done in-process with system calls (no
// shell, no xfs_quota). Each volume directory gets a project ID of its own
// (FS_IOC_FSSETXATTR with FS_XFLAG_PROJINHERIT, so everything created below
// it is charged to that ID), and the ID's block hard limit is the volume's
// size (quotactl: Q_XSETQLIM on XFS, Q_SETQUOTA with PRJQUOTA on ext4).
// quotactl goes through quotactl_fd(2) on a descriptor of the root, so no
// block device path is needed (a container may not see the node's /dev);
// on kernels before 5.14 it falls back to quotactl(2) with the mount's
// source device.

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl numbers and flags of linux/fs.h (the generic _IOC encoding of x86,
// arm and arm64: the architectures monocsi is built for).
const (
	fsIocFsgetxattr    = 0x801c581f // _IOR('X', 31, struct fsxattr)
	fsIocFssetxattr    = 0x401c5820 // _IOW('X', 32, struct fsxattr)
	fsXflagProjinherit = 0x00000200
)

// fsxattr is struct fsxattr of linux/fs.h (28 bytes).
type fsxattr struct {
	Xflags     uint32
	Extsize    uint32
	Nextents   uint32
	Projid     uint32
	Cowextsize uint32
	Pad        [8]byte
}

// quotactl commands of linux/quota.h and linux/dqblk_xfs.h.
const (
	prjQuota    = 2
	qGetQuota   = 0x800007
	qSetQuota   = 0x800008
	qXGetQuota  = 'X'<<8 | 3
	qXSetQLim   = 'X'<<8 | 4
	qifBLimits  = 1  // QIF_BLIMITS: dqb_bhardlimit and dqb_bsoftlimit are valid
	qifDQBlock  = 10 // QIF_DQBLKSIZE_BITS: if_dqblk limits count 1 KiB blocks
	fsDquotVer  = 1  // FS_DQUOT_VERSION
	fsProjQuota = 2  // FS_PROJ_QUOTA
	fsDqBSoft   = 1 << 2
	fsDqBHard   = 1 << 3
	xfsBBShift  = 9 // fs_disk_quota counts 512-byte basic blocks
)

func qcmd(cmd, typ uint32) uint32 { return cmd<<8 | typ&0xff }

// fsDiskQuota is struct fs_disk_quota of linux/dqblk_xfs.h (112 bytes).
type fsDiskQuota struct {
	Version      int8
	Flags        int8
	Fieldmask    uint16
	ID           uint32
	BlkHardlimit uint64
	BlkSoftlimit uint64
	InoHardlimit uint64
	InoSoftlimit uint64
	Bcount       uint64
	Icount       uint64
	Itimer       int32
	Btimer       int32
	Iwarns       uint16
	Bwarns       uint16
	ItimerHi     int8
	BtimerHi     int8
	RtbtimerHi   int8
	Padding2     int8
	RtbHardlimit uint64
	RtbSoftlimit uint64
	Rtbcount     uint64
	Rtbtimer     int32
	Rtbwarns     uint16
	Padding3     int16
	Padding4     [8]byte
}

// ifDqblk is struct if_dqblk of linux/quota.h (72 bytes on 64-bit).
type ifDqblk struct {
	Bhardlimit uint64
	Bsoftlimit uint64
	Curspace   uint64
	Ihardlimit uint64
	Isoftlimit uint64
	Curinodes  uint64
	Btime      uint64
	Itime      uint64
	Valid      uint32
}

// quotaUsage is what a project owns and may own.
type quotaUsage struct {
	Bytes, Inodes int64
	LimitBytes    int64 // 0: no limit
}

// quotaFS enforces sizes on the root's filesystem. projectQuota is the real
// one; the tests of this package put a fake in its place.
type quotaFS interface {
	// Kind names the filesystem ("xfs", "ext4").
	Kind() string
	// SetLimit sets the project's block hard limit (0: none), rounded up
	// to the filesystem's quota unit.
	SetLimit(id uint32, bytes int64) error
	// Usage reports what the project owns and its limit.
	Usage(id uint32) (quotaUsage, error)
	// SetProject gives the directory the project ID, inherited by
	// everything created below it.
	SetProject(dir string, id uint32) error
	// Project reads a directory's project ID and whether it is inherited.
	Project(dir string) (uint32, bool, error)
}

// projectQuota is quotaFS on a mounted XFS or ext4 filesystem.
type projectQuota struct {
	kind   string // "xfs" or "ext4"
	fd     int    // the root, open for the driver's lifetime: quotactl_fd's handle
	device string // the mount's source, for quotactl(2) where quotactl_fd is missing
}

func (q *projectQuota) Kind() string { return q.kind }

// quotactl runs one quotactl command for a project on the root's filesystem.
func (q *projectQuota) quotactl(cmd uint32, id uint32, addr unsafe.Pointer) error {
	_, _, e := unix.Syscall6(unix.SYS_QUOTACTL_FD, uintptr(q.fd), uintptr(qcmd(cmd, prjQuota)), uintptr(id), uintptr(addr), 0, 0)
	if e != unix.ENOSYS {
		if e != 0 {
			return e
		}
		return nil
	}
	dev, err := unix.BytePtrFromString(q.device)
	if err != nil {
		return err
	}
	_, _, e = unix.Syscall6(unix.SYS_QUOTACTL, uintptr(qcmd(cmd, prjQuota)), uintptr(unsafe.Pointer(dev)), uintptr(id), uintptr(addr), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

func (q *projectQuota) SetLimit(id uint32, n int64) error {
	if q.kind == "xfs" {
		d := fsDiskQuota{Version: fsDquotVer, Flags: fsProjQuota, Fieldmask: fsDqBHard | fsDqBSoft, ID: id,
			BlkHardlimit: roundUp(n, xfsBBShift)}
		return q.quotactl(qXSetQLim, id, unsafe.Pointer(&d))
	}
	d := ifDqblk{Bhardlimit: roundUp(n, qifDQBlock), Valid: qifBLimits}
	return q.quotactl(qSetQuota, id, unsafe.Pointer(&d))
}

// roundUp is n bytes in units of 1<<shift bytes, rounded up.
func roundUp(n int64, shift uint) uint64 {
	if n <= 0 {
		return 0
	}
	return (uint64(n) + 1<<shift - 1) >> shift
}

func (q *projectQuota) Usage(id uint32) (quotaUsage, error) {
	if q.kind == "xfs" {
		var d fsDiskQuota
		err := q.quotactl(qXGetQuota, id, unsafe.Pointer(&d))
		if errors.Is(err, unix.ENOENT) { // XFS: no dquot yet, nothing charged
			return quotaUsage{}, nil
		}
		return quotaUsage{Bytes: int64(d.Bcount << xfsBBShift), Inodes: int64(d.Icount),
			LimitBytes: int64(d.BlkHardlimit << xfsBBShift)}, err
	}
	var d ifDqblk
	err := q.quotactl(qGetQuota, id, unsafe.Pointer(&d))
	return quotaUsage{Bytes: int64(d.Curspace), Inodes: int64(d.Curinodes),
		LimitBytes: int64(d.Bhardlimit << qifDQBlock)}, err
}

// openDir opens a directory without following a symlink in its place.
func openDir(dir string) (int, error) {
	return unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
}

func ioctlFsxattr(fd int, req uintptr, x *fsxattr) error {
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(x))); e != 0 {
		return e
	}
	return nil
}

func (q *projectQuota) SetProject(dir string, id uint32) error {
	fd, err := openDir(dir)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var x fsxattr
	if err := ioctlFsxattr(fd, fsIocFsgetxattr, &x); err != nil {
		return fmt.Errorf("FS_IOC_FSGETXATTR %s: %w", dir, err)
	}
	x.Projid, x.Xflags = id, x.Xflags|fsXflagProjinherit
	if err := ioctlFsxattr(fd, fsIocFssetxattr, &x); err != nil {
		return fmt.Errorf("FS_IOC_FSSETXATTR %s: %w", dir, err)
	}
	return nil
}

func (q *projectQuota) Project(dir string) (uint32, bool, error) {
	fd, err := openDir(dir)
	if err != nil {
		return 0, false, err
	}
	defer unix.Close(fd)
	var x fsxattr
	if err := ioctlFsxattr(fd, fsIocFsgetxattr, &x); err != nil {
		return 0, false, err
	}
	return x.Projid, x.Xflags&fsXflagProjinherit != 0, nil
}

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	MountPoint   string
	FSType       string
	Source       string
	MountOpts    []string
	SuperOpts    []string
	Major, Minor uint32
}

// parseMountInfo parses /proc/self/mountinfo (proc(5)); lines it cannot
// read are skipped.
func parseMountInfo(b []byte) []mountEntry {
	var out []mountEntry
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		f := strings.Fields(string(line))
		sep := slices.Index(f, "-")
		if len(f) < 6 || sep < 6 || len(f) < sep+4 {
			continue
		}
		maj, min, ok := strings.Cut(f[2], ":")
		ma, err1 := strconv.ParseUint(maj, 10, 32)
		mi, err2 := strconv.ParseUint(min, 10, 32)
		if !ok || err1 != nil || err2 != nil {
			continue
		}
		out = append(out, mountEntry{
			MountPoint: unescapeMount(f[4]), MountOpts: strings.Split(f[5], ","),
			FSType: f[sep+1], Source: unescapeMount(f[sep+2]), SuperOpts: strings.Split(f[sep+3], ","),
			Major: uint32(ma), Minor: uint32(mi),
		})
	}
	return out
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space, ...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// mountOf returns the mount that holds path: the visible (last) entry with
// the longest mount point that is path or one of its parents. Entries of
// the path's own device are preferred (a filesystem with anonymous device
// numbers, such as btrfs, matches none, and then any entry is taken).
func mountOf(entries []mountEntry, path string, major, minor uint32) (mountEntry, bool) {
	best, found := mountEntry{}, false
	for _, devOnly := range []bool{true, false} {
		for _, e := range entries {
			if devOnly && (e.Major != major || e.Minor != minor) {
				continue
			}
			if e.MountPoint != "/" && e.MountPoint != path && !strings.HasPrefix(path, e.MountPoint+"/") {
				continue
			}
			if !found || len(e.MountPoint) >= len(best.MountPoint) {
				best, found = e, true
			}
		}
		if found {
			return best, true
		}
	}
	return best, false
}

// quotaSupport says whether the mount enforces project quotas the driver
// can use, and if not, why and what to do about it.
func quotaSupport(e mountEntry) (kind string, why string) {
	has := func(opts ...string) bool {
		for _, o := range opts {
			if slices.Contains(e.SuperOpts, o) || slices.Contains(e.MountOpts, o) {
				return true
			}
		}
		return false
	}
	where := fmt.Sprintf("%s (%s on %s)", e.FSType, e.Source, e.MountPoint)
	switch e.FSType {
	case "xfs":
		if has("prjquota", "pquota", "pqenforce") {
			return "xfs", ""
		}
		if has("pqnoenforce") {
			return "", where + " is mounted with pqnoenforce: project quotas are counted but not enforced; mount it with -o prjquota"
		}
		return "", where + " is not mounted with prjquota: mount it with -o prjquota (for the root filesystem, rootflags=prjquota on the kernel command line)"
	case "ext4":
		if has("prjquota") {
			return "ext4", ""
		}
		return "", where + " is not mounted with prjquota: it needs the quota and project features (mkfs.ext4 -O quota,project, or tune2fs -O quota,project while unmounted) and the mount option -o prjquota"
	}
	return "", where + " has no project quotas the local driver can use: put the root on XFS mounted with -o prjquota, or on ext4 made with -O quota,project and mounted with -o prjquota"
}

// detectQuota returns the root's project quotas, or nil and why sizes
// cannot be enforced there.
func detectQuota(root string) (quotaFS, string) {
	var st unix.Stat_t
	if err := unix.Stat(root, &st); err != nil {
		return nil, fmt.Sprintf("cannot stat %s: %v", root, err)
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Sprintf("cannot read the mount table: %v", err)
	}
	e, ok := mountOf(parseMountInfo(b), root, unix.Major(st.Dev), unix.Minor(st.Dev))
	if !ok {
		return nil, "cannot find the mount that holds " + root
	}
	kind, why := quotaSupport(e)
	if kind == "" {
		return nil, why
	}
	fd, err := openDir(root)
	if err != nil {
		return nil, fmt.Sprintf("cannot open %s: %v", root, err)
	}
	q := &projectQuota{kind: kind, fd: fd, device: e.Source}
	// Ask the kernel, not only the mount table: project 0 always exists.
	if _, err := q.Usage(0); err != nil {
		unix.Close(fd)
		return nil, fmt.Sprintf("%s (%s on %s) is mounted with prjquota, but quotactl for project quotas fails: %v", e.FSType, e.Source, e.MountPoint, err)
	}
	return q, ""
}
