// Package health serves /healthz, replacing the livenessprobe sidecar: it is
// ok only when every driver's CSI socket answers Identity.Probe over gRPC with
// ready, and every extra check passes.
package health

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/klog/v2"
)

// Check is one named health condition.
type Check struct {
	Name string
	Run  func(ctx context.Context) error
}

// ProbeSocket checks that the CSI driver at the Unix socket path answers
// Probe and is ready. The connection is made once and reused.
func ProbeSocket(name, path string) (Check, error) {
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return Check{}, err
	}
	id := csi.NewIdentityClient(conn)
	return Check{Name: name, Run: func(ctx context.Context) error {
		resp, err := id.Probe(ctx, &csi.ProbeRequest{})
		if err != nil {
			return fmt.Errorf("probe %s: %w", path, err)
		}
		if r := resp.GetReady(); r != nil && !r.GetValue() {
			return fmt.Errorf("driver at %s is not ready", path)
		}
		return nil
	}}, nil
}

// Handler answers 200 "ok" when every check passes within timeout, else 500
// with one line per failing check.
func Handler(timeout time.Duration, checks ...Check) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		var failed []string
		for _, c := range checks {
			if err := c.Run(ctx); err != nil {
				failed = append(failed, c.Name+": "+err.Error())
			}
		}
		if len(failed) > 0 {
			klog.ErrorS(nil, "Health check failed", "failures", failed)
			http.Error(w, strings.Join(failed, "\n"), http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "ok")
	})
}

// Serve serves /healthz (and whatever else mux holds) on addr until ctx is done.
func Serve(ctx context.Context, addr string, mux *http.ServeMux) error {
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shut)
	}()
	klog.InfoS("Serving HTTP", "address", addr)
	if err := srv.ListenAndServe(); err != http.ErrServerClosed {
		return err
	}
	return nil
}
