package local

import (
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Per-volume usage where there is no quota to ask: a walk of the volume's
// directory, counted as du counts (allocated blocks, hard links once, other
// filesystems mounted inside not entered), bounded in time and in the
// number of walks running at once, and cached per volume.

// usage is a walk's result.
type usage struct {
	Bytes, Inodes int64
	Complete      bool // false: the walk ran out of time or depth; the figures are a lower bound
	At            time.Time
}

const (
	defaultWalkTimeout = 5 * time.Second
	defaultWalkTTL     = time.Minute // the kubelet asks once a minute by default
	defaultWalkers     = 2
	maxWalkDepth       = 512 // one descriptor per level
)

// walker runs and caches walks.
type walker struct {
	timeout, ttl time.Duration
	slots        chan struct{} // one per walk allowed at once

	mu      sync.Mutex
	entries map[string]*walkEntry // by volume ID
	// running counts walks in progress (for the tests of the bound).
	running, maxRunning int
}

type walkEntry struct {
	last usage
	have bool
	done chan struct{} // non-nil while a walk of this volume runs
}

func newWalker(timeout, ttl time.Duration, walkers int) *walker {
	return &walker{timeout: timeout, ttl: ttl, slots: make(chan struct{}, walkers), entries: map[string]*walkEntry{}}
}

// get returns the volume's usage: cached when younger than the TTL, else
// from a new walk (one per volume at a time: concurrent callers share it).
// ok is false when there is no figure at all: no walk slot came free while
// ctx allowed and nothing is cached.
func (w *walker) get(ctx context.Context, id, dir string) (usage, bool) {
	w.mu.Lock()
	e := w.entries[id]
	if e == nil {
		e = &walkEntry{}
		w.entries[id] = e
	}
	if e.have && time.Since(e.last.At) < w.ttl {
		u := e.last
		w.mu.Unlock()
		return u, true
	}
	if e.done == nil {
		e.done = make(chan struct{})
		go w.walk(e, dir)
	}
	done := e.done
	w.mu.Unlock()

	select {
	case <-done:
	case <-ctx.Done():
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return e.last, e.have
}

// walk waits for a slot (at most the timeout), walks and stores the result.
func (w *walker) walk(e *walkEntry, dir string) {
	defer func() {
		w.mu.Lock()
		close(e.done)
		e.done = nil
		w.mu.Unlock()
	}()
	deadline := time.Now().Add(w.timeout)
	t := time.NewTimer(w.timeout)
	defer t.Stop()
	select {
	case w.slots <- struct{}{}:
	case <-t.C:
		return // every slot busy for a whole timeout: keep what is cached
	}
	w.mu.Lock()
	w.running++
	w.maxRunning = max(w.maxRunning, w.running)
	w.mu.Unlock()
	u, err := walkUsage(dir, deadline)
	w.mu.Lock()
	w.running--
	if err == nil {
		e.last, e.have = u, true
	}
	w.mu.Unlock()
	<-w.slots
}

// forget drops a volume's cached usage (it was deleted).
func (w *walker) forget(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if e := w.entries[id]; e != nil && e.done == nil {
		delete(w.entries, id)
	}
}

// walkUsage counts the blocks and inodes under dir as `du -sx` and `du
// -sx --inodes` do. It never follows a symlink: every directory is opened
// relative to its parent's descriptor with O_NOFOLLOW and checked to be
// what fstatat saw, so a directory swapped for a symlink mid-walk is not
// entered. It stops at the deadline with Complete false.
func walkUsage(dir string, deadline time.Time) (usage, error) {
	fd, err := openDir(dir)
	if err != nil {
		return usage{}, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return usage{}, err
	}
	c := &counter{dev: st.Dev, deadline: deadline, seen: map[[2]uint64]bool{}}
	c.u.Bytes, c.u.Inodes = st.Blocks*512, 1
	c.u.Complete = c.dir(fd, 0) // closes fd
	c.u.At = time.Now()
	return c.u, nil
}

type counter struct {
	dev      uint64
	deadline time.Time
	seen     map[[2]uint64]bool // hard-linked files already counted
	n        int
	u        usage
}

// dir counts the entries of the open directory fd (and closes it); false
// when it stopped early.
func (c *counter) dir(fd int, depth int) bool {
	f := os.NewFile(uintptr(fd), "")
	defer f.Close()
	complete := true
	for {
		names, err := f.Readdirnames(256)
		for _, name := range names {
			if c.n++; c.n%64 == 0 && time.Now().After(c.deadline) {
				return false
			}
			var st unix.Stat_t
			if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				continue // gone meanwhile
			}
			if st.Dev != c.dev {
				continue // a mount point inside the volume: another filesystem
			}
			if st.Mode&unix.S_IFMT != unix.S_IFDIR && st.Nlink > 1 {
				k := [2]uint64{st.Dev, st.Ino}
				if c.seen[k] {
					continue
				}
				c.seen[k] = true
			}
			c.u.Bytes += st.Blocks * 512
			c.u.Inodes++
			if st.Mode&unix.S_IFMT != unix.S_IFDIR {
				continue
			}
			if depth+1 >= maxWalkDepth {
				complete = false
				continue
			}
			sub, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				continue
			}
			var now unix.Stat_t
			if unix.Fstat(sub, &now) != nil || now.Dev != st.Dev || now.Ino != st.Ino {
				unix.Close(sub) // replaced since fstatat: not the directory counted
				continue
			}
			if !c.dir(sub, depth+1) {
				return false
			}
		}
		if errors.Is(err, io.EOF) || len(names) == 0 {
			return complete
		}
		if err != nil {
			return complete
		}
	}
}
