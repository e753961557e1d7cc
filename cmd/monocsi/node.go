package main

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/monocsi/monocsi/driver/flex/supervisor"
	"github.com/monocsi/monocsi/health"
	"github.com/monocsi/monocsi/internal/capability"
	"github.com/monocsi/monocsi/internal/kube"
	"github.com/monocsi/monocsi/internal/opmetrics"
	"github.com/monocsi/monocsi/internal/textpages"
	"github.com/monocsi/monocsi/nodeplugin"
	"github.com/monocsi/monocsi/provisioner"
	"github.com/monocsi/monocsi/registrar"
)

// runNode is the node role: every enabled driver's CSI socket for the
// kubelet, its registration with the kubelet, and /healthz.
func runNode(ctx context.Context, args []string) error {
	fs := newFlags("node")
	var df driverFlags
	df.register(fs, true)
	kubeletDir := fs.String("kubelet-dir", "/var/lib/kubelet", "the kubelet's root directory, at the same path inside the container as on the host")
	drivers := fs.String("drivers", "local", "comma-separated drivers to enable")
	httpEndpoint := fs.String("http-endpoint", "", "address (e.g. :9808) to serve /healthz and /metrics on; empty disables it")
	provision := fs.Bool("provision", true, "keep the CSIDriver objects of node-local drivers and provision their volumes for claims scheduled to this node (needs the Kubernetes API)")
	extraMetadata := fs.Bool("extra-create-metadata", true, "pass the claim's name and namespace and the PV name to CreateVolume (csi.storage.k8s.io/pvc/name, ...)")
	var kf kube.Flags
	kf.Register(fs)
	var ff flexFlags
	ff.register(fs)
	sf := registerSidecarFlags(fs, true)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if !filepath.IsAbs(*kubeletDir) {
		return fmt.Errorf("--kubelet-dir %q must be an absolute path", *kubeletDir)
	}
	plugins, err := df.build(strings.Split(*drivers, ","))
	if err != nil {
		return err
	}

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return nodeplugin.Run(ctx, *kubeletDir, plugins) })
	go textpages.ReleaseAfterStart(ctx)
	regFailed := make(chan error, len(plugins))
	g.Go(func() error {
		select {
		case err := <-regFailed:
			return err
		case <-ctx.Done():
			return nil
		}
	})
	var checks []health.Check
	for _, p := range plugins {
		sock := nodeplugin.SocketPath(*kubeletDir, p.Name)
		reg := &registrar.Registrar{
			Driver:   p.Name,
			Endpoint: sock,
			Socket:   registrar.SocketPath(*kubeletDir, p.Name),
			OnFailure: func(err error) {
				select { // the first failure ends the process; never block the kubelet's call
				case regFailed <- err:
				default:
				}
			},
		}
		g.Go(func() error { return reg.Run(ctx) })
		probe, err := health.ProbeSocket(p.Name, sock)
		if err != nil {
			return err
		}
		checks = append(checks, probe, health.Check{Name: p.Name + " registration",
			Run: func(context.Context) error { return reg.Healthy() }})
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(opmetrics.Operations)
	var client kubernetes.Interface
	if *provision {
		if client, err = kf.Client(); err != nil {
			return fmt.Errorf("%w (run with --provision=false to serve volumes without provisioning)", err)
		}
		var local []nodeplugin.Plugin
		for _, p := range plugins {
			if p.NodeLocal {
				local = append(local, p)
			}
		}
		snap, err := kf.SnapshotClient()
		if err != nil {
			return err
		}
		// The node's one cache: only its own Node, CSINode, claims and PVs.
		inf := kube.NodeInformers(ctx, client, df.nodeID)
		// The API server may be unreachable when a node boots: keep serving
		// the kubelet (existing volumes must mount) and retry until it answers.
		g.Go(func() error {
			for wait := time.Second; ; wait = min(2*wait, time.Minute) {
				provs, err := provisioners(ctx, client, snap, &capability.Cache{}, local, df.nodeID, *extraMetadata)
				if err == nil {
					if err := provisioner.Filter(inf, provs, nil); err != nil {
						return err
					}
					// Resizer and capacity once the caches are filtered and filled.
					return provisioner.Run(ctx, client, inf, provs, provisioner.NodeWorkers, reg, sf.startNode(ctx, g, client, snap, inf, local, df.nodeID))
				}
				klog.ErrorS(err, "Cannot start provisioning yet; retrying", "in", wait)
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(wait):
				}
			}
		})
	}
	// FlexVolume drivers: served and registered here; their CSIDriver
	// objects are the controller's, only checked here (client nil: not).
	flexNode := &supervisor.Node{KubeletDir: *kubeletDir, NodeID: df.nodeID, Client: client}
	g.Go(func() error { return ff.watch(ctx, df.nodeID, flexNode.Serve) })
	if *httpEndpoint != "" {
		mux := http.NewServeMux()
		mux.Handle("/healthz", health.Handler(5*time.Second, checks...))
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		g.Go(func() error { return health.Serve(ctx, *httpEndpoint, mux) })
	}
	klog.InfoS("Node role started", "node", df.nodeID, "drivers", len(plugins), "kubeletDir", *kubeletDir)
	err = g.Wait()
	klog.InfoS("Node role stopped", "error", err)
	return err
}
