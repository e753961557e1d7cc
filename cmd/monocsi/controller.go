package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/monocsi/monocsi/attacher"
	"github.com/monocsi/monocsi/driver/flex"
	"github.com/monocsi/monocsi/driver/flex/supervisor"
	"github.com/monocsi/monocsi/health"
	"github.com/monocsi/monocsi/internal/capability"
	"github.com/monocsi/monocsi/internal/kube"
	"github.com/monocsi/monocsi/internal/leader"
	"github.com/monocsi/monocsi/internal/opmetrics"
	"github.com/monocsi/monocsi/internal/textpages"
	"github.com/monocsi/monocsi/nodeplugin"
	"github.com/monocsi/monocsi/provisioner"
	"github.com/monocsi/monocsi/snapshotter"
)

// runController is the controller role: while it leads (one Lease for the
// whole process), it keeps the CSIDriver objects of the enabled drivers and
// provisions their volumes. Node-local drivers are provisioned by the node
// role instead.
func runController(ctx context.Context, args []string) error {
	fs := newFlags("controller")
	var df driverFlags
	df.register(fs, false)
	drivers := fs.String("drivers", "", "comma-separated drivers to provision for (node-local ones such as local are provisioned by the node role)")
	httpEndpoint := fs.String("http-endpoint", "", "address (e.g. :9809) to serve /healthz and /metrics on; empty disables it")
	extraMetadata := fs.Bool("extra-create-metadata", true, "pass the claim's name and namespace and the PV name to CreateVolume")
	var kf kube.Flags
	kf.Register(fs)
	var ff flexFlags
	ff.register(fs)
	sf := registerSidecarFlags(fs, false)
	elect := fs.Bool("leader-election", true, "elect a leader among replicas through a Lease; only the leader acts")
	var lc leader.Config
	fs.StringVar(&lc.Namespace, "leader-election-namespace", "", "namespace of the Lease; default: the pod's namespace")
	fs.StringVar(&lc.Name, "leader-election-lease-name", "monocsi-controller", "name of the Lease")
	fs.DurationVar(&lc.LeaseDuration, "leader-election-lease-duration", 15*time.Second, "how long a non-leader waits before taking over an expired lease")
	fs.DurationVar(&lc.RenewDeadline, "leader-election-renew-deadline", 10*time.Second, "how long the leader retries renewing before giving up")
	fs.DurationVar(&lc.RetryPeriod, "leader-election-retry-period", 5*time.Second, "how often to try to acquire or renew the lease")
	fs.DurationVar(&lc.ActTimeout, "act-timeout", time.Minute, "how long a leader retries starting its work (CSIDriver objects, caches) before it releases the lease and exits")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if df.nodeID == "" {
		df.nodeID = "controller" // drivers that need a node ID only use it on nodes
	}
	var central []nodeplugin.Plugin
	if *drivers != "" {
		plugins, err := df.build(strings.Split(*drivers, ","))
		if err != nil {
			return err
		}
		for _, p := range plugins {
			if p.NodeLocal {
				return fmt.Errorf("driver %s is node-local: the node role provisions it (monocsi node), not the controller", p.Name)
			}
			central = append(central, p)
		}
	}
	client, err := kf.Client()
	if err != nil {
		return err
	}
	snap, err := kf.SnapshotClient()
	if err != nil {
		return err
	}
	leaseClient, err := kf.LeaseClient()
	if err != nil {
		return err
	}
	if lc.Namespace == "" {
		lc.Namespace = podNamespace()
	}
	elector := leader.New(leaseClient, lc)
	reg := prometheus.NewRegistry()
	reg.MustRegister(opmetrics.Operations)
	reg.MustRegister(leader.Collectors()...)
	g, ctx := errgroup.WithContext(ctx)
	go textpages.ReleaseAfterStart(ctx)
	if *httpEndpoint != "" {
		mux := http.NewServeMux()
		mux.Handle("/healthz", health.Handler(5*time.Second, health.Check{Name: "controller", Run: elector.Healthy}))
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		g.Go(func() error { return health.Serve(ctx, *httpEndpoint, mux) })
	}
	// One cache of the cluster and of drivers' capabilities for every role
	// of the process. The informers start with the leader's work (a standby
	// caches nothing) and run until the process ends, across retried starts.
	inf := kube.NewInformers(ctx, client)
	caps := &capability.Cache{}
	filtered := false // attempts of the work run one after the other
	// work returns only when every worker has: the Lease is released after.
	work := func(ctx context.Context, acting func()) error {
		provs, err := provisioners(ctx, client, snap, caps, central, "", *extraMetadata)
		if err != nil {
			return err
		}
		// Claims and PVs of the drivers provisioned here, and PVs the
		// attacher put its finalizer on: not the cluster's.
		if !filtered {
			if err := provisioner.Filter(inf, provs, attacher.Keeps); err != nil {
				return err
			}
			filtered = true
		}
		// The provisioners and the attacher report their caches filled.
		pending := atomic.Int32{}
		pending.Store(2)
		synced := func() {
			if pending.Add(-1) == 0 {
				acting()
			}
		}
		// FlexVolume drivers that attach are attached here, as the
		// kube-controller-manager did: the executables must be on this node.
		att := attacher.New(client, inf, caps)
		// Flex drivers get the snapshotter too, once it runs: none can take
		// snapshots, and their VolumeSnapshots must say so.
		snapReady := make(chan struct{})
		var snapper *snapshotter.Sidecar
		g, ctx := errgroup.WithContext(ctx)
		g.Go(func() error { return att.Run(ctx, 10, synced) })
		g.Go(func() error {
			return ff.watch(ctx, df.nodeID, func(ctx context.Context, name string, d *flex.Driver) error {
				if d.Attach() {
					att.Add(name, d)
					defer att.Remove(name, d)
				}
				var snapping sync.WaitGroup
				defer snapping.Wait()
				snapping.Go(func() {
					select {
					case <-snapReady:
						_ = snapper.Run(ctx, name, d)
					case <-ctx.Done():
					}
				})
				// The controller is the one writer of flex drivers' CSIDriver objects.
				supervisor.KeepCSIDriver(ctx, client, name, d)
				<-ctx.Done()
				return nil
			})
		})
		g.Go(func() error { return provisioner.Run(ctx, client, inf, provs, provisioner.Workers, reg, synced) })
		g.Go(func() error { return sf.runResizer(ctx, client, inf, caps, central) })
		g.Go(func() error {
			return sf.snapshots(ctx, client, snap, caps, central, "", func(s *snapshotter.Sidecar) {
				snapper = s
				close(snapReady)
			})
		})
		return g.Wait()
	}
	g.Go(func() error {
		if !*elect {
			return elector.RunAlone(ctx, work)
		}
		return elector.Run(ctx, work)
	})
	return g.Wait()
}

// podNamespace is the namespace the pod runs in, from its service account.
func podNamespace() string {
	if b, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace"); err == nil && len(b) > 0 {
		return strings.TrimSpace(string(b))
	}
	return "monocsi"
}
