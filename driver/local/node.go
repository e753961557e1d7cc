package local

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"

	"github.com/monocsi/monocsi/driver"
)

// NodePublishVolume bind-mounts the volume's directory at the target path
// (a block volume's device on the target file: see publishBlock).
func (d *Driver) NodePublishVolume(_ context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	id, target, vc := req.GetVolumeId(), req.GetTargetPath(), req.GetVolumeCapability()
	if err := driver.ValidID("volume ID", id); err != nil {
		return nil, err
	}
	if vc.GetBlock() != nil {
		if err := driver.CheckCapability(vc); err != nil {
			return nil, err
		}
		if ok, msg := driver.SingleNodeModes([]*csi.VolumeCapability{vc}); !ok {
			return nil, status.Error(codes.InvalidArgument, msg)
		}
		return d.publishBlock(req)
	}
	if err := driver.CheckHostPath("target path", target, d.own); err != nil {
		return nil, err
	}
	if err := driver.CheckCapability(vc); err != nil {
		return nil, err
	}
	if ok, msg := d.supported([]*csi.VolumeCapability{vc}); !ok {
		return nil, status.Error(codes.InvalidArgument, msg)
	}
	flags := vc.GetMount().GetMountFlags()
	if err := checkBindFlags(flags); err != nil {
		return nil, err
	}
	readOnly := driver.ReadOnly(vc, req.GetReadonly())

	unlock, err := d.locks.TryLock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()

	src, _, err := d.existingVolumeDir(id)
	if err != nil {
		return nil, err
	}
	refs, err := d.mounter.GetMountRefs(src)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "check mounts of %s: %v", src, err)
	}
	mounted, err := d.isMountPoint(target)
	if err != nil {
		return nil, err
	}
	if mounted {
		if !slices.Contains(refs, target) {
			return nil, status.Errorf(codes.AlreadyExists, "target %s already has another volume mounted", target)
		}
		ro, err := d.mountedReadOnly(target)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "read mount options of %s: %v", target, err)
		}
		if ro != readOnly {
			return nil, status.Errorf(codes.AlreadyExists, "volume %s is already published at %s with readonly=%v", id, target, ro)
		}
		return &csi.NodePublishVolumeResponse{}, nil
	}
	if vc.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER && len(refs) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition,
			"volume %s is single-writer and already published at %s", id, strings.Join(refs, ", "))
	}

	// Created relative to its verified parent: no symlink put in the way
	// since the check is followed.
	created, err := driver.MkdirHostPath("target path", target, 0o750, false, d.own)
	if err != nil {
		return nil, err
	}
	opts := append([]string{"bind"}, flags...)
	if readOnly {
		opts = append(opts, "ro")
	}
	if err := d.mounter.Mount(src, target, "", opts); err != nil {
		if created {
			_ = driver.RemoveHostDir("target path", target)
		}
		return nil, status.Errorf(codes.Internal, "bind-mount %s at %s: %v", src, target, err)
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

// bindFlags are the mount options a bind mount can apply: the per-mount
// flags. Anything else is refused by name rather than passed to mount(8),
// where "remount" or "move" would change what the call does, and
// filesystem options would be ignored or fail as an internal error.
var bindFlags = []string{
	"defaults", "ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec",
	"noatime", "atime", "nodiratime", "diratime", "relatime", "norelatime",
	"strictatime", "nostrictatime", "nosymfollow", "symfollow",
}

func checkBindFlags(flags []string) error {
	for _, f := range flags {
		if f == "" || strings.ContainsAny(f, ",\n\x00") {
			return status.Errorf(codes.InvalidArgument, "mount flag %q is not a single mount option", driver.Printable(f))
		}
		if !slices.Contains(bindFlags, f) {
			return status.Errorf(codes.InvalidArgument,
				"mount flag %q does not apply to a bind mount of a local volume (allowed: %s)", driver.Printable(f), strings.Join(bindFlags, ", "))
		}
	}
	return nil
}

// existingVolumeDir returns the volume's directory and record, or NOT_FOUND.
func (d *Driver) existingVolumeDir(id string) (string, *record, error) {
	rec, err := d.existingRecord(id)
	if err != nil {
		return "", nil, err
	}
	if rec.Block {
		return "", nil, status.Errorf(codes.InvalidArgument, "volume %s is a block volume: it has no filesystem to mount (use a block capability)", id)
	}
	dir := d.volumeDir(id)
	fi, err := os.Lstat(dir)
	if err != nil {
		return "", nil, status.Errorf(codes.NotFound, "volume %s has lost its directory %s", id, dir)
	}
	if !fi.IsDir() {
		// Replaced behind the driver's back: never followed or used.
		return "", nil, status.Errorf(codes.FailedPrecondition, "volume %s: %s is no longer a directory (a symlink or file was put there); refusing to use it", id, dir)
	}
	return dir, rec, nil
}

func (d *Driver) mountedReadOnly(target string) (bool, error) {
	mps, err := d.mounter.List()
	if err != nil {
		return false, err
	}
	ro := false
	for _, mp := range mps { // the last entry for a path is the visible one
		if mp.Path == target {
			ro = slices.Contains(mp.Opts, "ro")
		}
	}
	return ro, nil
}

// NodeUnpublishVolume unmounts the target and removes it; a block
// volume's loop devices that no other publication uses are detached.
func (d *Driver) NodeUnpublishVolume(_ context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	if err := driver.ValidID("volume ID", id); err != nil {
		return nil, err
	}
	unlock, err := d.locks.TryLock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	// The target's kind follows the volume's; a deleted volume's may be either.
	rec, _ := d.readRecord(id)
	check := driver.CheckHostTarget
	switch {
	case rec != nil && rec.Block:
		check = driver.CheckHostFile
	case rec != nil:
		check = driver.CheckHostPath
	}
	if err := check("target path", target, d.own); err != nil {
		return nil, err
	}
	if err := d.unmount(target); err != nil {
		return nil, err
	}
	// Unmounted, the device may be unused: it is detached even when the
	// target cannot be removed, so no failure below leaks it.
	if rec != nil && rec.Block && d.noLoop == "" {
		if err := d.detachUnused(id); err != nil {
			return nil, err
		}
	}
	// Only an empty directory or file is removed: a non-empty one that is
	// not a mount point is not ours (FAILED_PRECONDITION).
	if err := driver.RemoveHostFile("target path", target); err != nil {
		return nil, err
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// isMountPoint reports whether target is a mount point; a missing target
// is not one.
func (d *Driver) isMountPoint(target string) (bool, error) {
	m, err := d.mounter.IsMountPoint(target)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return false, nil
	case err != nil:
		return false, status.Errorf(codes.Internal, "check target %s: %v", target, err)
	}
	return m, nil
}

// maxStacked bounds the unmounts of one target: mounts stacked on it by
// repeated publishes of a buggy CO, not a loop without end.
const maxStacked = 16

// unmount unmounts target until it is no longer a mount point.
func (d *Driver) unmount(target string) error {
	for i := 0; ; i++ {
		m, err := d.mounter.IsMountPoint(target)
		switch {
		case errors.Is(err, os.ErrNotExist):
			return nil
		case err != nil && !mount.IsCorruptedMnt(err):
			return status.Errorf(codes.Internal, "check target %s: %v", target, err)
		case err == nil && !m:
			return nil
		case i == maxStacked:
			return status.Errorf(codes.FailedPrecondition, "%s is still a mount point after %d unmounts", target, maxStacked)
		}
		if err := d.mounter.Unmount(target); err != nil {
			return status.Errorf(codes.Internal, "unmount %s: %v", target, err)
		}
	}
}

// NodeGetVolumeStats reports the volume's own bytes and inodes: from its
// project quota when its size is enforced (total: the limit; available:
// what is left of it, at most the filesystem's free space), else from a
// walk of its directory (see walker; total: its recorded size). When
// neither has a figure (the walk found no free slot, or ran out of time
// before any walk of the volume completed), the filesystem's figures.
func (d *Driver) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	id, p := req.GetVolumeId(), req.GetVolumePath()
	if err := driver.ValidID("volume ID", id); err != nil {
		return nil, err
	}
	if p == "" {
		return nil, status.Error(codes.InvalidArgument, "volume path is required")
	}
	if rec, err := d.existingRecord(id); err != nil {
		return nil, err
	} else if rec.Block {
		return d.blockStats(id, p, rec)
	}
	src, rec, err := d.existingVolumeDir(id)
	if err != nil {
		return nil, err
	}
	if !filepath.IsAbs(p) {
		return nil, status.Errorf(codes.NotFound, "volume path %q is not an absolute path", p)
	}
	p = filepath.Clean(p)
	if err := driver.CheckHostPath("volume path", p); err != nil {
		return nil, err
	}
	if p != src {
		refs, err := d.mounter.GetMountRefs(src)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "check mounts of %s: %v", src, err)
		}
		if !slices.Contains(refs, p) {
			return nil, status.Errorf(codes.NotFound, "volume %s is not mounted at %s", id, p)
		}
	}
	st, err := driver.StatfsHostPath("volume path", p)
	if err != nil {
		return nil, err
	}
	return &csi.NodeGetVolumeStatsResponse{Usage: d.volumeUsage(ctx, id, src, rec, &st)}, nil
}

