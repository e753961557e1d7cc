package flex

import (
	"context"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/monocsi/monocsi/driver"
)

// CreateVolume has no FlexVolume command behind it: FlexVolumes were always
// static. It records the StorageClass parameters as the volume's options
// (and the volume name as kubernetes.io/pvOrVolumeName), so a class can hand
// each claim a PV the executable will attach and mount; the executable
// creates whatever the options describe when it first attaches or mounts.
func (d *Driver) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if err := driver.ValidID("volume name", req.GetName()); err != nil {
		return nil, err
	}
	if err := driver.CheckCapabilities(req.GetVolumeCapabilities()); err != nil {
		return nil, err
	}
	if req.GetVolumeContentSource() != nil {
		return nil, status.Error(codes.InvalidArgument, "a FlexVolume driver cannot fill a volume from a snapshot or another volume")
	}
	attrs := map[string]string{}
	for k, v := range req.GetParameters() {
		switch {
		case strings.HasPrefix(k, "csi.storage.k8s.io/"):
			continue // the provisioner's metadata
		case strings.HasPrefix(k, "kubernetes.io/"):
			return nil, status.Errorf(codes.InvalidArgument, "parameter %q is reserved for the keys the kubelet sets", driver.Printable(k))
		}
		attrs[k] = v
	}
	if len(attrs) == 0 {
		return nil, status.Error(codes.InvalidArgument, "a FlexVolume is its options: the StorageClass needs at least one parameter")
	}
	// The options must fit in an executable's argument at every later call.
	if _, err := options(req.GetName(), attrs, nil, false, nil); err != nil {
		return nil, err
	}
	d.created.Store(req.GetName(), true)
	// Capacity 0: unknown; the PV carries the claim's request.
	return &csi.CreateVolumeResponse{Volume: &csi.Volume{VolumeId: req.GetName(), VolumeContext: attrs}}, nil
}

// DeleteVolume forgets the volume: FlexVolume has no command to delete one,
// so whatever the executable created stays (nothing is lost).
func (d *Driver) DeleteVolume(_ context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	if err := checkVolumeID(req.GetVolumeId()); err != nil {
		return nil, err
	}
	d.created.Delete(req.GetVolumeId())
	klog.V(2).InfoS("FlexVolume deleted: the executable keeps its data, there is no delete command", "driver", d.name, "volume", req.GetVolumeId())
	return &csi.DeleteVolumeResponse{}, nil
}

// known fails with NOT_FOUND for a volume that comes without options and
// was not created by this process: a FlexVolume is its options (every call
// from Kubernetes carries the PV's), so without them it names nothing.
func (d *Driver) known(id string, attrs map[string]string) error {
	for k := range attrs {
		if !strings.HasPrefix(k, "csi.storage.k8s.io/") {
			return nil
		}
	}
	if _, ok := d.created.Load(id); ok {
		return nil
	}
	return status.Errorf(codes.NotFound, "volume %q has no options (volume attributes): it is not a volume of this FlexVolume driver", driver.Printable(id))
}

func checkVolumeID(id string) error { return driver.CheckText("volume ID", id, 1024) }

// checkNodeID: a node ID is an executable's argument; a Kubernetes node name
// is at most 253 bytes, and a control character or NUL is no name.
func checkNodeID(id string) error { return driver.CheckText("node ID", id, 253) }

// ControllerPublishVolume runs attach and hands the device to the node in
// the publish context.
func (d *Driver) ControllerPublishVolume(ctx context.Context, req *csi.ControllerPublishVolumeRequest) (*csi.ControllerPublishVolumeResponse, error) {
	if !d.attach {
		return nil, status.Errorf(codes.Unimplemented, "flex driver %s does not attach (init said so)", d.name)
	}
	id, node := req.GetVolumeId(), req.GetNodeId()
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	if err := checkNodeID(node); err != nil {
		return nil, err
	}
	if err := driver.CheckCapability(req.GetVolumeCapability()); err != nil {
		return nil, err
	}
	if err := d.known(id, req.GetVolumeContext()); err != nil {
		return nil, err
	}
	opts, err := options(id, req.GetVolumeContext(), req.GetVolumeCapability(), req.GetReadonly(), req.GetSecrets())
	if err != nil {
		return nil, err
	}
	unlock, err := d.locks.TryLock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	r, err := d.call(ctx, d.timeout, "attach", opts, node)
	if err != nil {
		return nil, err
	}
	if err := checkDevice(d.name, "attach", r.Device); err != nil {
		return nil, err
	}
	return &csi.ControllerPublishVolumeResponse{PublishContext: map[string]string{"device": r.Device}}, nil
}

// ControllerUnpublishVolume runs detach; "Not supported" means there is
// nothing to detach.
func (d *Driver) ControllerUnpublishVolume(ctx context.Context, req *csi.ControllerUnpublishVolumeRequest) (*csi.ControllerUnpublishVolumeResponse, error) {
	if !d.attach {
		return nil, status.Errorf(codes.Unimplemented, "flex driver %s does not attach (init said so)", d.name)
	}
	id := req.GetVolumeId()
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	if err := checkNodeID(req.GetNodeId()); err != nil {
		return nil, err
	}
	unlock, err := d.locks.TryLock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, err := d.call(ctx, d.timeout, "detach", id, req.GetNodeId()); err != nil && err != errNotSupported {
		return nil, err
	}
	return &csi.ControllerUnpublishVolumeResponse{}, nil
}

// ValidateVolumeCapabilities confirms what the executable was given: the
// FlexVolume protocol has no way to ask it.
func (d *Driver) ValidateVolumeCapabilities(_ context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if err := checkVolumeID(req.GetVolumeId()); err != nil {
		return nil, err
	}
	if err := driver.CheckCapabilities(req.GetVolumeCapabilities()); err != nil {
		return nil, err
	}
	if err := d.known(req.GetVolumeId(), req.GetVolumeContext()); err != nil {
		return nil, err
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext: req.GetVolumeContext(), VolumeCapabilities: req.GetVolumeCapabilities(), Parameters: req.GetParameters()}}, nil
}

// ControllerGetCapabilities: the pass-through CreateVolume, and attach when
// init reported it.
func (d *Driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	rpcs := []csi.ControllerServiceCapability_RPC_Type{csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME}
	if d.attach {
		rpcs = append(rpcs, csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME)
	}
	return driver.ControllerCapabilities(rpcs...), nil
}

// checkDevice validates a device path an executable returned: it is later
// mounted, so it must be a clean absolute path under /dev.
func checkDevice(drv, op, dev string) error {
	if dev == "" || len(dev) > 4095 || !strings.HasPrefix(dev, "/dev/") || strings.Contains(dev, "..") ||
		strings.ContainsFunc(dev, func(r rune) bool { return r < 0x21 || r == 0x7f || r == ',' }) {
		return status.Errorf(codes.Internal, "flex driver %s: %s: returned device %q, which is not a path under /dev", drv, op, clip(dev))
	}
	return nil
}
