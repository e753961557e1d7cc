package leader

import (
	"context"
	"errors"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/monocsi/monocsi/internal/drain"
)

// These unit tests drive client-go's elector against a fake clientset; the
// e2e tests (test/e2e/controller_test.go) prove the same against a real API
// server with faults injected.

func testConfig() Config {
	return Config{Namespace: "ns", Name: "lease", LeaseDuration: 2 * time.Second, RenewDeadline: time.Second,
		RetryPeriod: 100 * time.Millisecond, ActTimeout: 3 * time.Second}
}

func holder(t *testing.T, c kubernetes.Interface) string {
	t.Helper()
	l, err := c.CoordinationV1().Leases("ns").Get(context.Background(), "lease", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// A leader whose work cannot start retries, reports itself unhealthy, and
// after ActTimeout releases the Lease and returns ErrCannotAct.
func TestStepsDownWhenItCannotAct(t *testing.T) {
	client := fake.NewClientset()
	e := New(client, testConfig())
	attempts := 0
	start := time.Now()
	errc := make(chan error, 1)
	go func() {
		errc <- e.Run(context.Background(), func(context.Context, func()) error {
			attempts++
			return errors.New("csidrivers is forbidden")
		})
	}()
	deadline := time.Now().Add(2 * time.Second)
	for e.Healthy(context.Background()) == nil {
		if time.Now().After(deadline) {
			t.Fatal("a leader that cannot act stayed healthy")
		}
		time.Sleep(10 * time.Millisecond)
	}
	var err error
	select {
	case err = <-errc:
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return")
	}
	if !errors.Is(err, ErrCannotAct) {
		t.Fatalf("Run: %v, want ErrCannotAct", err)
	}
	if took := time.Since(start); took < 2*time.Second || took > 3*time.Second+testConfig().LeaseDuration+time.Second {
		t.Errorf("stepped down after %s; ActTimeout is 3s", took)
	}
	if attempts < 2 {
		t.Errorf("%d attempts: a failed start must be retried", attempts)
	}
	if h := holder(t, client); h != "" {
		t.Errorf("the Lease is still held by %q after stepping down", h)
	}
}

// A start that hangs (caches that never fill) is cut off at ActTimeout.
func TestHangingStartTimesOut(t *testing.T) {
	client := fake.NewClientset()
	e := New(client, testConfig())
	errc := make(chan error, 1)
	go func() {
		errc <- e.Run(context.Background(), func(ctx context.Context, _ func()) error {
			<-ctx.Done()
			return ctx.Err()
		})
	}()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrCannotAct) {
			t.Fatalf("Run: %v, want ErrCannotAct", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("a start that never acts was not cut off")
	}
}

// A transient failure is retried, and once acting the replica is healthy.
// On shutdown the Lease is still held while the work winds down, and
// released once it has returned.
func TestRetriesThenReleasesOnlyAfterWorkReturns(t *testing.T) {
	client := fake.NewClientset()
	e := New(client, testConfig())
	ctx, cancel := context.WithCancel(context.Background())
	acted := make(chan struct{})
	stopping := make(chan struct{})
	finish := make(chan struct{})
	failures := 1
	errc := make(chan error, 1)
	go func() {
		errc <- e.Run(ctx, func(ctx context.Context, acting func()) error {
			if failures > 0 {
				failures--
				return errors.New("transient")
			}
			acting()
			close(acted)
			<-ctx.Done()
			close(stopping)
			<-finish // a worker still inside a driver call
			return nil
		})
	}()
	select {
	case <-acted:
	case <-time.After(10 * time.Second):
		t.Fatal("never acted after a transient failure")
	}
	if err := e.Healthy(ctx); err != nil {
		t.Errorf("acting replica unhealthy: %v", err)
	}
	cancel()
	<-stopping
	time.Sleep(3 * testConfig().RetryPeriod)
	if h := holder(t, client); h != e.id {
		t.Errorf("the Lease went to %q while a worker still ran", h)
	}
	close(finish)
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("Run after shutdown: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	if h := holder(t, client); h != "" {
		t.Errorf("the Lease is held by %q after shutdown", h)
	}
}

// Work that ends by itself while it should run ends the process, with the
// Lease released.
func TestWorkEndingIsAnError(t *testing.T) {
	client := fake.NewClientset()
	e := New(client, testConfig())
	errc := make(chan error, 1)
	go func() {
		errc <- e.Run(context.Background(), func(_ context.Context, acting func()) error {
			acting()
			time.Sleep(100 * time.Millisecond)
			return errors.New("informer failed")
		})
	}()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrWorkEnded) {
			t.Fatalf("Run: %v, want ErrWorkEnded", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return")
	}
	if h := holder(t, client); h != "" {
		t.Errorf("the Lease is held by %q", h)
	}
}

// A standby replica returns nil when stopped, never having run the work.
func TestStandbyStops(t *testing.T) {
	client := fake.NewClientset()
	first := New(client, testConfig())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	acting := make(chan struct{})
	go first.Run(ctx, func(ctx context.Context, a func()) error { a(); close(acting); <-ctx.Done(); return nil })
	<-acting
	second := New(client, testConfig())
	sctx, scancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		errc <- second.Run(sctx, func(context.Context, func()) error { t.Error("the standby ran the work"); return nil })
	}()
	time.Sleep(500 * time.Millisecond)
	scancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("standby Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("standby did not stop")
	}
}

// Work that outlived the wait for it keeps the Lease: it must expire only
// after the process, and the work with it, is gone.
func TestStuckWorkKeepsTheLease(t *testing.T) {
	client := fake.NewClientset()
	e := New(client, testConfig())
	ctx, cancel := context.WithCancel(context.Background())
	acted := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		errc <- e.Run(ctx, func(ctx context.Context, acting func()) error {
			acting()
			close(acted)
			<-ctx.Done()
			return drain.ErrStuck
		})
	}()
	<-acted
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, drain.ErrStuck) {
			t.Fatalf("Run: %v, want ErrStuck", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	if h := holder(t, client); h != e.id {
		t.Errorf("the Lease is held by %q; stuck work must keep it (%q)", h, e.id)
	}
}
