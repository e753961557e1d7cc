package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// ProcMem is one monocsi process's memory, from /proc/<pid>/status, in kB.
// RSS is RssAnon + RssFile + RssShmem: the anonymous part is the process's
// own (heap, stacks), the file part is mapped pages of the binary (shared
// with every process running the same file).
type ProcMem struct {
	Role string `json:"role"` // node, controller
	PID  int    `json:"pid"`
	RSS  int64  `json:"rssKB"`
	Anon int64  `json:"anonKB"`
	File int64  `json:"fileKB"`
	HWM  int64  `json:"hwmKB"` // peak RSS so far
	// CPUms is the CPU time (user + system) the process used so far.
	CPUms int64 `json:"cpuMs,omitempty"`
}

// MemPhase is the memory of every monocsi process at one point of the run.
type MemPhase struct {
	Name  string    `json:"name"`
	Procs []ProcMem `json:"procs"`
}

// Role returns the first process of role, or nil.
func (p MemPhase) Role(role string) *ProcMem {
	for i := range p.Procs {
		if p.Procs[i].Role == role {
			return &p.Procs[i]
		}
	}
	return nil
}

// monocsiProcs finds this cluster's monocsi processes: the binary named
// monocsi whose environment points at this cluster's API server (the
// chart's KUBERNETES_SERVICE_PORT). Other test clusters on the same
// machine run monocsi too.
func monocsiProcs(apiPort int) map[int]string {
	want := []byte("KUBERNETES_SERVICE_PORT=" + strconv.Itoa(apiPort) + "\x00")
	out := map[int]string{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		dir := filepath.Join("/proc", e.Name())
		if exe, err := os.Readlink(filepath.Join(dir, "exe")); err != nil || filepath.Base(exe) != "monocsi" {
			continue
		}
		env, err := os.ReadFile(filepath.Join(dir, "environ"))
		if err != nil || !bytes.Contains(env, want) {
			continue
		}
		cmd, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
		if args := strings.Split(string(cmd), "\x00"); len(args) > 1 {
			out[pid] = args[1]
		}
	}
	return out
}

// readMem reads the memory lines of /proc/<pid>/status.
func readMem(pid int, role string) (ProcMem, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ProcMem{}, err
	}
	m := ProcMem{Role: role, PID: pid}
	var shmem int64
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "RssAnon:":
			m.Anon = kb
		case "RssFile:":
			m.File = kb
		case "RssShmem:":
			shmem = kb
		case "VmHWM:":
			m.HWM = kb
		}
	}
	m.RSS = m.Anon + m.File + shmem
	m.CPUms = cpuMs(pid)
	return m, nil
}

// cpuMs is utime + stime of /proc/<pid>/stat in milliseconds (the kernel's
// clock ticks are 100 a second), 0 if unknown.
func cpuMs(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which may hold spaces: state is the
	// first, utime and stime the 12th and 13th.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	return (u + s) * 10
}

// sampleMem reads every monocsi process of the cluster, node role first.
func sampleMem(apiPort int) []ProcMem {
	var out []ProcMem
	for pid, role := range monocsiProcs(apiPort) {
		if m, err := readMem(pid, role); err == nil {
			out = append(out, m)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Role != out[j].Role {
			return out[i].Role > out[j].Role // node before controller
		}
		return out[i].PID < out[j].PID
	})
	return out
}

// settle samples the processes every 2 s until, after at least `least`, their
// total RSS moved by less than 1 MB over the last 10 s (informers have
// taken in what was created and the heap stopped growing), or until `most`.
func settle(apiPort int, name string, least, most time.Duration) MemPhase {
	start := time.Now()
	var totals []int64
	var last []ProcMem
	for {
		last = sampleMem(apiPort)
		var total int64
		for _, m := range last {
			total += m.RSS
		}
		totals = append(totals, total)
		if el := time.Since(start); el >= most {
			break
		} else if el >= least && len(totals) >= 6 {
			w := totals[len(totals)-6:]
			lo, hi := w[0], w[0]
			for _, t := range w {
				lo, hi = min(lo, t), max(hi, t)
			}
			if hi-lo < 1024 {
				break
			}
		}
		time.Sleep(2 * time.Second)
	}
	p := MemPhase{Name: name, Procs: last}
	fmt.Printf("    memory, %s (after %s):", name, time.Since(start).Round(time.Second))
	for _, m := range last {
		fmt.Printf(" %s %s (anon %s, file %s);", m.Role, mib(m.RSS), mib(m.Anon), mib(m.File))
	}
	fmt.Println()
	return p
}

// mib formats kB as MB (MiB, as /proc counts).
func mib(kb int64) string { return fmt.Sprintf("%.1f MB", float64(kb)/1024) }
