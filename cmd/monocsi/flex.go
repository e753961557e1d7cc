package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/monocsi/monocsi/csidriver"
	"github.com/monocsi/monocsi/driver/flex"
	"github.com/monocsi/monocsi/internal/flexdir"
	"github.com/monocsi/monocsi/internal/version"
	"github.com/monocsi/monocsi/nodeplugin"
	"github.com/monocsi/monocsi/registrar"
)

// flexFlags configure the FlexVolume adapter.
type flexFlags struct {
	dir     string
	names   string
	timeout time.Duration
}

func (f *flexFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.dir, "flex-dir", flex.DefaultDir, "directory holding FlexVolume drivers (<vendor~driver>/<driver>); each executable becomes a CSI driver; empty turns this off")
	fs.StringVar(&f.names, "flex-driver-names", "", "CSI names for FlexVolume drivers, overriding the derived <driver>.<vendor>.flex.monocsi.io: vendor~driver=name,...")
	fs.DurationVar(&f.timeout, "flex-timeout", 2*time.Minute, "how long a FlexVolume command may run (waitforattach: 10 minutes)")
}

// csiName is the CSI name of a driver directory.
func (f *flexFlags) csiName(dir string) (string, error) {
	for _, pair := range strings.Split(f.names, ",") {
		if k, v, ok := strings.Cut(strings.TrimSpace(pair), "="); ok && k == dir {
			return v, flex.ValidName(v)
		}
	}
	return flex.CSIName(dir)
}

// watch runs start for every FlexVolume executable found in the directory,
// with a context that ends when the executable is removed, until ctx ends.
// A driver whose init fails is tried again at the next rescan.
func (f *flexFlags) watch(ctx context.Context, nodeID string, start func(ctx context.Context, name string, d *flex.Driver)) error {
	if f.dir == "" {
		return nil
	}
	running := map[string]context.CancelFunc{} // by executable path
	defer func() {
		for _, cancel := range running {
			cancel()
		}
	}()
	onFound := func(found map[string]string) {
		present := map[string]bool{}
		for _, exe := range found {
			present[exe] = true
		}
		for exe, cancel := range running {
			if !present[exe] {
				klog.InfoS("FlexVolume driver removed", "executable", exe)
				cancel()
				delete(running, exe)
			}
		}
		for dir, exe := range found {
			if running[exe] != nil {
				continue
			}
			name, err := f.csiName(dir)
			if err != nil {
				klog.ErrorS(err, "FlexVolume driver skipped", "executable", exe)
				continue
			}
			d, err := flex.New(ctx, flex.Config{Name: name, Exe: exe, NodeID: nodeID, Timeout: f.timeout, Version: version.Version})
			if err != nil {
				klog.ErrorS(err, "FlexVolume driver not usable yet; retrying at the next rescan", "executable", exe)
				continue
			}
			klog.InfoS("FlexVolume driver found", "driver", name, "executable", exe, "attach", d.Attach())
			cctx, cancel := context.WithCancel(ctx)
			running[exe] = cancel
			go start(cctx, name, d)
		}
	}
	// A directory that cannot be watched (not mounted into the pod, say) must
	// not stop the role: the other drivers keep serving.
	for ctx.Err() == nil {
		if err := flexdir.Watch(ctx, f.dir, 30*time.Second, onFound); err != nil {
			klog.ErrorS(err, "Cannot watch the FlexVolume directory; retrying", "dir", f.dir)
		}
		select {
		case <-ctx.Done():
		case <-time.After(30 * time.Second):
		}
	}
	return nil
}

// serveFlexNode serves a FlexVolume driver to the kubelet: its CSI socket, its
// registration, and its CSIDriver object (attachRequired from init), until
// ctx ends, when the sockets go and the kubelet forgets the driver.
func serveFlexNode(ctx context.Context, kubeletDir string, client kubernetes.Interface, name string, d *flex.Driver) {
	sock := nodeplugin.SocketPath(kubeletDir, name)
	go func() {
		if err := nodeplugin.Serve(ctx, sock, name, d, false); err != nil {
			klog.ErrorS(err, "FlexVolume driver socket failed", "driver", name)
		}
	}()
	// Register once the socket is there: the kubelet connects right away.
	for i := 0; i < 100 && ctx.Err() == nil; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	reg := &registrar.Registrar{Driver: name, Endpoint: sock, Socket: registrar.SocketPath(kubeletDir, name),
		OnFailure: func(err error) { klog.ErrorS(err, "The kubelet rejected a FlexVolume driver", "driver", name) }}
	go func() {
		if err := reg.Run(ctx); err != nil {
			klog.ErrorS(err, "FlexVolume driver registration failed", "driver", name)
		}
	}()
	if client == nil {
		return
	}
	for wait := time.Second; ctx.Err() == nil; wait = min(2*wait, time.Minute) {
		err := csidriver.Ensure(ctx, client, name, d.Declare())
		if err == nil {
			return
		}
		klog.ErrorS(err, "Cannot write the CSIDriver object of a FlexVolume driver; retrying", "driver", name, "in", wait)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
}

// plugin is one FlexVolume driver of the directory, for `monocsi serve`.
func (f *flexFlags) plugin(ctx context.Context, dir, nodeID string) (nodeplugin.Plugin, error) {
	if dir == "" {
		return nodeplugin.Plugin{}, fmt.Errorf("--driver=flex needs --flex-driver=<vendor~driver>")
	}
	if nodeID == "" {
		return nodeplugin.Plugin{}, fmt.Errorf("--node-id (or $NODE_NAME) is required")
	}
	name, err := f.csiName(dir)
	if err != nil {
		return nodeplugin.Plugin{}, err
	}
	d, err := flex.New(ctx, flex.Config{Name: name, Exe: flex.Exe(f.dir, dir), NodeID: nodeID, Timeout: f.timeout, Version: version.Version})
	if err != nil {
		return nodeplugin.Plugin{}, err
	}
	return nodeplugin.Plugin{Name: name, Driver: d}, nil
}
