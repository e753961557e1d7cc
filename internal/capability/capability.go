// Package capability is what the provisioner and the attacher both need to
// know about a driver and a volume: one cache of each driver's plugin and
// controller capabilities, and one mapping of Kubernetes access modes to the
// CSI volume capability.
package capability

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-lib-utils/accessmodes"
	corev1 "k8s.io/api/core/v1"

	"github.com/monocsi/monocsi/driver"
)

// Set is what one driver said it can do.
type Set struct {
	plugin     []csi.PluginCapability_Service_Type
	controller []csi.ControllerServiceCapability_RPC_Type
}

// Plugin tells whether the driver has the plugin capability t.
func (s Set) Plugin(t csi.PluginCapability_Service_Type) bool { return slices.Contains(s.plugin, t) }

// Controller tells whether the driver has the controller capability t.
func (s Set) Controller(t csi.ControllerServiceCapability_RPC_Type) bool {
	return slices.Contains(s.controller, t)
}

// MultiWriter: the driver tells single-writer from multi-writer
// single-node modes (SINGLE_NODE_MULTI_WRITER).
func (s Set) MultiWriter() bool {
	return s.Controller(csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER)
}

// Cache remembers each driver's capabilities once it has answered. A failed
// lookup is returned as an error and not remembered: callers retry, and
// never take it for "no capability" (an attacher that did would mark a
// volume attached without ControllerPublishVolume, or drop its finalizer
// without ControllerUnpublishVolume). The zero value is ready.
type Cache struct {
	mu sync.Mutex
	m  map[string]entry // by driver name
}

type entry struct {
	d   driver.Driver // the instance that answered: a replaced driver is asked again
	set Set
}

// Get returns the capabilities of d, the driver named name, asking it
// (GetPluginCapabilities and ControllerGetCapabilities) the first time.
func (c *Cache) Get(ctx context.Context, name string, d driver.Driver) (Set, error) {
	c.mu.Lock()
	e, ok := c.m[name]
	c.mu.Unlock()
	if ok && e.d == d {
		return e.set, nil
	}
	var s Set
	plugin, err := d.GetPluginCapabilities(ctx, &csi.GetPluginCapabilitiesRequest{})
	if err != nil {
		return Set{}, fmt.Errorf("driver %s: GetPluginCapabilities: %w", name, err)
	}
	for _, p := range plugin.GetCapabilities() {
		if svc := p.GetService(); svc != nil {
			s.plugin = append(s.plugin, svc.GetType())
		}
	}
	ctl, err := d.ControllerGetCapabilities(ctx, &csi.ControllerGetCapabilitiesRequest{})
	if err != nil {
		return Set{}, fmt.Errorf("driver %s: ControllerGetCapabilities: %w", name, err)
	}
	for _, x := range ctl.GetCapabilities() {
		if rpc := x.GetRpc(); rpc != nil {
			s.controller = append(s.controller, rpc.GetType())
		}
	}
	c.mu.Lock()
	if c.m == nil {
		c.m = map[string]entry{}
	}
	c.m[name] = entry{d: d, set: s}
	c.mu.Unlock()
	return s, nil
}

// Forget drops what d, the driver named name, answered (it was removed).
func (c *Cache) Forget(name string, d driver.Driver) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[name]; ok && e.d == d {
		delete(c.m, name)
	}
}

// AccessMode maps access modes to the one CSI access mode, as
// external-provisioner (for each mode of a claim) and external-attacher (for
// all modes of a PV) do, through csi-lib-utils: ReadWriteMany wins, then
// ReadOnlyMany; ReadWriteOnce is SINGLE_NODE_MULTI_WRITER and ReadWriteOncePod
// SINGLE_NODE_SINGLE_WRITER when the driver tells them apart (multiWriter),
// both SINGLE_NODE_WRITER otherwise; combinations CSI cannot express are
// errors.
func AccessMode(modes []corev1.PersistentVolumeAccessMode, multiWriter bool) (csi.VolumeCapability_AccessMode_Mode, error) {
	return accessmodes.ToCSIAccessMode(modes, multiWriter)
}

// Volume is the CSI volume capability for access modes: a block device, or
// a filesystem of fsType mounted with mountFlags.
func Volume(modes []corev1.PersistentVolumeAccessMode, multiWriter, block bool, fsType string, mountFlags []string) (*csi.VolumeCapability, error) {
	mode, err := AccessMode(modes, multiWriter)
	if err != nil {
		return nil, err
	}
	c := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode}}
	if block {
		c.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
	} else {
		c.AccessType = &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType, MountFlags: mountFlags}}
	}
	return c, nil
}
