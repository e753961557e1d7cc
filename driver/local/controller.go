package local

import (
	"context"
	"errors"
	"os"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/monocsi/monocsi/driver"
)

// CreateVolume creates the volume's directory and record. The same name with
// a compatible size returns the existing volume; an incompatible size is
// ALREADY_EXISTS.
func (d *Driver) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	id := req.GetName()
	if err := driver.ValidID("volume name", id); err != nil {
		return nil, err
	}
	if err := d.checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return nil, err
	}
	if err := driver.CheckParameters(req.GetParameters(), ParamEnforceSize); err != nil {
		return nil, err
	}
	block := isBlock(req.GetVolumeCapabilities())
	enforce, err := d.enforceSize(req.GetParameters(), block)
	if err != nil {
		return nil, err
	}
	if err := d.checkAccessible(req.GetAccessibilityRequirements()); err != nil {
		return nil, err
	}
	size, err := requestedSize(req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	src := req.GetVolumeContentSource()
	source, minSize, err := d.contentSource(src, block)
	if err != nil {
		return nil, err
	}
	if source != "" {
		if size == 0 {
			size = minSize // the source's size, not a default
		}
		if lim := req.GetCapacityRange().GetLimitBytes(); size < minSize || lim > 0 && lim < minSize {
			return nil, status.Errorf(codes.OutOfRange, "%s needs at least %d bytes, the request allows %d", source, minSize, max(size, lim))
		}
	}
	if block {
		if size, err = blockSize(size, req.GetCapacityRange().GetLimitBytes()); err != nil {
			return nil, err
		}
	}

	unlock, err := d.locks.TryLock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := d.checkStorage(); err != nil {
		return nil, err
	}

	rec, err := d.readRecord(id)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "volume %s: %v", id, err)
	}
	if rec != nil {
		lim := req.GetCapacityRange().GetLimitBytes()
		if rec.CapacityBytes < req.GetCapacityRange().GetRequiredBytes() || lim > 0 && rec.CapacityBytes > lim {
			return nil, status.Errorf(codes.AlreadyExists,
				"volume %s already exists with %d bytes, which does not fit the requested range", id, rec.CapacityBytes)
		}
		if rec.Block != block {
			return nil, status.Errorf(codes.AlreadyExists, "volume %s already exists as a %s volume", id, volumeKind(rec.Block))
		}
		if rec.Source != source {
			return nil, status.Errorf(codes.AlreadyExists, "volume %s already exists with a different content source (%q)", id, rec.Source)
		}
		if !block && (enforce == enforceRequired && rec.ProjectID == 0 || enforce == enforceRefused && rec.ProjectID != 0) {
			return nil, status.Errorf(codes.AlreadyExists, "volume %s already exists with enforceSize=%v", id, rec.ProjectID != 0)
		}
		size = rec.CapacityBytes
	} else if err := d.checkFree(size); err != nil {
		return nil, err
	}

	// A new volume whose size is enforced gets its project ID, with its
	// limit set, before its directory is filled; the record that names the
	// ID is written last. Until then the ID is only reserved in memory, and
	// given back when the call fails.
	var projID uint32
	release := func() {}
	if rec == nil && d.quota != nil && enforce != enforceRefused && !block {
		if projID, err = d.ids.allocate(id, d.projectInUse); err != nil {
			return nil, err
		}
		release = func() { d.ids.release(projID, id) }
		defer func() { release() }()
		if err = d.quota.SetLimit(projID, size); err != nil {
			return nil, status.Errorf(codes.Internal, "set the %s project quota of volume %s (project %d) to %d bytes: %v", d.quota.Kind(), id, projID, size, err)
		}
	}

	dir := d.volumeDir(id)
	if block {
		if rec == nil && source != "" {
			err = d.populateBlock(id, src, size)
		} else {
			err = d.createBlockFile(id, size, rec == nil)
		}
		if err != nil {
			return nil, err
		}
		if rec == nil {
			if err = writeJSON(d.recordPath(id), record{CapacityBytes: size, Created: time.Now().UTC(), Source: source, Block: true}); err != nil {
				os.Remove(dir) // never published without a record: no volume
				return nil, status.Errorf(codes.Internal, "record volume %s: %v", id, err)
			}
		}
		resp := d.volume(id, size)
		resp.ContentSource = src
		return &csi.CreateVolumeResponse{Volume: resp}, nil
	}
	if rec == nil && source != "" {
		if err = d.populate(dir, id, src, projID); err != nil {
			return nil, err
		}
	} else if err := os.Mkdir(dir, 0o777); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, status.Errorf(codes.Internal, "create %s: %v", dir, err)
	}
	if fi, err := os.Lstat(dir); err != nil || !fi.IsDir() {
		return nil, status.Errorf(codes.Internal, "%s exists but is not a directory", dir)
	}
	// Pods of any user may write, as with hostPath and local-path-provisioner;
	// the root itself (0711) keeps other node users from listing volumes.
	if err := os.Chmod(dir, 0o777); err != nil {
		return nil, status.Errorf(codes.Internal, "chmod %s: %v", dir, err)
	}
	if projID != 0 {
		// Also when the directory was left empty by an interrupted call:
		// it takes the new ID.
		if err = d.quota.SetProject(dir, projID); err != nil {
			return nil, status.Errorf(codes.Internal, "set project %d on %s: %v", projID, dir, err)
		}
	}
	if rec == nil {
		if err = writeJSON(d.recordPath(id), record{CapacityBytes: size, Created: time.Now().UTC(), Source: source, ProjectID: projID}); err != nil {
			os.RemoveAll(dir) // nothing was published yet: no record, no volume
			return nil, status.Errorf(codes.Internal, "record volume %s: %v", id, err)
		}
	}
	release = func() {} // the record holds the ID now
	resp := d.volume(id, size)
	resp.ContentSource = src
	return &csi.CreateVolumeResponse{Volume: resp}, nil
}

