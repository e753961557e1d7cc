package local

import (
	"cmp"
	"context"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/monocsi/monocsi/driver"
)

// A block volume (volumeMode: Block) is the sparse file <root>/<id> of
// exactly its size, where a filesystem volume has its directory. Its size
// needs no project quota: the file's length is the device's size. Free
// space is checked at create and expansion, as for directories; the file's
// blocks are allocated as the pod writes (see loop.go for the devices).

const (
	// sectorSize: a loop device ignores a last partial sector, so sizes
	// are rounded up to whole ones.
	sectorSize = 512
	// defaultBlockSize is the size of a block volume created without a
	// capacity range.
	defaultBlockSize = 1 << 30
)

// isBlock tells whether caps ask for a block volume.
func isBlock(caps []*csi.VolumeCapability) bool {
	for _, c := range caps {
		if c.GetBlock() != nil {
			return true
		}
	}
	return false
}

// blockSize is the size of a new block volume: size (0: the default,
// within limit) rounded up to whole sectors, which must stay within limit.
func blockSize(size, limit int64) (int64, error) {
	if size == 0 {
		size = defaultBlockSize
		if limit > 0 {
			size = min(size, limit)
		}
	}
	if size > math.MaxInt64-sectorSize {
		return 0, status.Errorf(codes.OutOfRange, "%d bytes is too large a block volume", size)
	}
	n := (size + sectorSize - 1) &^ (sectorSize - 1)
	if limit > 0 && n > limit {
		return 0, status.Errorf(codes.OutOfRange,
			"a block volume is made of whole %d-byte sectors: %d bytes rounds up to %d, above the limit of %d", sectorSize, size, n, limit)
	}
	return n, nil
}

// openBlockFile opens the volume's file without following a symlink; it
// must be a regular file (FAILED_PRECONDITION otherwise: replaced behind
// the driver's back, never used).
func (d *Driver) openBlockFile(id string, flags int) (int, *unix.Stat_t, error) {
	p := d.volumeDir(id)
	fd, err := unix.Open(p, flags|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return -1, nil, status.Errorf(codes.NotFound, "block volume %s has lost its file %s", id, p)
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.EISDIR):
		return -1, nil, status.Errorf(codes.FailedPrecondition, "block volume %s: %s is no longer a regular file; refusing to use it", id, p)
	case err != nil:
		return -1, nil, status.Errorf(codes.Internal, "open %s: %v", p, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, nil, status.Errorf(codes.Internal, "stat %s: %v", p, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return -1, nil, status.Errorf(codes.FailedPrecondition, "block volume %s: %s is no longer a regular file; refusing to use it", id, p)
	}
	return fd, &st, nil
}

// createBlockFile makes the volume's sparse file of exactly size bytes. A
// file without a record is what an interrupted create left: it is emptied
// first, so a new volume never inherits old blocks.
func (d *Driver) createBlockFile(id string, size int64, fresh bool) error {
	p := d.volumeDir(id)
	fd, err := unix.Open(p, unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0o600)
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EISDIR) {
		return status.Errorf(codes.Internal, "%s exists but is not a regular file", p)
	}
	if err != nil {
		return status.Errorf(codes.Internal, "create %s: %v", p, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return status.Errorf(codes.Internal, "%s exists but is not a regular file", p)
	}
	if fresh && st.Size != 0 {
		if err := unix.Ftruncate(fd, 0); err != nil {
			return status.Errorf(codes.Internal, "empty %s: %v", p, err)
		}
	}
	// Never shrink: a file longer than recorded holds data of an expansion
	// whose record was not written (a crash); cutting it would lose it.
	if fresh || st.Size < size {
		if err := unix.Ftruncate(fd, size); err != nil {
			return status.Errorf(codes.Internal, "size %s to %d bytes: %v", p, size, err)
		}
	}
	return nil
}

// growBlockFile makes the volume's file at least size bytes long. It never
// shrinks it: after an expansion whose record was not written the file
// is longer than the record, and its device already that size.
func (d *Driver) growBlockFile(id string, size int64) error {
	fd, st, err := d.openBlockFile(id, unix.O_WRONLY)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if st.Size >= size {
		return nil
	}
	if err := unix.Ftruncate(fd, size); err != nil {
		return status.Errorf(codes.Internal, "grow %s to %d bytes: %v", d.volumeDir(id), size, err)
	}
	return nil
}

// fileLoops is volumeLoops of the volume's file as it is now; the file
// must exist.
func (d *Driver) fileLoops(id string) (mine, stale []loopDev, err error) {
	fd, st, err := d.openBlockFile(id, unix.O_RDONLY)
	if err != nil {
		return nil, nil, err
	}
	unix.Close(fd)
	return d.volumeLoops(id, st)
}

// volumeLoops returns the loop devices of the volume's file st (nil: the
// file is gone), and stale ones: attached to a file that was at the
// volume's path but was replaced or removed since.
func (d *Driver) volumeLoops(id string, st *unix.Stat_t) (mine, stale []loopDev, err error) {
	all, err := listLoops()
	if err != nil {
		return nil, nil, status.Errorf(codes.Internal, "list loop devices: %v", err)
	}
	p := d.volumeDir(id)
	for _, l := range all {
		switch {
		case st != nil && l.dev == st.Dev && l.ino == st.Ino:
			mine = append(mine, l)
		case l.backing == p:
			stale = append(stale, l)
		}
	}
	return mine, stale, nil
}

func loopPaths(ls []loopDev) string {
	var ps []string
	for _, l := range ls {
		ps = append(ps, l.path)
	}
	return strings.Join(ps, ", ")
}

// loopsMounts lists the mounts of the devices.
func loopsMounts(ls []loopDev) ([]string, error) {
	var out []string
	for _, l := range ls {
		mps, err := loopMounts(l)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "list the mounts of %s: %v", l.path, err)
		}
		out = append(out, mps...)
	}
	return out, nil
}

