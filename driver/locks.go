package driver

import (
	"context"
	"fmt"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Locks serialises operations on one volume. The CSI spec asks a plugin to
// answer ABORTED when an operation on the same volume is already running, so
// callers use TryLock rather than queueing behind each other.
type Locks struct {
	mu   sync.Mutex
	held map[string]int // id → holders: the call that took it and its work
	idle chan struct{}  // closed while nothing is held; nil: not yet made
}

// TryLock takes the lock for id, or returns an ABORTED status if it is held.
// The caller must call the returned function to release it.
func (l *Locks) TryLock(id string) (func(), error) {
	k, err := l.Acquire(id)
	if err != nil {
		return nil, err
	}
	return k.Release, nil
}

// Acquire takes the lock for id, or returns an ABORTED status if it is held.
// The caller must Release it; work it starts that may outlive the call takes
// a Hold first.
func (l *Locks) Acquire(id string) (*Lock, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held == nil {
		l.held = map[string]int{}
	}
	if l.held[id] > 0 {
		return nil, status.Errorf(codes.Aborted, "an operation on volume %s is already in progress", id)
	}
	l.held[id] = 1
	k := &Lock{l: l, id: id}
	k.Release = k.releaser()
	return k, nil
}

// Lock is a held lock. A call whose context ends returns at once, but work it
// left running (a removal or a copy going on through open descriptors) must
// keep the volume locked, or a retry would run beside it: such work takes a
// Hold, and the id is free only when the call has released it and every hold
// has ended.
type Lock struct {
	l  *Locks
	id string
	// Release ends the call's own hold; calling it again does nothing.
	Release func()
}

// Hold adds a holder and returns the function that ends it (idempotent).
// It must be called while the lock is held (before Release, or by a holder
// that has not ended). On a nil Lock (an operation that takes no lock) it
// does nothing.
func (k *Lock) Hold() (release func()) {
	if k == nil {
		return func() {}
	}
	k.l.mu.Lock()
	k.l.held[k.id]++
	k.l.mu.Unlock()
	return k.releaser()
}

// releaser ends one hold, once.
func (k *Lock) releaser() func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			k.l.mu.Lock()
			defer k.l.mu.Unlock()
			if k.l.held[k.id]--; k.l.held[k.id] <= 0 {
				delete(k.l.held, k.id)
				if len(k.l.held) == 0 && k.l.idle != nil {
					close(k.l.idle)
					k.l.idle = nil
				}
			}
		})
	}
}

// Wait returns once no volume is locked: every call has returned and the work
// abandoned calls left running has ended. A controller giving up its Lease
// waits for this, so the next leader's calls never run beside that work.
func (l *Locks) Wait(ctx context.Context) error {
	l.mu.Lock()
	if len(l.held) == 0 {
		l.mu.Unlock()
		return nil
	}
	if l.idle == nil {
		l.idle = make(chan struct{})
	}
	idle := l.idle
	l.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("operations on volumes still running: %w", ctx.Err())
	}
}
