package flex

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	mount "k8s.io/mount-utils"

	"github.com/monocsi/monocsi/driver"
)

// NodeStageVolume (drivers that attach): waitforattach for the device, then
// mountdevice at the staging path; "Not supported" for mountdevice means the
// default, formatting the device when blank and mounting it, as the kubelet did.
func (d *Driver) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	if !d.attach {
		return nil, status.Errorf(codes.Unimplemented, "flex driver %s does not attach: nothing to stage", d.name)
	}
	id, staging, vc := req.GetVolumeId(), req.GetStagingTargetPath(), req.GetVolumeCapability()
	if err := d.checkMountRequest(id, "staging target path", staging, vc); err != nil {
		return nil, err
	}
	device := req.GetPublishContext()["device"]
	if err := checkDevice(d.name, "attach", device); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "publish context: %s", status.Convert(err).Message())
	}
	readOnly := driver.ReadOnly(vc, false)
	opts, err := options(id, req.GetVolumeContext(), vc, readOnly, req.GetSecrets())
	if err != nil {
		return nil, err
	}
	unlock, err := d.locks.TryLock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if m, err := d.isMountPoint(staging); err != nil {
		return nil, err
	} else if m {
		return &csi.NodeStageVolumeResponse{}, nil
	}
	r, err := d.call(ctx, waitForAttachTimeout, "waitforattach", device, opts)
	switch {
	case err == nil:
		if err := checkDevice(d.name, "waitforattach", r.Device); err != nil {
			return nil, err
		}
		device = r.Device
	case err != errNotSupported:
		return nil, err
	}
	// Created relative to verified parents: a symlink put in the way is
	// not followed.
	created, err := driver.MkdirHostPath("staging target path", staging, 0o750, true, d.own...)
	if err != nil {
		return nil, err
	}
	undo := func(err error) (*csi.NodeStageVolumeResponse, error) {
		if created {
			_ = driver.RemoveHostDir("staging target path", staging)
		}
		return nil, err
	}
	_, err = d.call(ctx, d.timeout, "mountdevice", staging, device, opts)
	if err == errNotSupported {
		if err := d.formatAndMount(device, staging, vc, readOnly); err != nil {
			return undo(err)
		}
		return &csi.NodeStageVolumeResponse{}, nil
	}
	if err != nil {
		return undo(err)
	}
	return &csi.NodeStageVolumeResponse{}, d.mustBeMounted("mountdevice", staging)
}

// formatAndMount is the kubelet's default mountdevice: format the device
// when it is blank, then mount it. The device must resolve to a block device
// under /dev, and the resolved path is what is formatted and mounted: a
// /dev path that is a symlink to a file (or to anything else) elsewhere is
// refused before anything is written.
func (d *Driver) formatAndMount(device, staging string, vc *csi.VolumeCapability, readOnly bool) error {
	fsType := vc.GetMount().GetFsType()
	if fsType == "" {
		fsType = "ext4"
	}
	if !validFSType.MatchString(fsType) {
		return status.Errorf(codes.InvalidArgument, "fsType %q is not a filesystem type", driver.Printable(fsType))
	}
	mopts := slices.Clone(vc.GetMount().GetMountFlags())
	for _, f := range mopts {
		if f == "" || strings.ContainsAny(f, ",\n\x00") {
			return status.Errorf(codes.InvalidArgument, "mount flag %q is not a single mount option", driver.Printable(f))
		}
	}
	if readOnly {
		mopts = append(mopts, "ro")
	}
	dev, err := blockDevice(device)
	if err != nil {
		return status.Errorf(codes.FailedPrecondition, "flex driver %s: %v: refusing to format or mount it", d.name, err)
	}
	err = d.mounter.FormatAndMount(dev, staging, fsType, mopts)
	if err == nil {
		return nil
	}
	code := codes.Internal
	var me mount.MountError
	if errors.As(err, &me) {
		switch me.Type {
		case mount.FilesystemMismatch, mount.UnformattedReadOnly:
			code = codes.FailedPrecondition
		case mount.FormatFailed:
			if _, lerr := exec.LookPath("mkfs." + fsType); lerr != nil {
				code = codes.FailedPrecondition
				err = fmt.Errorf("no mkfs.%s on this node to format the blank device: %w", fsType, err)
			}
		}
	}
	return status.Errorf(code, "flex driver %s: format and mount %s at %s: %v", d.name, dev, staging, err)
}