// publishBlock attaches the volume's file to a loop device (or reuses the
// one attached for the same read-only setting) and bind-mounts the device
// on the target file, which it creates; the kubelet made its parent.
func (d *Driver) publishBlock(req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	id, target, vc := req.GetVolumeId(), req.GetTargetPath(), req.GetVolumeCapability()
	if err := driver.CheckHostFile("target path", target, d.own); err != nil {
		return nil, err
	}
	if d.noLoop != "" {
		return nil, status.Errorf(codes.FailedPrecondition, "block volumes need loop devices, which do not work on node %s: %s", d.nodeID, d.noLoop)
	}
	readOnly := driver.ReadOnly(vc, req.GetReadonly())

	rec, unlock, err := d.lockedRecord(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if !rec.Block {
		return nil, status.Errorf(codes.InvalidArgument, "volume %s is a filesystem volume: it cannot be published as a block device", id)
	}
	fd, st, err := d.openBlockFile(id, unix.O_RDONLY)
	if err != nil {
		return nil, err
	}
	unix.Close(fd)
	loops, stale, err := d.volumeLoops(id, st)
	if err != nil {
		return nil, err
	}
	if len(stale) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition,
			"block volume %s: its file %s was replaced while attached to %s; refusing to publish another copy of it", id, d.volumeDir(id), loopPaths(stale))
	}
	refs, err := loopsMounts(loops)
	if err != nil {
		return nil, err
	}
	mounted, err := d.isMountPoint(target)
	if err != nil {
		return nil, err
	}
	if mounted {
		var tst unix.Stat_t
		if err := unix.Lstat(target, &tst); err != nil {
			return nil, status.Errorf(codes.Internal, "stat target %s: %v", target, err)
		}
		for _, l := range loops {
			if rdev, err := rdevOf(l.path); err == nil && tst.Mode&unix.S_IFMT == unix.S_IFBLK && rdev == tst.Rdev {
				if l.readOnly != readOnly {
					return nil, status.Errorf(codes.AlreadyExists, "volume %s is already published at %s with readonly=%v", id, target, l.readOnly)
				}
				return &csi.NodePublishVolumeResponse{}, nil
			}
		}
		return nil, status.Errorf(codes.AlreadyExists, "target %s already has another volume mounted", target)
	}
	if vc.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER && len(refs) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition,
			"volume %s is single-writer and already published at %s", id, strings.Join(refs, ", "))
	}

	dev, attached := "", false
	for _, l := range loops {
		// A device marked to detach on its last close (LOOP_CLR_FD while
		// something still had it open) must not be reused: it would go
		// from under this publication, and its number to another volume.
		if l.readOnly == readOnly && !l.autoclear {
			dev = l.path
			break
		}
	}
	if dev == "" {
		flags := unix.O_RDWR
		if readOnly {
			flags = unix.O_RDONLY
		}
		fd, now, err := d.openBlockFile(id, flags)
		if err != nil {
			return nil, err
		}
		if now.Dev != st.Dev || now.Ino != st.Ino {
			unix.Close(fd)
			return nil, status.Errorf(codes.Aborted, "block volume %s: its file was replaced during the call", id)
		}
		dev, err = attachLoop(d.loopControl, fd, d.volumeDir(id), readOnly)
		unix.Close(fd)
		if errors.Is(err, errNoFreeLoop) {
			return nil, status.Errorf(codes.ResourceExhausted, "block volume %s: %v", id, err)
		}
		if err != nil {
			return nil, status.Errorf(codes.Internal, "block volume %s: %v", id, err)
		}
		attached = true
	}
	undo := func() {
		if attached {
			if err := detachLoop(loopDev{path: dev, dev: st.Dev, ino: st.Ino}); err != nil {
				klog.ErrorS(err, "Cannot detach a loop device after a failed publish", "volumeID", id, "device", dev)
			}
		}
	}
	created, err := driver.CreateHostFile("target path", target, 0o640, d.own)
	if err != nil {
		undo()
		return nil, err
	}
	opts := []string{"bind"}
	if readOnly {
		opts = append(opts, "ro")
	}
	if err := d.mounter.Mount(dev, target, "", opts); err != nil {
		if created {
			_ = driver.RemoveHostFile("target path", target)
		}
		undo()
		return nil, status.Errorf(codes.Internal, "bind-mount %s at %s: %v", dev, target, err)
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

// detachUnused detaches the volume's loop devices (stale ones too) that no
// mount uses any more.
func (d *Driver) detachUnused(id string) error {
	var st *unix.Stat_t
	if fd, s, err := d.openBlockFile(id, unix.O_RDONLY); err == nil {
		unix.Close(fd)
		st = s
	}
	loops, stale, err := d.volumeLoops(id, st)
	if err != nil {
		return err
	}
	for _, l := range append(loops, stale...) {
		mps, err := loopMounts(l)
		if err != nil {
			return status.Errorf(codes.Internal, "list the mounts of %s: %v", l.path, err)
		}
		if len(mps) > 0 {
			continue
		}
		if err := detachLoop(l); err != nil {
			return status.Errorf(codes.Internal, "detach %s from volume %s: %v", l.path, id, err)
		}
	}
	return nil
}

// checkBlockUnused fails when the volume's file is attached to a loop
// device that is published somewhere; unpublished ones (left by a crash)
// are detached.
func (d *Driver) checkBlockUnused(id string) error {
	var st unix.Stat_t
	if err := unix.Lstat(d.volumeDir(id), &st); err != nil {
		return status.Errorf(codes.Internal, "stat %s: %v", d.volumeDir(id), err)
	}
	loops, stale, err := d.volumeLoops(id, &st)
	if err != nil {
		return err
	}
	all := append(loops, stale...)
	refs, err := loopsMounts(all)
	if err != nil {
		return err
	}
	if len(refs) > 0 {
		return status.Errorf(codes.FailedPrecondition, "block volume %s is attached to %s and published at %s", id, loopPaths(all), strings.Join(refs, ", "))
	}
	for _, l := range all {
		if err := detachLoop(l); err != nil {
			return status.Errorf(codes.FailedPrecondition, "block volume %s is attached to %s, which cannot be detached: %v", id, l.path, err)
		}
	}
	return nil
}

// reconcileLoops runs at start: the loop devices of this root's block
// volumes that no publication uses (a crash or restart between attach and
// mount, or between unmount and detach) are detached; published ones are
// kept (pods use them across a restart) and get their file's size again
// (an expansion may have been cut short).
func (d *Driver) reconcileLoops() {
	if d.noLoop != "" {
		return
	}
	ids, err := listIDs(d.recordDir())
	if err != nil {
		klog.ErrorS(err, "Cannot list volumes to reconcile loop devices", "root", d.root)
		return
	}
	type fileID struct{ dev, ino uint64 }
	files := map[fileID]string{}
	for _, id := range ids {
		var st unix.Stat_t
		if rec, err := d.readRecord(id); err != nil || rec == nil || !rec.Block {
			continue
		}
		if unix.Lstat(d.volumeDir(id), &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG {
			files[fileID{st.Dev, st.Ino}] = id
		}
	}
	loops, err := listLoops()
	if err != nil {
		klog.ErrorS(err, "Cannot list loop devices to reconcile them", "root", d.root)
		return
	}
	kept, detached := 0, 0
	for _, l := range loops {
		id, ok := files[fileID{l.dev, l.ino}]
		if !ok && l.deleted && filepath.Dir(l.backing) == d.root {
			id, ok = filepath.Base(l.backing), true
		}
		if !ok {
			continue
		}
		mps, err := loopMounts(l)
		if err != nil {
			klog.ErrorS(err, "Cannot list a loop device's mounts", "device", l.path, "volumeID", id)
			continue
		}
		if len(mps) > 0 {
			kept++
			if err := refreshLoop(l.path); err != nil {
				klog.ErrorS(err, "Cannot refresh a loop device's size", "device", l.path, "volumeID", id)
			}
			continue
		}
		if err := detachLoop(l); err != nil {
			klog.ErrorS(err, "Cannot detach an unused loop device", "device", l.path, "volumeID", id)
			continue
		}
		detached++
	}
	klog.InfoS("Loop devices of block volumes reconciled", "root", d.root, "published", kept, "detached", detached)
}

// NodeExpandVolume gives a block volume's loop devices the size of its
// grown file (LOOP_SET_CAPACITY), online; a filesystem volume needs
// nothing on the node.
func (d *Driver) NodeExpandVolume(_ context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	id := req.GetVolumeId()
	if err := driver.ValidID("volume ID", id); err != nil {
		return nil, err
	}
	if req.GetVolumePath() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume path is required")
	}
	if vc := req.GetVolumeCapability(); vc != nil {
		if err := driver.CheckCapability(vc); err != nil {
			return nil, err
		}
	}
	rec, unlock, err := d.lockedRecord(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if need := req.GetCapacityRange().GetRequiredBytes(); need > rec.CapacityBytes {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s has %d bytes, less than the %d asked: expand it with ControllerExpandVolume first", id, rec.CapacityBytes, need)
	}
	if !rec.Block {
		return &csi.NodeExpandVolumeResponse{CapacityBytes: rec.CapacityBytes}, nil
	}
	loops, _, err := d.fileLoops(id)
	if err != nil {
		return nil, err
	}
	for _, l := range loops {
		if err := refreshLoop(l.path); err != nil {
			return nil, status.Errorf(codes.Internal, "refresh the size of %s: %v", l.path, err)
		}
	}
	return &csi.NodeExpandVolumeResponse{CapacityBytes: rec.CapacityBytes}, nil
}

// blockStats reports a block volume's size for the target p it is
// published at: the kubelet knows no usage of a raw device.
func (d *Driver) blockStats(id, p string, rec *record) (*csi.NodeGetVolumeStatsResponse, error) {
	if !filepath.IsAbs(p) {
		return nil, status.Errorf(codes.NotFound, "volume path %q is not an absolute path", p)
	}
	if err := driver.CheckHostFile("volume path", filepath.Clean(p)); err != nil {
		return nil, err
	}
	loops, _, err := d.fileLoops(id)
	if err != nil {
		return nil, err
	}
	var pst unix.Stat_t
	if err := unix.Lstat(p, &pst); err == nil && pst.Mode&unix.S_IFMT == unix.S_IFBLK {
		for _, l := range loops {
			if rdev, err := rdevOf(l.path); err == nil && rdev == pst.Rdev {
				return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: rec.CapacityBytes}}}, nil
			}
		}
	}
	return nil, status.Errorf(codes.NotFound, "block volume %s is not published at %s", id, p)
}

