package driver

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Work that outlives its call keeps the id locked until it ends.
func TestLockHeldByAbandonedWork(t *testing.T) {
	var l Locks
	k, err := l.Acquire("v")
	if err != nil {
		t.Fatal(err)
	}
	work := k.Hold()
	k.Release()
	k.Release() // idempotent
	if _, err := l.TryLock("v"); status.Code(err) != codes.Aborted {
		t.Fatalf("retry while abandoned work runs: %v, want Aborted", err)
	}
	if unlock, err := l.TryLock("other"); err != nil {
		t.Fatalf("another id: %v", err)
	} else {
		unlock()
	}
	work()
	work()
	unlock, err := l.TryLock("v")
	if err != nil {
		t.Fatalf("retry after the work ended: %v", err)
	}
	unlock()
	var none *Lock
	none.Hold()() // no lock, no-op
}

func TestWaitForAbandonedWork(t *testing.T) {
	var l Locks
	if err := l.Wait(context.Background()); err != nil {
		t.Fatalf("Wait with nothing held: %v", err)
	}
	k, err := l.Acquire("v")
	if err != nil {
		t.Fatal(err)
	}
	work := k.Hold()
	k.Release() // the call returned; its work goes on
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := l.Wait(ctx); err == nil {
		t.Fatal("Wait returned while abandoned work held the lock")
	}
	done := make(chan error)
	go func() { done <- l.Wait(context.Background()) }()
	work()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not return once the work ended")
	}
}