// validFSType is what a filesystem type looks like ("ext4", "fuse.sshfs"):
// it becomes part of a command name (mkfs.<type>).
var validFSType = regexp.MustCompile(`^[a-z0-9][a-z0-9_+-]*(\.[a-z0-9][a-z0-9_+-]*)?$`)

// blockDevice resolves the symlinks of dev and returns the path it names,
// which must be a block device under /dev.
func blockDevice(dev string) (string, error) {
	real, err := filepath.EvalSymlinks(dev)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("device %s does not exist", dev)
		}
		return "", fmt.Errorf("device %s: %v", dev, err)
	}
	if !strings.HasPrefix(real, "/dev/") {
		return "", fmt.Errorf("device %s resolves to %s, which is not under /dev", dev, real)
	}
	var st unix.Stat_t
	if err := unix.Stat(real, &st); err != nil {
		return "", fmt.Errorf("device %s: %v", real, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return "", fmt.Errorf("device %s resolves to %s, which is not a block device", dev, real)
	}
	return real, nil
}

// checkMountRequest validates what staging and publishing share.
func (d *Driver) checkMountRequest(id, what, p string, vc *csi.VolumeCapability) error {
	if err := checkVolumeID(id); err != nil {
		return err
	}
	if err := driver.CheckHostPath(what, p, d.own...); err != nil {
		return err
	}
	return driver.CheckMountCapability(vc, "FlexVolume drivers mount filesystems")
}

// NodeUnstageVolume runs unmountdevice ("Not supported": a plain unmount).
func (d *Driver) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	if !d.attach {
		return nil, status.Errorf(codes.Unimplemented, "flex driver %s does not attach: nothing to unstage", d.name)
	}
	id, staging := req.GetVolumeId(), req.GetStagingTargetPath()
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	if err := driver.CheckHostPath("staging target path", staging, d.own...); err != nil {
		return nil, err
	}
	unlock, err := d.locks.TryLock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if m, err := d.unmountState(staging); err != nil || !m {
		return &csi.NodeUnstageVolumeResponse{}, err
	}
	if _, err := d.call(ctx, d.timeout, "unmountdevice", staging); err != nil && err != errNotSupported {
		return nil, err
	}
	return &csi.NodeUnstageVolumeResponse{}, d.cleanup("staging target path", staging, false)
}