// populateBlock makes a new block volume's file of size bytes from its
// content source: a sparse copy made under the scratch directory and
// renamed into place, so an interrupted call never leaves a half-filled
// volume.
func (d *Driver) populateBlock(id string, src *csi.VolumeContentSource, size int64) error {
	open := func() (int, error) {
		if s := src.GetSnapshot(); s != nil {
			fd, err := unix.Open(d.imagePath(s.GetSnapshotId()), unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				if errors.Is(err, unix.ENOENT) {
					return -1, status.Errorf(codes.NotFound, "snapshot %s has no image on node %s", s.GetSnapshotId(), d.nodeID)
				}
				return -1, status.Errorf(codes.Internal, "open snapshot %s: %v", s.GetSnapshotId(), err)
			}
			return fd, nil
		}
		fd, _, err := d.openBlockFile(src.GetVolume().GetVolumeId(), unix.O_RDONLY)
		return fd, err
	}
	tmp := filepath.Join(d.newDir(), id)
	if err := d.copyBlock(tmp, open, size); err != nil {
		return err
	}
	// A file left by an interrupted plain create may be in the way; rename
	// replaces it (a directory there is refused).
	if err := os.Rename(tmp, d.volumeDir(id)); err != nil {
		os.Remove(tmp)
		return status.Errorf(codes.Internal, "fill volume %s from its source: %v", id, err)
	}
	return nil
}

