package nfs

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/monocsi/monocsi/driver"
)

// CreateVolume creates the volume's sub-directory on the share. It is
// idempotent: an existing directory is the volume.
func (d *Driver) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	name := req.GetName()
	if err := driver.ValidID("volume name", name); err != nil {
		return nil, err
	}
	if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return nil, err
	}
	p, err := parseParams(req.GetParameters(), true)
	if err != nil {
		return nil, err
	}
	v := volume{server: p.server, share: "/" + strings.Trim(p.share, "/"), subDir: name, onDelete: p.onDelete}
	if p.hasSubDir {
		if v.subDir, err = expand(p.subDir, req.GetParameters()); err != nil {
			return nil, err
		}
		v.subDir = strings.TrimSuffix(v.subDir, "/")
		if err := checkSubDir(v.subDir); err != nil {
			return nil, err
		}
		v.uuid = name // templated sub-directories may repeat; the handle must not
	}
	if err := v.checkRoundTrip(); err != nil {
		return nil, err
	}
	opts := mountFlags(req.GetVolumeCapabilities())
	if err := checkOptions(opts); err != nil {
		return nil, err
	}
	extra, _ := splitOptions(p.mountOptions) // checked by parseParams
	opts = append(opts, extra...)

	lk, err := d.locks.Acquire(v.dirKey())
	if err != nil {
		return nil, err
	}
	defer lk.Release()
	src := req.GetVolumeContentSource()
	err = d.withShare(ctx, lk, v.server, v.share, opts, func(root *os.Root) error {
		// No symlink is followed on the way: a subDir through one would
		// create the volume inside whatever it points to (a sibling volume).
		parent, base, err := splitDir(root, v.subDir, true)
		if err != nil {
			return shareError("create", v.subDir, err)
		}
		defer parent.Close()
		created := false
		_, err = parent.Lstat(base)
		switch {
		case errors.Is(err, fs.ErrNotExist) && src != nil:
			if err := d.populate(ctx, lk, parent, base, v.subDir, src); err != nil {
				return err
			}
			created = true
		case errors.Is(err, fs.ErrNotExist):
			err := parent.Mkdir(base, 0o777)
			if err != nil && !errors.Is(err, fs.ErrExist) {
				return shareError("create", v.subDir, err)
			}
			created = err == nil
		case err != nil:
			return shareError("inspect", v.subDir, err)
		}
		dir, err := openChild(parent, base, v.subDir)
		var pe *pathError
		if errors.As(err, &pe) && pe.what == notADirectory {
			return status.Errorf(codes.AlreadyExists, "%s on the share exists and is not a directory", v.subDir)
		} else if err != nil {
			return shareError("open", v.subDir, err)
		}
		defer dir.Close()
		if p.mountPermissions > 0 {
			if err := chmodExactly(dir, p.mountPermissions, v.subDir); err != nil {
				if created { // not a volume: what the server keeps is not what was asked
					if rerr := removeDir(parent, base, v.subDir); rerr != nil {
						klog.ErrorS(rerr, "Cannot remove the directory of a refused volume", "subDir", v.subDir)
					}
				}
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	vc := map[string]string{paramServer: v.server, paramShare: v.share, paramSubDir: v.subDir}
	if p.mountOptions != "" {
		vc[paramMountOptions] = p.mountOptions
	}
	if p.mountPermissions > 0 {
		vc[paramMountPermissions] = "0" + strconv.FormatUint(uint64(p.mountPermissions), 8)
	}
	// Capacity 0: a sub-directory has no size of its own; the provisioner
	// then writes the claim's request into the PV, as with csi-driver-nfs.
	return &csi.CreateVolumeResponse{Volume: &csi.Volume{VolumeId: v.id(), VolumeContext: vc, ContentSource: src}}, nil
}

// checkCapabilities accepts every access mode (a share is reachable from
// every node) but only filesystem volumes.
func checkCapabilities(caps []*csi.VolumeCapability) error {
	if len(caps) == 0 {
		return driver.CheckCapabilities(caps)
	}
	for _, c := range caps {
		if err := driver.CheckMountCapability(c, "nfs volumes are directories"); err != nil {
			return err
		}
	}
	return nil
}

func mountFlags(caps []*csi.VolumeCapability) []string {
	for _, c := range caps {
		if f := c.GetMount().GetMountFlags(); len(f) > 0 {
			return f
		}
	}
	return nil
}

// DeleteVolume removes, archives or keeps the sub-directory, as the handle
// (or the driver's default) says. A handle this driver cannot have written
// is an already deleted volume, as with csi-driver-nfs. The share is mounted
// with the mount options of the secrets' key mountOptions (comma-separated):
// the request has no other field for them, so csi-driver-nfs users put a
// PV's mountOptions there for external-provisioner to pass on.
func (d *Driver) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	return d.deleteVolume(ctx, req, nil)
}

var _ driver.DeleteWithPV = (*Driver)(nil)

// DeleteVolumeForPV is DeleteVolume for the embedded provisioner, which
// knows the PV: the share is mounted with the PV's mountOptions, and the
// secrets' mountOptions only when the PV has none.
func (d *Driver) DeleteVolumeForPV(ctx context.Context, req *csi.DeleteVolumeRequest, pv driver.PVInfo) (*csi.DeleteVolumeResponse, error) {
	return d.deleteVolume(ctx, req, pv.MountOptions)
}

// deleteOptions are the options a DeleteVolume mounts the share with: the
// PV's when given, else the secrets' mountOptions (its key matched in any
// case, as csi-driver-nfs does). The secret's value is not quoted in errors.
func deleteOptions(pvOpts []string, secrets map[string]string) ([]string, error) {
	if len(pvOpts) > 0 {
		return pvOpts, checkOptions(pvOpts)
	}
	for k, v := range secrets {
		if !strings.EqualFold(k, paramMountOptions) {
			continue
		}
		opts, err := splitOptions(v)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "secret key %s must be comma-separated mount options, each non-empty, at most 256 bytes and free of control characters (the value is not shown: it is a secret's)", k)
		}
		return opts, nil
	}
	return nil, nil
}

