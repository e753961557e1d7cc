package main

import (
	"context"
	"flag"
	"os"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/monocsi/monocsi/capacity"
	"github.com/monocsi/monocsi/internal/capability"
	"github.com/monocsi/monocsi/internal/kube"
	"github.com/monocsi/monocsi/nodeplugin"
	"github.com/monocsi/monocsi/resizer"
)

// ResizeWorkers is how many claims the resizer handles at once
// (external-resizer's --workers default).
const ResizeWorkers = 10

// sidecarFlags switch the embedded external-resizer and (node role)
// storage capacity tracking.
type sidecarFlags struct {
	resize bool
	poll   time.Duration
}

// publishCapacity is the node role's --enable-capacity: the CSIDriver
// objects it writes say storageCapacity only when it publishes capacity.
var publishCapacity bool

// registerSidecarFlags adds the flags of the resizer and, with capacity
// (the node role), of capacity tracking.
func registerSidecarFlags(fs *flag.FlagSet, withCapacity bool) *sidecarFlags {
	f := &sidecarFlags{}
	fs.BoolVar(&f.resize, "enable-resizer", true, "expand the volumes of claims whose requested size grew (external-resizer's job)")
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
// publisher of the node-local drivers.
func (f *sidecarFlags) startNode(ctx context.Context, g *errgroup.Group, client kubernetes.Interface, inf *kube.Informers, plugins []nodeplugin.Plugin, node string) func() {
	return func() {
		caps := &capability.Cache{}
		g.Go(func() error { return f.runResizer(ctx, client, inf, caps, plugins) })
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