// copyBlock writes the file dst (atomically: a scratch name renamed at
// the end) as a copy of what open opens, keeping its holes, sized size.
func (d *Driver) copyBlock(dst string, open func() (int, error), size int64) error {
	in, err := open()
	if err != nil {
		return err
	}
	defer unix.Close(in)
	scratch := dst + "~" // never a volume or snapshot ID, whose scratch names share the directory
	if err := os.RemoveAll(scratch); err != nil {
		return status.Errorf(codes.Internal, "clear %s: %v", scratch, err)
	}
	out, err := unix.Open(scratch, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return status.Errorf(codes.Internal, "create %s: %v", scratch, err)
	}
	err = sparseCopy(out, in)
	if err == nil {
		err = unix.Ftruncate(out, size)
	}
	if err == nil {
		err = unix.Fsync(out)
	}
	unix.Close(out)
	if err == nil {
		err = os.Rename(scratch, dst)
	}
	if err != nil {
		os.Remove(scratch)
		return status.Errorf(codes.Internal, "copy into %s: %v", dst, err)
	}
	return nil
}

// sparseCopy copies the data of in to the empty file out at the same
// offsets, skipping in's holes (SEEK_DATA/SEEK_HOLE), so the copy stays
// sparse. A filesystem without them has one extent of data: all of it.
func sparseCopy(out, in int) error {
	var st unix.Stat_t
	if err := unix.Fstat(in, &st); err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for off := int64(0); off < st.Size; {
		data, err := unix.Seek(in, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole is left
		}
		if err != nil {
			data = off
		}
		end, err := unix.Seek(in, data, unix.SEEK_HOLE)
		if err != nil {
			end = st.Size
		}
		for data < end {
			n, err := unix.Pread(in, buf[:min(int64(len(buf)), end-data)], data)
			if err != nil {
				return err
			}
			if n == 0 {
				return nil // truncated meanwhile
			}
			if w, err := unix.Pwrite(out, buf[:n], data); err != nil || w != n {
				return cmp.Or(err, io.ErrShortWrite)
			}
			data += int64(n)
		}
		off = end
	}
	return nil
}