func (d *Driver) deleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest, pvOpts []string) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	v, err := parseHandle(id)
	if status.Code(err) == codes.NotFound {
		klog.InfoS("DeleteVolume of a handle that is not an NFS volume: nothing to delete", "volumeID", id, "reason", err)
		return &csi.DeleteVolumeResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	opts, err := deleteOptions(pvOpts, req.GetSecrets())
	if err != nil {
		return nil, err
	}
	onDelete := v.onDelete
	if onDelete == "" {
		onDelete = d.onDelete
	}
	if onDelete == onDeleteRetain {
		klog.V(2).InfoS("Volume is retained on the share", "volumeID", id)
		return &csi.DeleteVolumeResponse{}, nil
	}
	lk, err := d.locks.Acquire(v.dirKey())
	if err != nil {
		return nil, err
	}
	defer lk.Release()
	err = d.withShare(ctx, lk, v.server, v.share, opts, func(root *os.Root) error {
		parent, base, err := splitDir(root, v.subDir, false)
		if errors.Is(err, fs.ErrNotExist) {
			return nil // deleted before, or never created
		} else if err != nil {
			return shareError("delete", v.subDir, err)
		}
		defer parent.Close()
		fi, err := parent.Lstat(base)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		} else if err != nil {
			return shareError("inspect", v.subDir, err)
		}
		if !fi.IsDir() {
			return status.Errorf(codes.InvalidArgument, "%s on the share is not a directory (a symlink?): not a volume of this driver, left alone", v.subDir)
		}
		if onDelete == onDeleteArchive {
			return archive(root, parent, base, v.subDir)
		}
		if err := removeDir(parent, base, v.subDir); err != nil {
			return shareError("remove", v.subDir, err)
		}
		removeEmptyParents(root, v.subDir)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &csi.DeleteVolumeResponse{}, nil
}

// archive renames subDir (base in parent) to archived-<subDir>, as
// csi-driver-nfs does; an earlier archive of the same name is kept and the
// new one gets a time suffix, so no data is lost.
func archive(root, parent *os.Root, base, subDir string) error {
	to := archivePrefix + subDir
	toParent, toBase, err := splitDir(root, to, true)
	if err != nil {
		return shareError("create", path.Dir(to), err)
	}
	defer toParent.Close()
	if _, err := toParent.Lstat(toBase); err == nil {
		suffix := "-" + time.Now().UTC().Format("20060102T150405Z")
		toBase, to = toBase+suffix, to+suffix
	}
	if err := renameDir(parent, base, toParent, toBase); err != nil {
		return shareError("archive", subDir, err)
	}
	klog.InfoS("Archived volume directory", "from", subDir, "to", to)
	return nil
}

// removeEmptyParents removes the parents a nested subDir (ns/claim) created,
// as long as they are empty directories (never a symlink, never through
// one); failing to is harmless.
func removeEmptyParents(root *os.Root, subDir string) {
	for dir := path.Dir(subDir); dir != "."; dir = path.Dir(dir) {
		parent, base, err := splitDir(root, dir, false)
		if err != nil {
			return
		}
		err = rmdir(parent, base)
		parent.Close()
		if err != nil {
			return
		}
	}
}

func internal(format string, args ...any) error {
	return status.Errorf(codes.Internal, format, args...)
}

// firstErr keeps the first error (the one the caller should see).
func firstErr(first, second error) error {
	if first != nil {
		return first
	}
	return second
}

// ValidateVolumeCapabilities confirms filesystem capabilities of every access
// mode for a volume whose directory exists on the share.
func (d *Driver) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	v, err := parseHandle(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	if err := driver.CheckCapabilities(req.GetVolumeCapabilities()); err != nil {
		return nil, err
	}
	err = d.withShare(ctx, nil, v.server, v.share, nil, func(root *os.Root) error {
		dir, err := volumeDir(root, v.subDir, req.GetVolumeId())
		if err == nil {
			dir.Close()
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: status.Convert(err).Message()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

// ControllerExpandVolume accepts any size: a sub-directory has no size of
// its own (csi-driver-nfs does the same), and no node step is needed.
func (d *Driver) ControllerExpandVolume(_ context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	if _, err := parseHandle(req.GetVolumeId()); err != nil {
		return nil, err
	}
	if req.GetCapacityRange() == nil {
		return nil, status.Error(codes.InvalidArgument, "capacity range is required")
	}
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: req.GetCapacityRange().GetRequiredBytes()}, nil
}

// ControllerGetCapabilities lists the controller RPCs the driver implements.
func (d *Driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	return driver.ControllerCapabilities(
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
	), nil
}
