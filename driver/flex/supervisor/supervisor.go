// Package supervisor runs one flex.Driver for every FlexVolume executable in
// a directory, as executables come and go: an executable that appears is
// started, one replaced in place (an upgrade) is stopped and started anew
// (its init is asked again), one removed is stopped, and one whose init
// fails is tried again at the next rescan. Two directories that map to one
// CSI driver name run once. It also holds what a role does with each
// driver: the node serves it to the kubelet (Node.Serve), the controller
// keeps its CSIDriver object (KeepCSIDriver).
package supervisor

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/monocsi/monocsi/driver/flex"
	"github.com/monocsi/monocsi/internal/flexdir"
)

// Config says where the executables are and how to run them.
type Config struct {
	// Dir is the FlexVolume directory (<Dir>/<vendor~driver>/<driver>);
	// empty: there is nothing to supervise.
	Dir string
	// Names are CSI names by driver directory (<vendor~driver>), overriding
	// the derived flex.CSIName (see ParseNames).
	Names map[string]string
	// Driver is every driver's configuration; Name and Exe are set for each.
	Driver flex.Config
	// Resync is how often the directory is scanned besides its changes,
	// and so how soon a driver whose init failed is tried again (30 s when
	// zero).
	Resync time.Duration
}

// ParseNames reads --flex-driver-names: "vendor~driver=name,...". A pair
// without "=" is ignored; names are checked when a driver uses them.
func ParseNames(s string) map[string]string {
	names := map[string]string{}
	for pair := range strings.SplitSeq(s, ",") {
		if k, v, ok := strings.Cut(strings.TrimSpace(pair), "="); ok {
			if _, dup := names[k]; !dup { // the first one counts
				names[k] = v
			}
		}
	}
	return names
}

// Name is the CSI name of a driver directory <vendor~driver>.
func (c *Config) Name(dir string) (string, error) {
	if name, ok := c.Names[dir]; ok {
		return name, flex.ValidName(name)
	}
	return flex.CSIName(dir)
}

// StartFunc runs one driver until ctx ends (the executable was removed or
// replaced, or the supervisor stops) and returns only once everything it
// started has stopped: the same driver's next instance reuses its sockets.
// An error returned before ctx ends counts as a failed init: the driver is
// started anew (init again) at the next rescan.
type StartFunc func(ctx context.Context, name string, d *flex.Driver) error

// Run calls start for every executable found in c.Dir, each in its own
// goroutine (a hanging init holds up no other driver), until ctx ends; it
// returns once every start has returned. A directory that cannot be watched
// (not mounted into the pod, say) is retried every resync: it must not stop
// the role, whose other drivers keep serving.
func Run(ctx context.Context, c Config, start StartFunc) {
	if c.Dir == "" {
		return
	}
	if c.Resync <= 0 {
		c.Resync = 30 * time.Second
	}
	s := &supervisor{c: c, start: start, running: map[string]*instance{}}
	defer s.stopAll()
	for ctx.Err() == nil {
		err := flexdir.Watch(ctx, c.Dir, c.Resync, func(found map[string]string) { s.sync(ctx, found) })
		if err != nil {
			klog.ErrorS(err, "Cannot watch the FlexVolume directory; retrying", "dir", c.Dir, "in", c.Resync)
		}
		select {
		case <-ctx.Done():
		case <-time.After(c.Resync):
		}
	}
}

// instance is one running driver.
type instance struct {
	name   string
	exe    string
	cancel context.CancelFunc
	done   chan struct{} // closed when it has stopped completely
	failed atomic.Bool   // init or start failed: started anew at the next rescan
}

type supervisor struct {
	c       Config
	start   StartFunc
	running map[string]*instance // by exeKey; only Run's goroutine touches it
}

// sync brings the running drivers in line with the executables found, by
// driver directory.
func (s *supervisor) sync(ctx context.Context, found map[string]string) {
	type candidate struct{ key, dir, exe string }
	var present []candidate
	keys := map[string]bool{}
	for dir, exe := range found {
		if key, err := exeKey(exe); err == nil {
			present = append(present, candidate{key, dir, exe})
			keys[key] = true
		}
	}
	// In directory order: of two directories with one CSI name, the same
	// one wins every time.
	slices.SortFunc(present, func(a, b candidate) int { return cmp.Compare(a.dir, b.dir) })

	var stopping []*instance
	for key, inst := range s.running {
		failed := inst.failed.Load()
		if keys[key] && !failed {
			continue
		}
		if !failed {
			klog.InfoS("FlexVolume driver removed or replaced", "driver", inst.name, "executable", inst.exe)
		}
		inst.cancel()
		stopping = append(stopping, inst)
		delete(s.running, key)
	}
	names := map[string]string{} // CSI name → executable running under it
	for _, inst := range s.running {
		names[inst.name] = inst.exe
	}
	for _, p := range present {
		if s.running[p.key] != nil {
			continue
		}
		name, err := s.c.Name(p.dir)
		if err != nil {
			klog.ErrorS(err, "FlexVolume driver skipped", "dir", p.dir)
			continue
		}
		if other, ok := names[name]; ok {
			klog.ErrorS(nil, "Two FlexVolume directories map to one CSI driver name; skipped (see --flex-driver-names)",
				"dir", p.dir, "driver", name, "running", other)
			continue
		}
		// The same driver stopping must be gone first: it removes its
		// sockets, which are the new one's.
		for _, old := range stopping {
			if old.name == name {
				<-old.done
			}
		}
		names[name] = p.exe
		s.running[p.key] = s.launch(ctx, name, p.exe)
	}
}

// launch starts one driver: init, then start, in a goroutine of its own.
func (s *supervisor) launch(ctx context.Context, name, exe string) *instance {
	ctx, cancel := context.WithCancel(ctx)
	inst := &instance{name: name, exe: exe, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(inst.done)
		c := s.c.Driver
		c.Name, c.Exe = name, exe
		d, err := flex.New(ctx, c)
		if err != nil {
			inst.failed.Store(true)
			if ctx.Err() == nil {
				klog.ErrorS(err, "FlexVolume driver not usable yet; retrying at the next rescan", "executable", exe, "in", s.c.Resync)
			}
			return
		}
		klog.InfoS("FlexVolume driver found", "driver", name, "executable", exe, "attach", d.Attach())
		if err := s.start(ctx, name, d); err != nil && ctx.Err() == nil {
			inst.failed.Store(true)
			klog.ErrorS(err, "FlexVolume driver stopped; starting it again at the next rescan", "driver", name, "in", s.c.Resync)
		}
	}()
	return inst
}

// stopAll stops every driver and waits for them.
func (s *supervisor) stopAll() {
	for _, inst := range s.running {
		inst.cancel()
	}
	for _, inst := range s.running {
		<-inst.done
	}
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