// volumeUsage is the volume's usage (see NodeGetVolumeStats); st is the
// filesystem's.
func (d *Driver) volumeUsage(ctx context.Context, id, dir string, rec *record, st *unix.Statfs_t) []*csi.VolumeUsage {
	bs := st.Bsize
	fsTotal, fsAvail, freeInodes := int64(st.Blocks)*bs, int64(st.Bavail)*bs, int64(st.Ffree)
	own := func(used, total, inodes int64) []*csi.VolumeUsage {
		if total <= 0 {
			total = fsTotal
		}
		avail := min(max(total-used, 0), fsAvail)
		return []*csi.VolumeUsage{
			{Unit: csi.VolumeUsage_BYTES, Total: total, Available: avail, Used: used},
			{Unit: csi.VolumeUsage_INODES, Total: inodes + freeInodes, Available: freeInodes, Used: inodes},
		}
	}
	if rec.ProjectID != 0 && d.quota != nil {
		u, err := d.quota.Usage(rec.ProjectID)
		if err == nil {
			return own(u.Bytes, u.LimitBytes, u.Inodes)
		}
		klog.ErrorS(err, "Cannot read a volume's quota usage; walking its directory", "volumeID", id, "projectID", rec.ProjectID)
	}
	if u, ok := d.walks.get(ctx, id, dir); ok && u.Complete {
		return own(u.Bytes, rec.CapacityBytes, u.Inodes)
	}
	return []*csi.VolumeUsage{
		{Unit: csi.VolumeUsage_BYTES, Total: fsTotal, Available: fsAvail, Used: int64(st.Blocks-st.Bfree) * bs},
		{Unit: csi.VolumeUsage_INODES, Total: int64(st.Files), Available: freeInodes, Used: int64(st.Files - st.Ffree)},
	}
}