// NodePublishVolume: drivers that attach get a bind mount of the staged
// device; the others run mount, which must leave a mount at the target.
func (d *Driver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	id, target, vc := req.GetVolumeId(), req.GetTargetPath(), req.GetVolumeCapability()
	if err := d.checkMountRequest(id, "target path", target, vc); err != nil {
		return nil, err
	}
	staging := req.GetStagingTargetPath()
	if d.attach {
		if err := driver.CheckHostPath("staging target path", staging, d.own...); err != nil {
			return nil, err
		}
	}
	readOnly := driver.ReadOnly(vc, req.GetReadonly())
	opts, err := options(id, req.GetVolumeContext(), vc, readOnly, req.GetSecrets())
	if err != nil {
		return nil, err
	}
	unlock, err := d.locks.TryLock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if m, err := d.isMountPoint(target); err != nil {
		return nil, err
	} else if m {
		return &csi.NodePublishVolumeResponse{}, nil
	}
	created, err := driver.MkdirHostPath("target path", target, 0o750, false, d.own...)
	if err != nil {
		return nil, err
	}
	undo := func(err error) (*csi.NodePublishVolumeResponse, error) {
		if created {
			_ = driver.RemoveHostDir("target path", target)
		}
		return nil, err
	}
	if d.attach {
		if m, err := d.isMountPoint(staging); err != nil {
			return undo(err)
		} else if !m {
			return undo(status.Errorf(codes.FailedPrecondition, "volume %s is not staged at %s", id, staging))
		}
		mopts := []string{"bind"}
		if readOnly {
			mopts = append(mopts, "ro")
		}
		if err := d.mounter.Mount(staging, target, "", mopts); err != nil {
			return undo(status.Errorf(codes.Internal, "bind-mount %s at %s: %v", staging, target, err))
		}
		return &csi.NodePublishVolumeResponse{}, nil
	}
	if _, err := d.call(ctx, d.timeout, "mount", target, opts); err != nil {
		if err == errNotSupported {
			err = status.Errorf(codes.FailedPrecondition, "flex driver %s: mount: not supported, and a driver without attach has no default mount", d.name)
		}
		return undo(err)
	}
	if err := d.mustBeMounted("mount", target); err != nil {
		return undo(err)
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

// NodeUnpublishVolume runs unmount (drivers without attach) or unbinds, and
// removes the target.
func (d *Driver) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	if err := driver.CheckHostPath("target path", target, d.own...); err != nil {
		return nil, err
	}
	unlock, err := d.locks.TryLock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	m, err := d.unmountState(target)
	if err != nil {
		return nil, err
	}
	if m && !d.attach {
		if _, err := d.call(ctx, d.timeout, "unmount", target); err != nil && err != errNotSupported {
			return nil, err
		}
	}
	return &csi.NodeUnpublishVolumeResponse{}, d.cleanup("target path", target, true)
}

// maxStacked bounds the unmounts of one path: mounts stacked on it, not a
// loop without end.
const maxStacked = 16

// cleanup unmounts what the executable left mounted (or the bind mount) and,
// when remove is set, removes the directory: only when empty, relative to
// its verified parent (a non-empty directory that is not a mount point is
// FAILED_PRECONDITION, its contents are not ours).
func (d *Driver) cleanup(what, p string, remove bool) error {
	for i := 0; ; i++ {
		m, err := d.unmountState(p)
		if err != nil {
			return err
		}
		if !m {
			break
		}
		if i == maxStacked {
			return status.Errorf(codes.FailedPrecondition, "%s %s is still a mount point after %d unmounts", what, p, maxStacked)
		}
		if err := d.mounter.Unmount(p); err != nil {
			return status.Errorf(codes.Internal, "unmount %s: %v", p, err)
		}
	}
	if remove {
		return driver.RemoveHostDir(what, p)
	}
	return nil
}

// isMountPoint reports whether p is a mount point. A broken one (its FUSE
// daemon or server gone) counts as mounted: it is still to be unmounted, and
// it is not a healthy mount to publish again (errBroken).
func (d *Driver) isMountPoint(p string) (bool, error) {
	m, err := d.mounter.IsMountPoint(p)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return false, nil
	case mount.IsCorruptedMnt(err):
		return true, errBroken
	case err != nil:
		return false, status.Errorf(codes.Internal, "check mount point %s: %v", p, err)
	}
	return m, nil
}

var errBroken = status.Error(codes.FailedPrecondition, "the mount is broken (its daemon or server is gone): unpublish it first")

// unmountState is isMountPoint for the unmount paths, where a broken mount
// is simply one to unmount.
func (d *Driver) unmountState(p string) (bool, error) {
	m, err := d.isMountPoint(p)
	if err == errBroken {
		return true, nil
	}
	return m, err
}

// mustBeMounted checks an executable's Success: it must have mounted there.
func (d *Driver) mustBeMounted(op, p string) error {
	m, err := d.isMountPoint(p)
	if err != nil {
		return err
	}
	if !m {
		return status.Errorf(codes.Internal, "flex driver %s: %s said Success but nothing is mounted at %s", d.name, op, p)
	}
	return nil
}

// NodeGetInfo returns the node ID.
func (d *Driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: d.nodeID}, nil
}

// NodeGetCapabilities: staging for drivers that attach.
func (d *Driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	if d.attach {
		return driver.NodeCapabilities(csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME), nil
	}
	return driver.NodeCapabilities(), nil
}
