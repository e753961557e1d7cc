package filelock

import (
	"path/filepath"
	"testing"
	"time"
)

// A second holder waits until the first releases the lock.
func TestSecondLockWaits(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	unlock, err := Lock(path, func() { t.Error("the first Lock waited") })
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan time.Time, 1)
	waited := make(chan struct{}, 1)
	go func() {
		u, err := Lock(path, func() { waited <- struct{}{} })
		if err != nil {
			t.Error(err)
		}
		got <- time.Now()
		u()
	}()
	time.Sleep(200 * time.Millisecond)
	released := time.Now()
	unlock()
	select {
	case at := <-got:
		if len(waited) != 1 {
			t.Error("the second Lock waited without calling waiting")
		}
		if at.Before(released) {
			t.Fatal("the second Lock returned while the first was held")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the second Lock did not return after the release")
	}
}
