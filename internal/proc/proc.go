// Package proc runs helper commands (mount, umount, FlexVolume executables)
// so that a deadline really ends them: the command and everything it
// started (mount.nfs, a script's children) are killed as one process group,
// and a child that keeps the output open cannot hold the caller.
package proc

import (
	"context"
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
