package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/monocsi/monocsi/driver/flex"
)

// initReply is what a test executable's init answers.
func initReply(attach bool) string {
	return fmt.Sprintf(`echo '{"status":"Success","capabilities":{"attach":%v}}'`, attach)
}

// install writes a FlexVolume driver <flexDir>/<dir>/<driver> whose init
// runs initBody, appearing by rename in one step as a user installs one (a
// new file each time: an upgrade).
func install(t *testing.T, flexDir, dir, initBody string) string {
	t.Helper()
	_, drv, _ := strings.Cut(dir, "~")
	if err := os.MkdirAll(filepath.Join(flexDir, dir), 0o755); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(flexDir, dir, drv)
	tmp := filepath.Join(flexDir, dir, "."+drv+".tmp")
	s := "#!/bin/sh\nif [ \"$1\" = init ]; then\n" + initBody + "\nexit 0\nfi\necho '{\"status\":\"Not supported\"}'\n"
	if err := os.WriteFile(tmp, []byte(s), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, exe); err != nil {
		t.Fatal(err)
	}
	return exe
}

// recorder is a StartFunc reporting each start and stop, in order.
type recorder struct {
	events chan string
	// fail makes the next starts of a driver return an error at once.
	fail sync.Map // name → *atomic.Int32 (how many more starts fail)
}

func newRecorder() *recorder { return &recorder{events: make(chan string, 100)} }

func (r *recorder) start(ctx context.Context, name string, d *flex.Driver) error {
	r.events <- fmt.Sprintf("start %s attach=%v", name, d.Attach())
	if n, ok := r.fail.Load(name); ok && n.(*atomic.Int32).Add(-1) >= 0 {
		r.events <- "failed " + name
		return errors.New("serving failed")
	}
	<-ctx.Done()
	r.events <- "stop " + name
	return nil
}