// enforce is what a CreateVolume asks of its size's enforcement.
type enforce int

const (
	enforceAuto     enforce = iota // where the root's filesystem can
	enforceRequired                // enforceSize: "true": fail where it cannot
	enforceRefused                 // enforceSize: "false": never
)

// enforceSize reads the enforceSize parameter and fails when it requires
// what the root's filesystem cannot do: RESOURCE_EXHAUSTED (another node
// may have project quotas) naming the filesystem and what it lacks. A
// block volume's size is its file's length: enforced everywhere.
func (d *Driver) enforceSize(params map[string]string, block bool) (enforce, error) {
	v, ok := params[ParamEnforceSize]
	switch {
	case !ok:
		return enforceAuto, nil
	case v == "false":
		return enforceRefused, nil
	case v != "true":
		return 0, status.Errorf(codes.InvalidArgument, "parameter %s must be \"true\" or \"false\", not %q", ParamEnforceSize, driver.Printable(v))
	case block:
		return enforceAuto, nil
	case d.quota == nil:
		return 0, status.Errorf(codes.ResourceExhausted,
			"%s=true, but node %s cannot enforce volume sizes under %s: %s", ParamEnforceSize, d.nodeID, d.root, d.noQuota)
	}
	return enforceRequired, nil
}

// projectInUse tells whether a project ID no record names still owns
// inodes on the filesystem: someone else's project, not to be reused.
func (d *Driver) projectInUse(id uint32) (bool, error) {
	u, err := d.quota.Usage(id)
	return u.Inodes > 0, err
}

func (d *Driver) volume(id string, size int64) *csi.Volume {
	return &csi.Volume{VolumeId: id, CapacityBytes: size, AccessibleTopology: []*csi.Topology{d.topology()}}
}

