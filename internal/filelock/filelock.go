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
// returns its release. The kernel drops the lock when the process dies.
func Lock(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, &os.PathError{Op: "flock", Path: path, Err: err}
	}
	return func() { f.Close() }, nil
}

// TryLock takes an exclusive lock on path (created when missing) if no one
// holds it; held reports that another open file of path does.
func TryLock(path string) (unlock func(), held bool, err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, false, err
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err != unix.EINTR {
			break
		}
	}
	switch {
	case err == unix.EWOULDBLOCK:
		f.Close()
		return nil, true, nil
	case err != nil:
		f.Close()
		return nil, false, &os.PathError{Op: "flock", Path: path, Err: err}
	}
	return func() { f.Close() }, false, nil
}
