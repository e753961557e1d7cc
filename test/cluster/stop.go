package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"
)

// Stop stops everything Start started: the kubelet first, then the
// containers (through their shims), then containerd and the control plane;
// unmounts whatever is left under the run directory and, unless keepLogs,
// removes the directory. With keepLogs only the logs directory is kept.
func (c *Cluster) Stop(keepLogs bool) error {
	var errs []error
	if err := c.stopProc("kubelet", 15*time.Second); err != nil {
		errs = append(errs, err)
	}
	c.deleteTasks()
	if err := killContainers(c.ContainerdSock); err != nil {
		errs = append(errs, err)
	}
	for _, name := range []string{"containerd", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"} {
		if err := c.stopProc(name, 10*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range c.Procs { // anything else a caller started through spawn
		if err := terminate(p.PID, p.Bin, 10*time.Second); err != nil {
			errs = append(errs, fmt.Errorf("stop %s: %w", p.Name, err))
		}
	}
	c.Procs = nil
	if err := unmountUnder(c.Dir); err != nil {
		errs = append(errs, err)
	}
	if err := c.removeKubeletLeftovers(); err != nil {
		errs = append(errs, err)
	}
	if err := removeRunDir(c.Dir, keepLogs); err != nil {
		errs = append(errs, err)
	}
	if c.machine != nil {
		c.machine.Close() // another run's cluster may start now
	}
	return errors.Join(errs...)
}

// deleteTasks has containerd kill and delete every container, so their shims
// exit cleanly and remove their sockets (under /run/containerd/s, a path the
// shims do not let us choose).
func (c *Cluster) deleteTasks() {
	ctr := func(args ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, _ := exec.CommandContext(ctx, "ctr", append([]string{"--address", c.ContainerdSock, "-n", "k8s.io"}, args...)...).Output()
		return string(out)
	}
	if _, err := os.Stat(c.ContainerdSock); err != nil {
		return
	}
	for _, id := range strings.Fields(ctr("tasks", "ls", "-q")) {
		ctr("tasks", "delete", "--force", id)
	}
}

// removeKubeletLeftovers removes what the kubelet and the shims write outside
// the run directory whatever they are told: container log links in
// /var/log/containers pointing into the run directory, empty shim socket
// directories, and /var/lib/kubelet/device-plugins when this run created it.
func (c *Cluster) removeKubeletLeftovers() error {
	links, _ := filepath.Glob("/var/log/containers/*.log")
	for _, l := range links {
		if dest, err := os.Readlink(l); err == nil && strings.HasPrefix(dest, c.Dir+"/") {
			if err := os.Remove(l); err != nil {
				return err
			}
		}
	}
	// Shims put their sockets in /run/containerd/s whatever containerd's
	// state directory; remove the directories if that left them empty.
	os.Remove("/run/containerd/s")
	os.Remove("/run/containerd")
	if c.CreatedVarLibKubelet {
		sock := "/var/lib/kubelet/device-plugins/kubelet.sock"
		if fi, err := os.Lstat(sock); err == nil && fi.Mode()&os.ModeSocket != 0 {
			os.Remove(sock)
		}
		// Only empty directories: never anything another kubelet put there.
		os.Remove("/var/lib/kubelet/device-plugins")
		os.Remove("/var/lib/kubelet")
	}
	return nil
}

// killContainers kills the shims of this cluster's containerd and every
// process below them, and waits until they are gone.
func killContainers(containerdSock string) error {
	pids := shims(containerdSock)
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(15 * time.Second)
	for _, pid := range pids {
		for !zombie(pid) {
			if time.Now().After(deadline) {
				return fmt.Errorf("container process %d survived SIGKILL", pid)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

// unmountUnder unmounts every mount at or below dir, deepest first. The
// containers are gone, so a busy mount gets a lazy unmount.
func unmountUnder(dir string) error {
	var lastErr error
	for range 5 {
		mps, err := mount.New("").List()
		if err != nil {
			return err
		}
		var under []string
		for _, mp := range mps {
			if mp.Path == dir || strings.HasPrefix(mp.Path, dir+"/") {
				under = append(under, mp.Path)
			}
		}
		if len(under) == 0 {
			return nil
		}
		sort.Slice(under, func(i, j int) bool { return len(under[i]) > len(under[j]) })
		for _, p := range under {
			if err := unix.Unmount(p, 0); err != nil {
				lastErr = unix.Unmount(p, unix.MNT_DETACH)
			}
		}
	}
	return fmt.Errorf("mounts left under %s: %v", dir, lastErr)
}

func removeRunDir(dir string, keepLogs bool) error {
	if !keepLogs {
		return os.RemoveAll(dir)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.Name() != "logs" {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}