// requestedSize is the size recorded for a new volume: the required bytes,
// or the limit when only a limit is given. Sizes are checked against free
// space, kept so a repeated CreateVolume can be compared, and enforced by a
// project quota where the root's filesystem has them.
func requestedSize(r *csi.CapacityRange) (int64, error) {
	req, lim := r.GetRequiredBytes(), r.GetLimitBytes()
	switch {
	case req < 0 || lim < 0:
		return 0, status.Error(codes.InvalidArgument, "capacity range must not be negative")
	case lim > 0 && req > lim:
		return 0, status.Errorf(codes.OutOfRange, "required bytes %d exceed the limit %d", req, lim)
	case req > 0:
		return req, nil
	}
	return lim, nil
}

// checkCapabilities rejects what a volume on one node cannot provide.
func (d *Driver) checkCapabilities(caps []*csi.VolumeCapability) error {
	if err := driver.CheckCapabilities(caps); err != nil {
		return err
	}
	ok, msg := d.supported(caps)
	switch {
	case !ok && d.noLoop != "" && strings.HasSuffix(msg, d.noLoop):
		// Another node may have loop devices: the provisioner
		// reschedules a claim on RESOURCE_EXHAUSTED, not on a final error.
		return status.Error(codes.ResourceExhausted, msg)
	case !ok:
		return status.Error(codes.InvalidArgument, msg)
	}
	return nil
}

// supported tells whether caps can be served here: single-node access
// modes, one access type, and block only where loop devices work.
func (d *Driver) supported(caps []*csi.VolumeCapability) (bool, string) {
	block, mount := false, false
	for _, c := range caps {
		block = block || c.GetBlock() != nil
		mount = mount || c.GetMount() != nil
	}
	switch {
	case block && mount:
		return false, "a local volume is either a block device or a filesystem: the capabilities ask for both"
	case block && d.noLoop != "":
		return false, "block volumes need loop devices, which do not work on node " + d.nodeID + ": " + d.noLoop
	}
	return driver.SingleNodeModes(caps)
}

// supportedBy is supported for an existing volume: its kind must match.
func (d *Driver) supportedBy(rec *record, caps []*csi.VolumeCapability) (bool, string) {
	if ok, msg := d.supported(caps); !ok {
		return false, msg
	}
	if len(caps) > 0 && isBlock(caps) != rec.Block {
		return false, "the volume is a " + volumeKind(rec.Block) + " volume"
	}
	return true, ""
}

func volumeKind(block bool) string {
	if block {
		return "block"
	}
	return "filesystem"
}

// checkAccessible fails when the CO requires a topology this node is not in:
// a node-local volume can only be created on its own node.
func (d *Driver) checkAccessible(req *csi.TopologyRequirement) error {
	if len(req.GetRequisite()) == 0 {
		return nil
	}
	for _, t := range req.GetRequisite() {
		if d.servesTopology(t) {
			return nil
		}
	}
	return status.Errorf(codes.ResourceExhausted,
		"the volume must be accessible from %v, but this local driver serves only %s=%s",
		req.GetRequisite(), driver.TopologyKeyNode, d.nodeID)
}

func (d *Driver) servesTopology(t *csi.Topology) bool {
	v, ok := t.GetSegments()[driver.TopologyKeyNode]
	return ok && v == d.nodeID
}

