package driver

import (
	"testing"

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
