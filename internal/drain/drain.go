// Package drain lets work in until it is closed, then waits for the work
// inside to return: a controller that gives up its Lease must first be sure
// none of its calls still act.
package drain

import (
	"errors"
	"sync"
)

var (
	// ErrClosed is returned by Enter once the gate is closed.
	ErrClosed = errors.New("shutting down: no new operations are started")
	// ErrStuck says work outlived the wait for it: the process must exit
	// without releasing its Lease, so that the work dies before anyone
	// else can act.
	ErrStuck = errors.New("work still running after shutdown")
)

// Gate counts the operations in progress. The zero value is open.
type Gate struct {
	mu     sync.Mutex
	closed bool
	inside sync.WaitGroup
}

// Enter admits one operation, which must call leave when it has returned,
// or refuses it with ErrClosed.
func (g *Gate) Enter() (leave func(), err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil, ErrClosed
	}
	g.inside.Add(1)
	var once sync.Once
	return func() { once.Do(g.inside.Done) }, nil
}

// Close refuses new operations and waits for those inside to leave.
func (g *Gate) Close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.inside.Wait()
}