// expect waits for the next event, which must be want.
func (r *recorder) expect(t *testing.T, want string) {
	t.Helper()
	select {
	case got := <-r.events:
		if got != want {
			t.Fatalf("event %q, want %q", got, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no event within 10 s, want %q", want)
	}
}

// quiet checks that nothing happens for a while (several rescans).
func (r *recorder) quiet(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case got := <-r.events:
		t.Fatalf("unexpected event %q", got)
	case <-time.After(d):
	}
}

const resync = 300 * time.Millisecond

// run starts the supervisor; the returned stop cancels it and checks that
// Run returned, with every driver stopped.
func run(t *testing.T, c Config, r *recorder) (stop func()) {
	t.Helper()
	if c.Resync == 0 {
		c.Resync = resync
	}
	c.Driver = flex.Config{NodeID: "n1", Timeout: 20 * time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, c, r.start)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return within 10 s of its context ending")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// An executable that appears is started; one replaced in place is stopped
// before its new version starts (init asked again); one removed is
// stopped; ending the context stops the rest and Run returns after them.
func TestAddReplaceRemove(t *testing.T) {
	flexDir := t.TempDir()
	r := newRecorder()
	stop := run(t, Config{Dir: flexDir}, r)
	const one, two = "one.acme.flex.monocsi.io", "two.acme.flex.monocsi.io"

	install(t, flexDir, "acme~one", initReply(true))
	r.expect(t, "start "+one+" attach=true")
	r.quiet(t, 3*resync) // rescans leave a running driver alone

	install(t, flexDir, "acme~one", initReply(false))
	r.expect(t, "stop "+one)
	r.expect(t, "start "+one+" attach=false")

	install(t, flexDir, "acme~two", initReply(true))
	r.expect(t, "start "+two+" attach=true")

	if err := os.RemoveAll(filepath.Join(flexDir, "acme~one")); err != nil {
		t.Fatal(err)
	}
	r.expect(t, "stop "+one)
	r.quiet(t, 3*resync)

	stop()
	r.expect(t, "stop "+two)
}

// A driver whose init fails is not started, and is tried again at every
// rescan until its init succeeds; one whose start fails is started anew.
func TestInitFailureRetried(t *testing.T) {
	flexDir, state := t.TempDir(), t.TempDir()
	marker, tries := filepath.Join(state, "ready"), filepath.Join(state, "tries")
	install(t, flexDir, "acme~late", fmt.Sprintf(`echo try >> %s
if [ ! -e %s ]; then echo '{"status":"Failure","message":"not ready"}'; exit 1; fi
%s`, tries, marker, initReply(false)))
	r := newRecorder()
	run(t, Config{Dir: flexDir}, r)

	r.quiet(t, 5*resync)
	b, _ := os.ReadFile(tries)
	if n := strings.Count(string(b), "try"); n < 2 {
		t.Fatalf("init tried %d times in %s, want it retried at each rescan (every %s)", n, 5*resync, resync)
	}
	// The directory does not change: the next rescan retries it.
	if err := os.WriteFile(marker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	r.expect(t, "start late.acme.flex.monocsi.io attach=false")
	r.quiet(t, 3*resync)
}

func TestStartFailureRetried(t *testing.T) {
	flexDir := t.TempDir()
	const name = "flaky.acme.flex.monocsi.io"
	r := newRecorder()
	n := &atomic.Int32{}
	n.Store(1)
	r.fail.Store(name, n)
	install(t, flexDir, "acme~flaky", initReply(true))
	run(t, Config{Dir: flexDir}, r)
	r.expect(t, "start "+name+" attach=true")
	r.expect(t, "failed "+name)
	r.expect(t, "start "+name+" attach=true")
	r.quiet(t, 3*resync)
}

// A hanging init holds up no other driver, and ending the context ends it.
func TestHangingInit(t *testing.T) {
	flexDir := t.TempDir()
	install(t, flexDir, "acme~slow", "sleep 60")
	install(t, flexDir, "acme~fast", initReply(false))
	r := newRecorder()
	stop := run(t, Config{Dir: flexDir}, r)
	r.expect(t, "start fast.acme.flex.monocsi.io attach=false")
	stop()
	r.expect(t, "stop fast.acme.flex.monocsi.io")
}

// Two directories that map to one CSI name: the first in directory order
// runs, the other is skipped at every rescan while it does, and takes over
// when it is removed. A name override that is no valid CSI name is skipped.
func TestDuplicateNames(t *testing.T) {
	t.Run("derived", func(t *testing.T) {
		flexDir := t.TempDir()
		const name = "drv.acme.flex.monocsi.io"
		// Both clean to drv.acme; "Acme~drv" sorts first.
		install(t, flexDir, "acme~drv", initReply(false))
		install(t, flexDir, "Acme~drv", initReply(true))
		r := newRecorder()
		run(t, Config{Dir: flexDir}, r)
		r.expect(t, "start "+name+" attach=true")
		r.quiet(t, 5*resync)

		if err := os.RemoveAll(filepath.Join(flexDir, "Acme~drv")); err != nil {
			t.Fatal(err)
		}
		r.expect(t, "stop "+name)
		r.expect(t, "start "+name+" attach=false")
		r.quiet(t, 3*resync)
	})
	t.Run("overrides", func(t *testing.T) {
		flexDir := t.TempDir()
		names := ParseNames("x~a=same.example.com, y~b=same.example.com,z~c=Not_Valid,x~a=ignored.example.com,junk")
		if want := map[string]string{"x~a": "same.example.com", "y~b": "same.example.com", "z~c": "Not_Valid"}; fmt.Sprint(names) != fmt.Sprint(want) {
			t.Fatalf("ParseNames = %v, want %v", names, want)
		}
		install(t, flexDir, "x~a", initReply(true))
		install(t, flexDir, "y~b", initReply(false))
		install(t, flexDir, "z~c", initReply(false))
		r := newRecorder()
		run(t, Config{Dir: flexDir, Names: names}, r)
		r.expect(t, "start same.example.com attach=true")
		r.quiet(t, 5*resync)
	})
}

// A directory that does not exist yet holds no driver; created later, its
// drivers are found (at the next rescan at the latest).
func TestDirectoryAppearsLater(t *testing.T) {
	flexDir := filepath.Join(t.TempDir(), "exec")
	r := newRecorder()
	run(t, Config{Dir: flexDir}, r)
	r.quiet(t, 2*resync)
	install(t, flexDir, "acme~late", initReply(true))
	r.expect(t, "start late.acme.flex.monocsi.io attach=true")
}

// No directory: nothing to supervise, Run returns at once.
func TestNoDirectory(t *testing.T) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(context.Background(), Config{}, func(context.Context, string, *flex.Driver) error {
			t.Error("started a driver without a directory")
			return nil
		})
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run without a directory did not return")
	}
}
