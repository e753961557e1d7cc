package driver

import (
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Locks serialises operations on one volume. The CSI spec asks a plugin to
// answer ABORTED when an operation on the same volume is already running, so
// callers use TryLock rather than queueing behind each other.
type Locks struct {
	mu   sync.Mutex
	held map[string]struct{}
}

// TryLock takes the lock for id, or returns an ABORTED status if it is held.
// The caller must call the returned function to release it.
func (l *Locks) TryLock(id string) (func(), error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held == nil {
		l.held = map[string]struct{}{}
	}
	if _, busy := l.held[id]; busy {
		return nil, status.Errorf(codes.Aborted, "an operation on volume %s is already in progress", id)
	}
	l.held[id] = struct{}{}
	return func() {
		l.mu.Lock()
		delete(l.held, id)
		l.mu.Unlock()
	}, nil
}
