// Package filelock serialises work on a shared cache between processes of
// this machine (two test runs building the same Kubernetes version, or
// fetching the same packages, would otherwise write over each other).
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
