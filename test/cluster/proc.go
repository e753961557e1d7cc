package cluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// proc is a process the cluster started. Bin is checked against
// /proc/<pid>/exe before any signal, so a reused PID is never touched.
type proc struct {
	Name string   `json:"name"`
	PID  int      `json:"pid"`
	Bin  string   `json:"bin"`
	Args []string `json:"args"`
}

// spawn starts bin in its own session (it outlives an `up` command that
// exits), with output to <logs>/<name>.log.
func (c *Cluster) spawn(name, bin string, args ...string) error {
	logf, err := os.OpenFile(filepath.Join(c.Logs, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	go func() { _ = cmd.Wait() }() // reap it if it dies while we run
	c.Procs = append(c.Procs, proc{Name: name, PID: cmd.Process.Pid, Bin: bin, Args: args})
	return c.save()
}

func (c *Cluster) find(name string) (int, *proc) {
	for i := range c.Procs {
		if c.Procs[i].Name == name {
			return i, &c.Procs[i]
		}
	}
	return -1, nil
}

// stopProc stops one named process (SIGTERM, SIGKILL after grace) and forgets it.
func (c *Cluster) stopProc(name string, grace time.Duration) error {
	i, p := c.find(name)
	if p == nil {
		return nil
	}
	if err := terminate(p.PID, p.Bin, grace); err != nil {
		return fmt.Errorf("stop %s: %w", name, err)
	}
	c.Procs = append(c.Procs[:i], c.Procs[i+1:]...)
	return c.save()
}

// running reports whether pid is still the process of bin.
func running(pid int, bin string) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return false
	}
	exe = strings.TrimSuffix(exe, " (deleted)")
	return exe == bin || filepath.Base(exe) == filepath.Base(bin)
}

func terminate(pid int, bin string, grace time.Duration) error {
	if !running(pid, bin) {
		return nil
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !running(pid, bin) || zombie(pid) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for range 100 {
		if !running(pid, bin) || zombie(pid) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("still running after SIGKILL")
}

func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && len(s) > i+2 && s[i+2] == 'Z'
}

// shims returns the PIDs of the containerd shims serving this cluster's
// containerd (their command line names its socket) and all their
// descendants: the containers.
func shims(containerdSock string) []int {
	entries, _ := os.ReadDir("/proc")
	parent := map[int][]int{}
	var roots []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if stat, err := os.ReadFile("/proc/" + e.Name() + "/stat"); err == nil {
			s := string(stat)
			if i := strings.LastIndexByte(s, ')'); i > 0 {
				f := strings.Fields(s[i+1:])
				if len(f) > 1 {
					ppid, _ := strconv.Atoi(f[1])
					parent[ppid] = append(parent[ppid], pid)
				}
			}
		}
		cmdline, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		args := strings.Split(string(cmdline), "\x00")
		if len(args) > 0 && strings.Contains(args[0], "containerd-shim") {
			for i := 0; i+1 < len(args); i++ {
				if args[i] == "-address" && args[i+1] == containerdSock {
					roots = append(roots, pid)
				}
			}
		}
	}
	var all []int
	var walk func(int)
	walk = func(pid int) {
		all = append(all, pid)
		for _, ch := range parent[pid] {
			walk(ch)
		}
	}
	for _, r := range roots {
		walk(r)
	}
	return all
}
