// Package local is the node-local volume driver: a volume is a directory under
// a root directory on one node, bind-mounted into pods. It needs no storage
// server, which makes it the default for edge and single-node clusters.
//
// Layout under the root:
//
//	<root>/<volume-id>/                           the volume's data
//	<root>/.monocsi/<volume-id>.json              its record (capacity, creation time)
//	<root>/.monocsi/snapshots/<snap-id>.tar.gz    a snapshot's archive
//	<root>/.monocsi/snapshots/<snap-id>.json      its record
//	<root>/.monocsi/new/<volume-id>/              a clone or restore being filled
//
// The record is the commit point: a volume exists exactly when its record
// does. CreateVolume makes the directory first and the record last;
// DeleteVolume removes the directory first and the record last, so an
// interrupted call leaves either an empty directory that the retry adopts or a
// record whose retry finishes the deletion — never a record-less directory of
// old data that a new volume of the same name could inherit.
package local

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"
	mount "k8s.io/mount-utils"

	"github.com/monocsi/monocsi/driver"
)

// DefaultName is the CSI driver name of the local driver.
const DefaultName = "local.csi.monocsi.io"

// DefaultRoot is where volumes live unless configured otherwise.
const DefaultRoot = "/var/lib/monocsi/local"

const metaDirName = ".monocsi"

// Config configures a local driver.
type Config struct {
	Name    string // CSI driver name; DefaultName when empty
	NodeID  string // this node's name; also the topology value volumes pin to
	Root    string // directory holding the volumes; DefaultRoot when empty
	Version string // reported as vendor_version
	// Mounter performs mounts; mount.New("") when nil.
	Mounter mount.Interface
}

// Driver serves local volumes of one node.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	name, nodeID, root, version string
	mounter                     mount.Interface
	locks                       driver.Locks
}

var _ driver.Driver = (*Driver)(nil)

// New checks the configuration and prepares the root directory.
func New(c Config) (*Driver, error) {
	if c.Name == "" {
		c.Name = DefaultName
	}
	if c.Root == "" {
		c.Root = DefaultRoot
	}
	if c.Mounter == nil {
		c.Mounter = mount.New("")
	}
	if c.NodeID == "" {
		return nil, fmt.Errorf("local driver: a node ID is required (--node-id)")
	}
	if !filepath.IsAbs(c.Root) {
		return nil, fmt.Errorf("local driver: root %q must be an absolute path", c.Root)
	}
	root := filepath.Clean(c.Root)
	if err := os.MkdirAll(root, 0o711); err != nil {
		return nil, fmt.Errorf("local driver: create root: %w", err)
	}
	d := &Driver{name: c.Name, nodeID: c.NodeID, root: root, version: c.Version, mounter: c.Mounter}
	for _, dir := range []string{d.recordDir(), d.snapshotDir(), d.newDir()} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("local driver: create %s: %w", dir, err)
		}
	}
	return d, nil
}

// topology is the segment every volume of this node is accessible from.
func (d *Driver) topology() *csi.Topology {
	return &csi.Topology{Segments: map[string]string{driver.TopologyKeyNode: d.nodeID}}
}

func (d *Driver) volumeDir(id string) string { return filepath.Join(d.root, id) }
