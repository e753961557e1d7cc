package flex

import (
	"context"
	"errors"
	"os"
	"slices"

	"github.com/container-storage-interface/spec/lib/go/csi"
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
	if err := checkMountRequest(id, "staging target path", staging, vc); err != nil {
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
	if err := os.MkdirAll(staging, 0o750); err != nil {
		return nil, status.Errorf(codes.Internal, "create staging path %s: %v", staging, err)
	}
	_, err = d.call(ctx, d.timeout, "mountdevice", staging, device, opts)
	if err == errNotSupported {
		fsType := vc.GetMount().GetFsType()
		if fsType == "" {
			fsType = "ext4"
		}
		mopts := slices.Clone(vc.GetMount().GetMountFlags())
		if readOnly {
			mopts = append(mopts, "ro")
		}
		if err := d.mounter.FormatAndMount(device, staging, fsType, mopts); err != nil {
			return nil, status.Errorf(codes.Internal, "flex driver %s: format and mount %s at %s: %v", d.name, device, staging, err)
		}
		return &csi.NodeStageVolumeResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	return &csi.NodeStageVolumeResponse{}, d.mustBeMounted("mountdevice", staging)
}

// checkMountRequest validates what staging and publishing share.
func checkMountRequest(id, what, p string, vc *csi.VolumeCapability) error {
	if err := checkVolumeID(id); err != nil {
		return err
	}
	if err := driver.CheckHostPath(what, p); err != nil {
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
	if err := driver.CheckHostPath("staging target path", staging); err != nil {
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
	return &csi.NodeUnstageVolumeResponse{}, d.cleanup(staging, false)
}

// NodePublishVolume: drivers that attach get a bind mount of the staged
// device; the others run mount, which must leave a mount at the target.
func (d *Driver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	id, target, vc := req.GetVolumeId(), req.GetTargetPath(), req.GetVolumeCapability()
	if err := checkMountRequest(id, "target path", target, vc); err != nil {
		return nil, err
	}
	staging := req.GetStagingTargetPath()
	if d.attach {
		if err := driver.CheckHostPath("staging target path", staging); err != nil {
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
	created := false
	if err := os.Mkdir(target, 0o750); err == nil {
		created = true
	} else if !errors.Is(err, os.ErrExist) {
		return nil, status.Errorf(codes.Internal, "create target %s: %v", target, err)
	}
	undo := func(err error) (*csi.NodePublishVolumeResponse, error) {
		if created {
			os.Remove(target)
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
	if err := driver.CheckHostPath("target path", target); err != nil {
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
	return &csi.NodeUnpublishVolumeResponse{}, d.cleanup(target, true)
}

// cleanup unmounts what the executable left mounted (or the bind mount) and,
// when remove is set, removes the directory.
func (d *Driver) cleanup(p string, remove bool) error {
	if remove {
		if err := mount.CleanupMountPoint(p, d.mounter, true); err != nil {
			return status.Errorf(codes.Internal, "unmount %s: %v", p, err)
		}
		return nil
	}
	for {
		m, err := d.unmountState(p)
		if err != nil || !m {
			return err
		}
		if err := d.mounter.Unmount(p); err != nil {
			return status.Errorf(codes.Internal, "unmount %s: %v", p, err)
		}
	}
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
