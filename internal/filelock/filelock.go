// Package filelock serialises work on shared files between processes of
// this machine (two test runs building the same Kubernetes version, or
// fetching the same packages, would otherwise write over each other; two
// local drivers on one root would detach each other's loop devices).
package filelock

import (
	"os"

	"golang.org/x/sys/unix"
)

// Lock waits for an exclusive lock on path (created when missing) and
// returns its release. When another open file of path holds it, waiting
// (if not nil) is called once before the wait. The kernel drops the lock
// when the process dies.
func Lock(path string, waiting func()) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	err = flock(f, unix.LOCK_EX|unix.LOCK_NB)
	if err == unix.EWOULDBLOCK {
		if waiting != nil {
			waiting()
		}
		err = flock(f, unix.LOCK_EX)
	}
	if err != nil {
		f.Close()
		return nil, &os.PathError{Op: "flock", Path: path, Err: err}
	}
	return func() { f.Close() }, nil
}

// flock is flock(2) on f, again when a signal interrupts it.
func flock(f *os.File, how int) error {
	for {
		if err := unix.Flock(int(f.Fd()), how); err != unix.EINTR {
			return err
		}
	}
}