// DeleteVolume removes the volume's directory, then its record. A volume that
// is still mounted anywhere on the node is not touched.
func (d *Driver) DeleteVolume(_ context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	if err := driver.ValidID("volume ID", id); err != nil {
		return nil, err
	}
	unlock, err := d.locks.TryLock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()

	if err := d.checkStorage(); err != nil {
		return nil, err
	}
	dir := d.volumeDir(id)
	// The path's type, not the record, tells a block volume's file from a
	// directory: an interrupted create leaves a file without a record.
	if fi, err := os.Lstat(dir); err == nil && fi.Mode().IsRegular() {
		if err := d.checkBlockUnused(id); err != nil {
			return nil, err
		}
	} else if err := d.checkUnused(dir); err != nil {
		return nil, err
	}
	rec, _ := d.readRecord(id) // a damaged record is removed all the same
	if err := os.RemoveAll(dir); err != nil {
		return nil, status.Errorf(codes.Internal, "remove %s: %v", dir, err)
	}
	if err := removeFile(d.recordPath(id)); err != nil {
		return nil, status.Errorf(codes.Internal, "remove record of %s: %v", id, err)
	}
	d.walks.forget(id)
	if rec != nil && rec.ProjectID != 0 {
		// The project owns nothing now: its limit goes, its ID is free.
		// A limit left by a crash here is replaced by the ID's next user.
		if d.quota != nil {
			if err := d.quota.SetLimit(rec.ProjectID, 0); err != nil {
				klog.ErrorS(err, "Cannot clear the quota limit of a deleted volume", "volumeID", id, "projectID", rec.ProjectID)
			}
		}
		d.ids.release(rec.ProjectID, id)
	}
	return &csi.DeleteVolumeResponse{}, nil
}

// checkUnused fails when something is mounted on dir or inside it, or dir is
// bind-mounted somewhere: removing it would cross into another filesystem
// (another volume's files) or delete data a pod is using. The mounts on and
// under it are looked at first: when dir itself is a mount point, the
// references of what is mounted there say nothing about the volume.
func (d *Driver) checkUnused(dir string) error {
	mps, err := driver.MountsAtOrUnder(dir)
	if err != nil {
		return status.Errorf(codes.Internal, "list mounts: %v", err)
	}
	if len(mps) > 0 {
		return status.Errorf(codes.FailedPrecondition,
			"something is mounted on or inside the volume's directory, at %s: unmount it first; nothing was removed", strings.Join(mps, ", "))
	}
	refs, err := d.mounter.GetMountRefs(dir)
	if err != nil {
		return status.Errorf(codes.Internal, "check mounts of %s: %v", dir, err)
	}
	if len(refs) > 0 {
		return status.Errorf(codes.FailedPrecondition, "volume is still mounted at %s", strings.Join(refs, ", "))
	}
	return nil
}

// ValidateVolumeCapabilities confirms the capabilities a directory volume supports.
func (d *Driver) ValidateVolumeCapabilities(_ context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	id := req.GetVolumeId()
	if err := driver.ValidID("volume ID", id); err != nil {
		return nil, err
	}
	if err := driver.CheckCapabilities(req.GetVolumeCapabilities()); err != nil {
		return nil, err
	}
	rec, err := d.existingRecord(id)
	if err != nil {
		return nil, err
	}
	if ok, msg := d.supportedBy(rec, req.GetVolumeCapabilities()); !ok {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: msg}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

// ListVolumes pages through the volumes in ID order.
func (d *Driver) ListVolumes(_ context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	ids, err := listIDs(d.recordDir())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list volumes: %v", err)
	}
	resp := &csi.ListVolumesResponse{}
	resp.NextToken, err = page(ids, req.GetStartingToken(), req.GetMaxEntries(), func(id string) bool {
		rec, err := d.readRecord(id)
		if err != nil || rec == nil {
			return false // deleted meanwhile, or damaged (reported by calls on that volume)
		}
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{Volume: d.volume(id, rec.CapacityBytes)})
		return true
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// listTokenPrefix marks a list token; the rest is the last ID returned, so a
// token stays valid when that entry is deleted in between.
const listTokenPrefix = "after:"

// page calls add for the sorted ids after the starting token until add has
// accepted max entries (0: no limit), and returns the next token.
func page(ids []string, token string, maxEntries int32, add func(id string) bool) (string, error) {
	if maxEntries < 0 {
		return "", status.Error(codes.InvalidArgument, "max_entries must not be negative")
	}
	after := ""
	if token != "" {
		var ok bool
		after, ok = strings.CutPrefix(token, listTokenPrefix)
		if !ok || driver.ValidID("token", after) != nil {
			return "", status.Errorf(codes.Aborted, "starting token %q was not issued by this driver", token)
		}
	}
	n, last := int32(0), ""
	for _, id := range ids {
		if id <= after {
			continue
		}
		if maxEntries > 0 && n == maxEntries {
			return listTokenPrefix + last, nil
		}
		if add(id) {
			n, last = n+1, id
		}
	}
	return "", nil
}

// GetCapacity reports the free bytes of the root's filesystem for this node's
// topology, and 0 for any other topology or for capabilities it cannot serve.
func (d *Driver) GetCapacity(_ context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	if t := req.GetAccessibleTopology(); t != nil && !d.servesTopology(t) {
		return &csi.GetCapacityResponse{}, nil
	}
	if ok, _ := d.supported(req.GetVolumeCapabilities()); !ok {
		return &csi.GetCapacityResponse{}, nil
	}
	free, err := d.freeBytes()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "read free space of %s: %v", d.root, err)
	}
	return &csi.GetCapacityResponse{AvailableCapacity: free}, nil
}