// NodeGetInfo returns the node ID and the topology segment that pins volumes here.
func (d *Driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: d.nodeID, AccessibleTopology: d.topology()}, nil
}

// NodeGetCapabilities lists the node RPCs the driver implements.
func (d *Driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return driver.NodeCapabilities(
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
		csi.NodeServiceCapability_RPC_GET_STORAGE_HEALTH,
		csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
		csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
	), nil
}

// NodeGetVolumeHealth reports the volume's health (see health).
func (d *Driver) NodeGetVolumeHealth(_ context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	h, err := d.health(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: h}, nil
}

// NodeGetStorageHealth reports the root directory unreachable when it is not usable.
func (d *Driver) NodeGetStorageHealth(ctx context.Context, _ *csi.NodeGetStorageHealthRequest) (*csi.NodeGetStorageHealthResponse, error) {
	resp := &csi.NodeGetStorageHealthResponse{}
	if _, err := d.Probe(ctx, nil); err != nil {
		resp.BackendHealth = []*csi.NodeGetStorageHealthResponse_StorageBackendHealth{{
			Status:  csi.StorageHealthErrorType_STORAGE_UNREACHABLE,
			Reason:  "RootUnusable",
			Message: status.Convert(err).Message(),
		}}
	}
	return resp, nil
}
