// Package proc runs helper commands (mount, umount, FlexVolume executables)
// so that a deadline really ends them: the command and everything it
// started (mount.nfs, a script's children) are killed as one process group,
// and a child that keeps the output open cannot hold the caller.
package proc

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"syscall"
	"time"
)

// Command is exec.CommandContext whose cancellation kills the whole process
// group.
func Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// Run runs cmd and waits for it, but no longer than a grace period after
// ctx ends: a process stuck in uninterruptible sleep (in the kernel, on a
// dead NFS server) cannot be killed, and the caller must still get its
// answer. The waiter stays behind until the process does exit.
func Run(ctx context.Context, cmd *exec.Cmd) error {
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		return ErrUnkillable
	}
}

// ErrUnkillable is Run's error for a command that outlived its deadline
// and could not be killed.
var ErrUnkillable = errors.New("the command did not end when killed (stuck in the kernel)")

// Buffer keeps the first Max bytes written to it and notes that more came,
// while accepting everything: a command whose output pipe blocked would hang.
// (The bytes.Buffer is a field, not embedded: its ReadFrom would let io.Copy
// bypass the limit.)
type Buffer struct {
	Max      int
	Overflow bool
	buf      bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	if room := b.Max - b.buf.Len(); len(p) > room {
		b.Overflow = true
		if room > 0 {
			b.buf.Write(p[:room])
		}
		return len(p), nil
	}
	return b.buf.Write(p)
}

// Bytes returns what was kept.
func (b *Buffer) Bytes() []byte { return b.buf.Bytes() }

// String returns what was kept.
func (b *Buffer) String() string { return b.buf.String() }
