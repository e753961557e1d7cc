package drain

import (
	"errors"
	"testing"
	"time"
)

func TestCloseWaitsForOperationsInside(t *testing.T) {
	var g Gate
	leave, err := g.Enter()
	if err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	go func() { g.Close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("Close returned while an operation was inside")
	case <-time.After(50 * time.Millisecond):
	}
	// Once closing has begun, nothing new gets in.
	for g.closing() == false {
		time.Sleep(time.Millisecond)
	}
	if _, err := g.Enter(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Enter while closing: %v, want ErrClosed", err)
	}
	leave()
	leave() // a second call is harmless
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return after the operation left")
	}
}

func (g *Gate) closing() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.closed
}
