package nfs

import (
	"context"
	"os"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/monocsi/monocsi/driver"
)

// GetPluginInfo names the driver.
func (d *Driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: d.name, VendorVersion: d.version}, nil
}

// GetPluginCapabilities: a controller service and online expansion; no
// topology, since every node reaches the server.
func (d *Driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{
		{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: csi.PluginCapability_Service_CONTROLLER_SERVICE}}},
		{Type: &csi.PluginCapability_VolumeExpansion_{VolumeExpansion: &csi.PluginCapability_VolumeExpansion{
			Type: csi.PluginCapability_VolumeExpansion_ONLINE}}},
	}}, nil
}

// Probe is ready while the work directory is usable; servers are per volume
// and their trouble is reported by the calls that reach them.
func (d *Driver) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	if fi, err := os.Stat(d.workDir); err != nil || !fi.IsDir() {
		return nil, status.Errorf(codes.FailedPrecondition, "nfs driver: %s is not a usable directory: %v", d.workDir, err)
	}
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}

// Declare: no attach, fsGroup applied by the kubelet, persistent and inline
// volumes, provisioned centrally (csi-driver-nfs's CSIDriver object).
func (d *Driver) Declare() driver.Declaration {
	return driver.Declaration{FSGroupPolicy: "File", Ephemeral: true}
}
