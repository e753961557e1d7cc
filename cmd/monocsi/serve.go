package main

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/monocsi/monocsi/health"
	"github.com/monocsi/monocsi/internal/endpoint"
	"github.com/monocsi/monocsi/nodeplugin"
)

// runServe serves one driver's complete CSI API (Identity, Controller, Node)
// on one endpoint, with no Kubernetes: for csi-sanity, debugging, and for
// running a monocsi driver under the standard CSI sidecars.
func runServe(ctx context.Context, args []string) error {
	fs := newFlags("serve")
	var df driverFlags
	df.register(fs, true)
	name := fs.String("driver", "local", "the driver to serve: local, nfs, or flex (with --flex-driver)")
	var ff flexFlags
	ff.register(fs)
	flexDriver := fs.String("flex-driver", "", "with --driver=flex: the FlexVolume driver directory (<vendor~driver>) in --flex-dir to serve")
	ep := fs.String("endpoint", "", "CSI endpoint, e.g. unix:///run/csi/csi.sock")
	httpEndpoint := fs.String("http-endpoint", "", "address (e.g. :9808) to serve /healthz on; empty disables it")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *ep == "" {
		return fmt.Errorf("--endpoint is required")
	}
	path, err := endpoint.Path(*ep)
	if err != nil {
		return err
	}
	var p nodeplugin.Plugin
	if *name == "flex" {
		if p, err = ff.plugin(ctx, *flexDriver, df.nodeID); err != nil {
			return err
		}
	} else {
		plugins, err := df.build([]string{*name})
		if err != nil {
			return err
		}
		p = plugins[0]
	}

	g, ctx := errgroup.WithContext(ctx)
	if *httpEndpoint != "" {
		probe, err := health.ProbeSocket(p.Name, path)
		if err != nil {
			return err
		}
		mux := http.NewServeMux()
		mux.Handle("/healthz", health.Handler(5*time.Second, probe))
		g.Go(func() error { return health.Serve(ctx, *httpEndpoint, mux) })
	}
	g.Go(func() error { return nodeplugin.Serve(ctx, path, p.Name, p.Driver, true) })
	return g.Wait()
}
