package main

import (
	"context"
	"flag"
	"os"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/monocsi/monocsi/capacity"
	"github.com/monocsi/monocsi/internal/capability"
	"github.com/monocsi/monocsi/internal/kube"
	"github.com/monocsi/monocsi/nodeplugin"
	"github.com/monocsi/monocsi/resizer"
	"github.com/monocsi/monocsi/snapshotter"
)

// ResizeWorkers is how many claims the resizer handles at once
// (external-resizer's --workers default).
const ResizeWorkers = 10

// sidecarFlags switch the embedded external-resizer and (node role)
// storage capacity tracking.
type sidecarFlags struct {
	resize bool
	poll   time.Duration
	// snapshot is --enable-snapshotter; snapshotController (controller
	// role only) is --snapshot-controller.
	snapshot           bool
	snapshotController bool
}

// publishCapacity is the node role's --enable-capacity: the CSIDriver
// objects it writes say storageCapacity only when it publishes capacity.
var publishCapacity bool

// registerSidecarFlags adds the flags of the resizer and, with capacity
// (the node role), of capacity tracking.
func registerSidecarFlags(fs *flag.FlagSet, withCapacity bool) *sidecarFlags {
	f := &sidecarFlags{}
	fs.BoolVar(&f.resize, "enable-resizer", true, "expand the volumes of claims whose requested size grew (external-resizer's job)")
	fs.BoolVar(&f.snapshot, "enable-snapshotter", true, "create and delete the snapshots of VolumeSnapshotContents of these drivers (csi-snapshotter's job; in the node role, of contents labelled with this node, csi-snapshotter --node-deployment); waits for the snapshot.storage.k8s.io CRDs")
	if !withCapacity {
		fs.BoolVar(&f.snapshotController, "snapshot-controller", false, "also run the common snapshot-controller (binds VolumeSnapshots to contents, with --enable-distributed-snapshotting) under the Lease; a cluster must run only one, so leave it off where one runs")
	}
	if withCapacity {
		fs.BoolVar(&publishCapacity, "enable-capacity", true, "publish CSIStorageCapacity objects of this node's node-local drivers and set storageCapacity in their CSIDriver objects (external-provisioner's --enable-capacity)")
		fs.DurationVar(&f.poll, "capacity-poll-interval", capacity.DefaultPoll, "how often to refresh CSIStorageCapacity objects (they are also refreshed after every volume created or deleted)")
	}
	return f
}

// runResizer expands the volumes of plugins until ctx is done. It requests
// the claim and PV informers of inf: their filters must be set.
func (f *sidecarFlags) runResizer(ctx context.Context, client kubernetes.Interface, inf *kube.Informers, caps *capability.Cache, plugins []nodeplugin.Plugin) error {
	if !f.resize || len(plugins) == 0 {
		<-ctx.Done()
		return nil
	}
	r := resizer.New(client, inf, caps)
	for _, p := range plugins {
		r.Add(p.Name, p.Driver)
	}
	return r.Run(ctx, ResizeWorkers)
}

// startNode returns what the node role calls once its provisioners' caches
// are filtered and filled: it starts, in g, the resizer and the capacity
// publisher and the snapshotter (of contents labelled with node) of the
// node-local drivers.
func (f *sidecarFlags) startNode(ctx context.Context, g *errgroup.Group, client kubernetes.Interface, snap snapclient.Interface, inf *kube.Informers, plugins []nodeplugin.Plugin, node string) func() {
	return func() {
		caps := &capability.Cache{}
		g.Go(func() error { return f.runResizer(ctx, client, inf, caps, plugins) })
		g.Go(func() error { return f.snapshots(ctx, client, snap, caps, plugins, node, nil) })
		if !publishCapacity {
			return
		}
		g.Go(func() error {
			var ds []capacity.Driver
			for _, p := range plugins {
				if hasGetCapacity(ctx, caps, p) {
					ds = append(ds, capacity.Driver{Name: p.Name, Driver: p.Driver})
				}
			}
			if len(ds) == 0 {
				<-ctx.Done()
				return nil
			}
			pub := &capacity.Publisher{Client: client, Namespace: podNamespace(), Node: node, Drivers: ds, Poll: f.poll,
				Owner: capacity.PodOwner(os.Getenv("POD_NAME"), os.Getenv("POD_UID"))}
			if pub.Owner == nil {
				klog.InfoS("POD_NAME or POD_UID unset: CSIStorageCapacity objects have no owner and outlive this pod")
			}
			return pub.Run(ctx, inf)
		})
	}
}

// hasGetCapacity: the driver reports capacity (GET_CAPACITY); a failed
// lookup is retried until it answers or ctx ends.
func hasGetCapacity(ctx context.Context, caps *capability.Cache, p nodeplugin.Plugin) bool {
	for wait := time.Second; ; wait = min(2*wait, time.Minute) {
		s, err := caps.Get(ctx, p.Name, p.Driver)
		if err == nil {
			return s.Controller(csi.ControllerServiceCapability_RPC_GET_CAPACITY)
		}
		klog.ErrorS(err, "Cannot read the driver's capabilities; retrying", "driver", p.Name, "in", wait)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(wait):
		}
	}
}

// snapshots runs the embedded csi-snapshotter (and, with
// --snapshot-controller, the snapshot-controller) until ctx is done, once
// the snapshot CRDs are served. node is the node role's node (empty in the
// controller's); add, if set, receives the sidecar to run the drivers that
// come and go (flex).
func (f *sidecarFlags) snapshots(ctx context.Context, client kubernetes.Interface, snap snapclient.Interface, caps *capability.Cache, plugins []nodeplugin.Plugin, node string, add func(*snapshotter.Sidecar)) error {
	if !f.snapshot && !f.snapshotController {
		<-ctx.Done()
		return nil
	}
	for wait := 5 * time.Second; ; wait = min(2*wait, 5*time.Minute) {
		err := snapshotter.CheckCRDs(ctx, snap)
		if err == nil {
			break
		}
		klog.InfoS("Snapshots wait for their API", "err", err, "retry", wait)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
	g, ctx := errgroup.WithContext(ctx)
	// The group lives as long as the role: with no driver of its own yet
	// (flex drivers only), the sidecar's informers must still run for them.
	g.Go(func() error { <-ctx.Done(); return nil })
	if f.snapshotController {
		g.Go(func() error { return snapshotter.RunController(ctx, client, snap) })
	}
	if f.snapshot {
		sc, err := snapshotter.NewSidecar(ctx, client, snap, snapshotter.Options{Node: node, Capabilities: caps})
		if err != nil {
			return err
		}
		for _, p := range plugins {
			g.Go(func() error { return sc.Run(ctx, p.Name, p.Driver) })
		}
		if add != nil {
			add(sc)
		}
	}
	return g.Wait()
}
