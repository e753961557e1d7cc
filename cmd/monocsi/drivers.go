package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"

	"github.com/monocsi/monocsi/csidriver"
	"github.com/monocsi/monocsi/driver"

	"github.com/monocsi/monocsi/driver/local"
	"github.com/monocsi/monocsi/driver/nfs"
	"github.com/monocsi/monocsi/internal/capability"
	"github.com/monocsi/monocsi/internal/version"
	"github.com/monocsi/monocsi/nodeplugin"
	"github.com/monocsi/monocsi/provisioner"
)

// driverFlags are the settings of the drivers a role carries.
type driverFlags struct {
	nodeID    string
	localRoot string
	localName string
	nfs       nfs.Config
	noLocal   bool // the controller role: node-local drivers are the node role's
}

// register adds the drivers' flags to fs; withLocal adds the local
// driver's, for the roles that run it.
func (f *driverFlags) register(fs *flag.FlagSet, withLocal bool) {
	fs.StringVar(&f.nodeID, "node-id", os.Getenv("NODE_NAME"), "this node's name (the Kubernetes node name); default $NODE_NAME")
	f.noLocal = !withLocal
	if withLocal {
		fs.StringVar(&f.localRoot, "local-root", local.DefaultRoot, "directory holding the local driver's volumes")
		fs.StringVar(&f.localName, "local-driver-name", local.DefaultName, "CSI name of the local driver")
	}
	fs.StringVar(&f.nfs.Name, "nfs-driver-name", nfs.DefaultName, "CSI name of the nfs driver (nfs.csi.k8s.io takes over csi-driver-nfs's volumes)")
	fs.StringVar(&f.nfs.WorkDir, "nfs-workdir", nfs.DefaultWorkDir, "directory for the nfs driver's short-lived mounts of shares (controller)")
	fs.StringVar(&f.nfs.OnDelete, "nfs-default-ondelete", "delete", "what deleting an nfs volume does when its StorageClass does not say: delete, retain or archive")
	fs.DurationVar(&f.nfs.MountTimeout, "nfs-mount-timeout", 30*time.Second, "how long an NFS mount may take before the call fails (each unmount step gets a third)")
}

// build creates the named drivers.
func (f *driverFlags) build(names []string) ([]nodeplugin.Plugin, error) {
	if f.nodeID == "" {
		return nil, fmt.Errorf("--node-id (or $NODE_NAME) is required")
	}
	// The node ID is also a topology label value on the Node object.
	if errs := validation.IsValidLabelValue(f.nodeID); len(errs) > 0 {
		return nil, fmt.Errorf("--node-id %q cannot be a topology label value: %s", f.nodeID, strings.Join(errs, "; "))
	}
	var plugins []nodeplugin.Plugin
	seen := map[string]bool{}
	for _, n := range names {
		n = strings.TrimSpace(n)
		if n == "" || seen[n] {
			continue
		}
		seen[n] = true
		switch n {
		case "local":
			if f.noLocal {
				return nil, fmt.Errorf("driver local is node-local: the node role provisions it (monocsi node), not the controller")
			}
			d, err := local.New(local.Config{Name: f.localName, NodeID: f.nodeID, Root: f.localRoot, Version: version.Version})
			if err != nil {
				return nil, err
			}
			plugins = append(plugins, nodeplugin.Plugin{Name: f.localName, Driver: d, NodeLocal: d.Declare().NodeLocal})
		case "nfs":
			c := f.nfs
			c.NodeID, c.Version = f.nodeID, version.Version
			d, err := nfs.New(c)
			if err != nil {
				return nil, err
			}
			plugins = append(plugins, nodeplugin.Plugin{Name: c.Name, Driver: d})
		default:
			return nil, fmt.Errorf("unknown driver %q (available: local, nfs)", n)
		}
	}
	if len(plugins) == 0 {
		return nil, fmt.Errorf("no driver enabled")
	}
	return plugins, nil
}

// provisioners writes the CSIDriver object of each plugin (storageCapacity
// set when the node role publishes the driver's capacity) and returns its
// provisioner; nodeName makes them node deployments. caps is the process's
// cache of drivers' capabilities; snap reads the VolumeSnapshots claims
// restore from.
func provisioners(ctx context.Context, client kubernetes.Interface, snap snapclient.Interface, caps *capability.Cache, plugins []nodeplugin.Plugin, nodeName string, extraMetadata bool) ([]*provisioner.Provisioner, error) {
	var provs []*provisioner.Provisioner
	for _, p := range plugins {
		if dec, ok := p.Driver.(driver.Declarer); ok {
			d := dec.Declare()
			// The node role publishes node-local drivers' capacity.
			if nodeName != "" && d.NodeLocal && publishCapacity {
				s, err := caps.Get(ctx, p.Name, p.Driver)
				if err != nil {
					return nil, err
				}
				d.StorageCapacity = s.Controller(csi.ControllerServiceCapability_RPC_GET_CAPACITY)
			}
			if err := csidriver.Ensure(ctx, client, p.Name, d); err != nil {
				return nil, err
			}
		}
		prov, err := provisioner.New(ctx, client, provisioner.Options{Driver: p.Driver, NodeName: nodeName, ExtraCreateMetadata: extraMetadata, Capabilities: caps, Snapshots: snap})
		if err != nil {
			return nil, fmt.Errorf("provisioner for %s: %w", p.Name, err)
		}
		provs = append(provs, prov)
	}
	return provs, nil
}
