package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
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
	exec    string
	path    string
	mountNS string
	env     string
}

func (f *flexFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.dir, "flex-dir", flex.DefaultDir, "directory holding FlexVolume drivers (<vendor~driver>/<driver>); each executable becomes a CSI driver; empty turns this off")
	fs.StringVar(&f.names, "flex-driver-names", "", "CSI names for FlexVolume drivers, overriding the derived <driver>.<vendor>.flex.monocsi.io: vendor~driver=name,...")
	fs.DurationVar(&f.timeout, "flex-timeout", 2*time.Minute, "how long a FlexVolume command may run (waitforattach: 10 minutes)")
	fs.StringVar(&f.exec, "flex-exec", string(flex.ExecContainer), "where FlexVolume commands run: container (monocsi's own filesystem: the executable must be static or find its tools in the image) or host (through nsenter in the host's mount namespace, as the kubelet ran them: needs nsenter in the image, hostPID and a privileged container)")
	fs.StringVar(&f.path, "flex-path", flex.DefaultPath, "PATH of FlexVolume commands (the kubelet's), in either --flex-exec mode")
	fs.StringVar(&f.env, "flex-env", strings.Join(flex.DefaultEnv, ","), "comma-separated names of monocsi's environment variables FlexVolume commands get besides PATH (nothing else of the pod's environment reaches them)")
	fs.StringVar(&f.mountNS, "flex-mount-ns", flex.DefaultMountNS, "with --flex-exec=host: the mount namespace FlexVolume commands enter (the host's: its PID 1's)")
}

// config is the adapter's configuration for one executable.
func (f *flexFlags) config(name, exe, nodeID string) flex.Config {
	return flex.Config{Name: name, Exe: exe, NodeID: nodeID, Timeout: f.timeout, Version: version.Version,
		Exec: flex.ExecMode(f.exec), Path: f.path, MountNS: f.mountNS, Env: strings.Split(f.env, ",")}
}

// check validates the exec mode and, in host mode, that nsenter and the
// host's mount namespace can be had: a pod without hostPID fails at start
// with an error saying so, not at its first mount.
func (f *flexFlags) check() error {
	mode, err := flex.ParseExecMode(f.exec)
	if err != nil {
		return fmt.Errorf("--flex-exec: %w", err)
	}
	if mode == flex.ExecHost {
		if _, err := flex.CheckHostExec(f.mountNS); err != nil {
			return err
		}
	}
	return nil
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

// flexInstance is one running FlexVolume driver.
type flexInstance struct {
	name   string
	cancel context.CancelFunc
	done   chan struct{} // closed when it has stopped completely
	failed atomic.Bool   // init failed: it is tried again at the next rescan
}

// exeKey identifies an executable's file, so one replaced in place (an
// upgrade) is a new driver whose init is asked again.
func exeKey(exe string) (string, error) {
	fi, err := os.Stat(exe)
	if err != nil {
		return "", err
	}
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	return fmt.Sprintf("%s|%d|%d|%d", exe, ino, fi.ModTime().UnixNano(), fi.Size()), nil
}

// watch runs start for every FlexVolume executable found in the directory,
// with a context that ends when the executable is removed or replaced, until
// ctx ends. start must return only once everything it started has stopped.
// A driver whose init fails is tried again at the next rescan; init runs in
// the driver's own goroutine, so a hanging one holds up no other driver.
func (f *flexFlags) watch(ctx context.Context, nodeID string, start func(ctx context.Context, name string, d *flex.Driver)) error {
	if f.dir == "" {
		return nil
	}
	if err := f.check(); err != nil {
		return err
	}
	running := map[string]*flexInstance{} // by exeKey; only the watch goroutine touches it
	defer func() {
		for _, inst := range running {
			inst.cancel()
		}
		for _, inst := range running {
			<-inst.done
		}
	}()
	onFound := func(found map[string]string) {
		present := map[string]string{} // exeKey → driver directory
		for dir, exe := range found {
			if key, err := exeKey(exe); err == nil {
				present[key] = dir
			}
		}
		var stopping []*flexInstance
		for key, inst := range running {
			failed := inst.failed.Load()
			if _, ok := present[key]; ok && !failed {
				continue
			}
			if !failed {
				klog.InfoS("FlexVolume driver removed or replaced", "driver", inst.name)
			}
			inst.cancel()
			stopping = append(stopping, inst)
			delete(running, key)
		}
		names := map[string]bool{}
		for _, inst := range running {
			names[inst.name] = true
		}
		for key, dir := range present {
			if running[key] != nil {
				continue
			}
			name, err := f.csiName(dir)
			if err != nil {
				klog.ErrorS(err, "FlexVolume driver skipped", "dir", dir)
				continue
			}
			if names[name] {
				klog.ErrorS(nil, "Two FlexVolume directories map to one CSI driver name; skipped (see --flex-driver-names)", "dir", dir, "driver", name)
				continue
			}
			// The same driver stopping must be gone first: it removes its
			// sockets, which are the new one's.
			for _, old := range stopping {
				if old.name == name {
					<-old.done
				}
			}
			names[name] = true
			cctx, cancel := context.WithCancel(ctx)
			inst := &flexInstance{name: name, cancel: cancel, done: make(chan struct{})}
			running[key] = inst
			exe := found[dir]
			go func() {
				defer close(inst.done)
				d, err := flex.New(cctx, f.config(name, exe, nodeID))
				if err != nil {
					inst.failed.Store(true)
					klog.ErrorS(err, "FlexVolume driver not usable yet; retrying at the next rescan", "executable", exe)
					return
				}
				klog.InfoS("FlexVolume driver found", "driver", name, "executable", exe, "attach", d.Attach())
				start(cctx, name, d)
			}()
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
// ctx ends; it returns when the sockets are gone and the kubelet forgets
// the driver.
func serveFlexNode(ctx context.Context, kubeletDir string, client kubernetes.Interface, name string, d *flex.Driver) {
	var wg sync.WaitGroup
	defer wg.Wait()
	sock := nodeplugin.SocketPath(kubeletDir, name)
	wg.Go(func() {
		if err := nodeplugin.Serve(ctx, sock, name, d, false); err != nil {
			klog.ErrorS(err, "FlexVolume driver socket failed", "driver", name)
		}
	})
	// Register once the socket is there: the kubelet connects right away.
	for i := 0; i < 100 && ctx.Err() == nil; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	reg := &registrar.Registrar{Driver: name, Endpoint: sock, Socket: registrar.SocketPath(kubeletDir, name),
		OnFailure: func(err error) { klog.ErrorS(err, "The kubelet rejected a FlexVolume driver", "driver", name) }}
	wg.Go(func() {
		if err := reg.Run(ctx); err != nil {
			klog.ErrorS(err, "FlexVolume driver registration failed", "driver", name)
		}
	})
	for wait := time.Second; client != nil && ctx.Err() == nil; wait = min(2*wait, time.Minute) {
		err := csidriver.Ensure(ctx, client, name, d.Declare())
		if err == nil {
			break
		}
		klog.ErrorS(err, "Cannot write the CSIDriver object of a FlexVolume driver; retrying", "driver", name, "in", wait)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
	<-ctx.Done()
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
	if err := f.check(); err != nil {
		return nodeplugin.Plugin{}, err
	}
	d, err := flex.New(ctx, f.config(name, flex.Exe(f.dir, dir), nodeID))
	if err != nil {
		return nodeplugin.Plugin{}, err
	}
	return nodeplugin.Plugin{Name: name, Driver: d}, nil
}
