package capability

import (
	"context"
	"errors"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	corev1 "k8s.io/api/core/v1"

	"github.com/monocsi/monocsi/driver"
)

type counting struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer
	err   error
	calls int
}

func (c *counting) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{{Type: &csi.PluginCapability_Service_{
		Service: &csi.PluginCapability_Service{Type: csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS}}}}}, nil
}

func (c *counting) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	c.calls++
	if c.err != nil {
		return nil, c.err
	}
	return driver.ControllerCapabilities(csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME,
		csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER), nil
}

// A driver is asked once; a failure is an error, asked again next time; a
// new instance under the same name is asked anew.
func TestCache(t *testing.T) {
	ctx := context.Background()
	var c Cache
	d := &counting{err: errors.New("not ready")}
	if _, err := c.Get(ctx, "d", d); err == nil {
		t.Fatal("a failed lookup returned no error")
	}
	d.err = nil
	for range 3 {
		s, err := c.Get(ctx, "d", d)
		if err != nil || !s.Controller(csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME) || !s.MultiWriter() ||
			!s.Plugin(csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS) || s.Controller(csi.ControllerServiceCapability_RPC_CLONE_VOLUME) {
			t.Fatalf("Get: %+v, %v", s, err)
		}
	}
	if d.calls != 2 {
		t.Errorf("ControllerGetCapabilities called %d times, want 2 (the failure, then once)", d.calls)
	}
	other := &counting{}
	if _, err := c.Get(ctx, "d", other); err != nil || other.calls != 1 {
		t.Errorf("a replaced driver was not asked: %v, %d calls", err, other.calls)
	}
	c.Forget("d", d) // not the cached instance: nothing happens
	c.Get(ctx, "d", other)
	if other.calls != 1 {
		t.Errorf("Forget of another instance dropped the cached one")
	}
	c.Forget("d", other)
	c.Get(ctx, "d", other)
	if other.calls != 2 {
		t.Errorf("Forget did not drop the driver's capabilities")
	}
}

// The provisioner (one mode of a claim at a time) and the attacher (all
// modes of a PV) map access modes as external-provisioner and
// external-attacher do.
func TestAccessMode(t *testing.T) {
	type m = []corev1.PersistentVolumeAccessMode
	for _, tc := range []struct {
		modes       m
		multiWriter bool
		want        csi.VolumeCapability_AccessMode_Mode
		err         bool
	}{
		{m{corev1.ReadWriteOnce}, false, csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, false},
		{m{corev1.ReadWriteOnce}, true, csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER, false},
		{m{corev1.ReadWriteOncePod}, false, csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, false},
		{m{corev1.ReadWriteOncePod}, true, csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER, false},
		{m{corev1.ReadOnlyMany}, false, csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY, false},
		{m{corev1.ReadWriteMany, corev1.ReadOnlyMany}, false, csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER, false},
		{m{corev1.ReadWriteOnce, corev1.ReadOnlyMany}, false, 0, true},
		{m{corev1.ReadWriteOncePod, corev1.ReadWriteOnce}, true, 0, true},
		{nil, false, 0, true},
	} {
		got, err := AccessMode(tc.modes, tc.multiWriter)
		if (err != nil) != tc.err || !tc.err && got != tc.want {
			t.Errorf("%v multiWriter=%v: %v, %v; want %v (error %v)", tc.modes, tc.multiWriter, got, err, tc.want, tc.err)
		}
	}
	c, err := Volume([]corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, false, false, "ext4", []string{"noatime"})
	if err != nil || c.GetMount().GetFsType() != "ext4" || c.GetMount().GetMountFlags()[0] != "noatime" || c.GetBlock() != nil {
		t.Errorf("filesystem capability: %v, %v", c, err)
	}
	c, err = Volume([]corev1.PersistentVolumeAccessMode{corev1.ReadWriteMany}, false, true, "ext4", nil)
	if err != nil || c.GetBlock() == nil || c.GetMount() != nil || c.GetAccessMode().GetMode() != csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER {
		t.Errorf("block capability: %v, %v", c, err)
	}
}
