// Package testbin builds the monocsi binary for tests that run it as a real
// process, and starts it with its log captured for failure reports.
package testbin

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// Build compiles cmd/monocsi once per test process into bin/monocsi-test and
// returns its path. When $MONOCSI_TEST_BIN names an existing file, that
// prebuilt binary is used instead: test binaries run where there is no Go
// toolchain (make e2e-nfs runs them inside a VM).
func Build(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		if p := os.Getenv("MONOCSI_TEST_BIN"); p != "" {
			if _, buildErr = os.Stat(p); buildErr == nil {
				binPath = p
			}
			return
		}
		_, file, _, _ := runtime.Caller(0)
		repo := filepath.Join(filepath.Dir(file), "..", "..")
		// bin/ of the checkout (git-ignored): nothing left in /tmp.
		binPath = filepath.Join(repo, "bin", "monocsi-test")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/monocsi")
		cmd.Dir = repo
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// Process is a running monocsi.
type Process struct {
	cmd    *exec.Cmd
	log    *syncWriter
	exited chan struct{} // closed when the process has ended
	err    error         // its exit error, valid once exited is closed
}

// started holds the PIDs of the monocsi processes Start runs, while they run.
var started sync.Map

// Started reports whether pid is a monocsi process Start runs (whatever its
// executable: $MONOCSI_TEST_BIN may exec the image's binary in a chroot).
func Started(pid int) bool {
	_, ok := started.Load(pid)
	return ok
}

// Start runs monocsi with args; it is stopped with SIGTERM at test cleanup,
// and its log is printed if the test failed.
func Start(t testing.TB, args ...string) *Process {
	t.Helper()
	return StartEnv(t, nil, args...)
}

// StartEnv is Start with env added to the process's environment.
func StartEnv(t testing.TB, env []string, args ...string) *Process {
	t.Helper()
	p := &Process{cmd: exec.Command(Build(t), args...), log: &syncWriter{w: &bytes.Buffer{}}, exited: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	// Ends with the test process even when that dies without its cleanup
	// (a panic, a timeout): no orphaned monocsi left holding mounts.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	started.Store(p.cmd.Process.Pid, true)
	go func() { p.err = p.cmd.Wait(); close(p.exited); started.Delete(p.cmd.Process.Pid) }()
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Errorf("monocsi did not stop cleanly: %v", err)
		}
		if t.Failed() {
			t.Logf("monocsi log:\n%s", p.Log())
		}
	})
	return p
}

// Stop sends SIGTERM and waits for the exit (SIGKILL after 15 s). A process
// that had already exited is the caller's business (see Exited): nil.
func (p *Process) Stop() error {
	if _, exited := p.Exited(0); exited {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if err, exited := p.Exited(15 * time.Second); exited {
		return err
	}
	_ = p.cmd.Process.Kill()
	<-p.exited
	return fmt.Errorf("killed after 15 s")
}

// Exited waits up to wait for the process to end and returns its exit error.
func (p *Process) Exited(wait time.Duration) (err error, exited bool) {
	select {
	case <-p.exited:
		return p.err, true
	default:
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-p.exited:
		return p.err, true
	case <-t.C:
		return nil, false
	}
}

// Signal sends sig to the process.
func (p *Process) Signal(sig syscall.Signal) error { return p.cmd.Process.Signal(sig) }

// Log returns what the process printed so far.
func (p *Process) Log() string { return p.log.String() }

// WaitForSocket waits until a Unix socket at path accepts connections.
func WaitForSocket(ctx context.Context, t testing.TB, path string) {
	t.Helper()
	for {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("socket %s never came up", path)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.String()
}