func (d *Driver) freeBytes() (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(d.root, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * st.Bsize, nil
}

// ControllerGetCapabilities lists the controller RPCs the driver implements.
func (d *Driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	return driver.ControllerCapabilities(
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
		csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csi.ControllerServiceCapability_RPC_GET_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
		csi.ControllerServiceCapability_RPC_GET_VOLUME_HEALTH,
		csi.ControllerServiceCapability_RPC_LIST_VOLUME_HEALTH,
	), nil
}

// ControllerGetVolumeHealth reports the volume's health (see health).
func (d *Driver) ControllerGetVolumeHealth(_ context.Context, req *csi.ControllerGetVolumeHealthRequest) (*csi.ControllerGetVolumeHealthResponse, error) {
	h, err := d.health(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	return &csi.ControllerGetVolumeHealthResponse{VolumeHealth: h}, nil
}

// ControllerListVolumeHealth pages through every volume's health.
func (d *Driver) ControllerListVolumeHealth(_ context.Context, req *csi.ControllerListVolumeHealthRequest) (*csi.ControllerListVolumeHealthResponse, error) {
	ids, err := listIDs(d.recordDir())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list volumes: %v", err)
	}
	resp := &csi.ControllerListVolumeHealthResponse{}
	resp.NextToken, err = page(ids, req.GetStartingToken(), req.GetMaxEntries(), func(id string) bool {
		h, err := d.health(id)
		if err != nil {
			return false
		}
		resp.Entries = append(resp.Entries, h)
		return true
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// health is DATA_LOSS when the volume's directory vanished from under its
// record (someone removed it by hand), healthy otherwise.
func (d *Driver) health(id string) (*csi.VolumeHealth, error) {
	if err := driver.ValidID("volume ID", id); err != nil {
		return nil, err
	}
	rec, err := d.existingRecord(id)
	if err != nil {
		return nil, err
	}
	h := &csi.VolumeHealth{VolumeId: id}
	if rec.Block {
		if fi, err := os.Lstat(d.volumeDir(id)); err != nil || !fi.Mode().IsRegular() {
			h.HealthStatuses = []*csi.VolumeHealth_VolumeHealthEntry{{
				Status:  csi.VolumeHealthErrorType_DATA_LOSS,
				Reason:  "VolumeFileMissing",
				Message: "the file " + d.volumeDir(id) + " of this block volume is gone",
			}}
		}
		return h, nil
	}
	if fi, err := os.Lstat(d.volumeDir(id)); err != nil || !fi.IsDir() {
		h.HealthStatuses = []*csi.VolumeHealth_VolumeHealthEntry{{
			Status:  csi.VolumeHealthErrorType_DATA_LOSS,
			Reason:  "VolumeDirectoryMissing",
			Message: "the directory " + d.volumeDir(id) + " of this volume is gone",
		}}
	}
	return h, nil
}
