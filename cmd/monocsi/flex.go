package main

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/monocsi/monocsi/driver/flex"
	"github.com/monocsi/monocsi/driver/flex/supervisor"
	"github.com/monocsi/monocsi/internal/version"
	"github.com/monocsi/monocsi/nodeplugin"
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

// supervision configures the supervision of the drivers in --flex-dir.
func (f *flexFlags) supervision(nodeID string) supervisor.Config {
	return supervisor.Config{Dir: f.dir, Names: supervisor.ParseNames(f.names), Driver: f.config("", "", nodeID)}
}

// watch runs start for every FlexVolume executable in --flex-dir until ctx
// ends (see supervisor.Run).
func (f *flexFlags) watch(ctx context.Context, nodeID string, start supervisor.StartFunc) error {
	if f.dir == "" {
		return nil
	}
	if err := f.check(); err != nil {
		return err
	}
	supervisor.Run(ctx, f.supervision(nodeID), start)
	return nil
}

// plugin is one FlexVolume driver of the directory, for `monocsi serve`.
func (f *flexFlags) plugin(ctx context.Context, dir, nodeID string) (nodeplugin.Plugin, error) {
	if dir == "" {
		return nodeplugin.Plugin{}, fmt.Errorf("--driver=flex needs --flex-driver=<vendor~driver>")
	}
	if nodeID == "" {
		return nodeplugin.Plugin{}, fmt.Errorf("--node-id (or $NODE_NAME) is required")
	}
	c := f.supervision(nodeID)
	name, err := c.Name(dir)
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
