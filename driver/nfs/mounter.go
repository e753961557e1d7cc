package nfs

import (
	"context"
	"errors"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"

	"github.com/monocsi/monocsi/internal/proc"
)

// runner runs mount and umount under a deadline. An NFS server that is gone
// blocks them for minutes (mount.nfs retries, a hard mount waits forever);
// killing the command at the deadline brings the CSI call back with a clear
// error instead of leaving a goroutine stuck in it.
type runner struct {
	timeout        time.Duration // for a mount
	unmountTimeout time.Duration // for each unmount step
}

// run runs a command under timeout; its error carries the command's output
// (bounded: it goes into a gRPC message).
func run(ctx context.Context, timeout time.Duration, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := proc.Command(ctx, name, args...)
	out := &proc.Buffer{Max: 4096}
	cmd.Stdout, cmd.Stderr = out, out
	err := proc.Run(ctx, cmd)
	if ctx.Err() != nil {
		return context.DeadlineExceeded // the output may still be written to: leave it
	}
	if err != nil {
		return errors.New(strings.TrimSpace(out.String()) + " (" + err.Error() + ")")
	}
	return nil
}

// mountNFS mounts server:path at target with the given options; the
// arguments are built by mount-utils, as every mount of the project's.
func (r runner) mountNFS(ctx context.Context, source, target string, opts []string) error {
	args := mount.MakeMountArgs(source, target, "nfs", opts)
	err := run(ctx, r.timeout, "mount", args...)
	if errors.Is(err, context.DeadlineExceeded) {
		return status.Errorf(codes.DeadlineExceeded, "mount %s: no answer within %s; is the NFS server reachable?", source, r.timeout)
	}
	if err != nil {
		return status.Errorf(codes.Unavailable, "mount %s at %s: %v", source, target, err)
	}
	return nil
}

// mounted reports whether target is a mount point, from the mount table
// only: stat on a mount whose server is gone would hang.
func mounted(target string) (bool, error) {
	mis, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	for _, mi := range mis {
		if mi.MountPoint == target {
			return true, nil
		}
	}
	return false, nil
}

// unmount takes target off the mount table however the server behaves:
// plain umount (which lets umount.nfs tell the server), then a forced
// unmount (aborts the RPCs of a dead server), then a lazy one (detaches the
// mount even while a process is stuck in it). The last two are umount2
// calls, not the umount command: its helper stats the mount point, which
// hangs on a dead server. The log says which step it took, so an operator
// knows a server was unreachable.
func (r runner) unmount(ctx context.Context, target string) error {
	for _, step := range []struct {
		how     string
		unmnt   func() error
		quietly bool
	}{
		{"umount", func() error { return run(ctx, r.unmountTimeout, "umount", target) }, true},
		{"forced (umount2 MNT_FORCE)", func() error { return r.bounded(func() error { return unix.Unmount(target, unix.MNT_FORCE) }) }, false},
		{"lazy (umount2 MNT_DETACH): the server did not answer", func() error { return r.bounded(func() error { return unix.Unmount(target, unix.MNT_DETACH) }) }, false},
	} {
		if m, err := mounted(target); err != nil {
			return status.Errorf(codes.Internal, "read the mount table: %v", err)
		} else if !m {
			return nil
		}
		err := step.unmnt()
		if err != nil {
			if m, _ := mounted(target); m {
				klog.InfoS("Unmount failed; trying harder", "target", target, "step", step.how, "error", err)
				continue
			}
		}
		// Gone from the table, even if the system call is still closing
		// the connection to a dead server.
		if !step.quietly {
			klog.InfoS("Unmounted NFS volume the hard way", "target", target, "how", step.how, "callStillRunning", err != nil)
		}
		return nil
	}
	if m, _ := mounted(target); m {
		return status.Errorf(codes.Internal, "%s is still mounted after umount, a forced and a lazy unmount", target)
	}
	return nil
}

// bounded waits for an unmount system call no longer than a step's timeout.
// The kernel may keep the call for a minute after the mount is gone from the
// table (its last reference tears down the connection to the dead server);
// the caller then checks the table, and the goroutine ends with the call.
func (r runner) bounded(unmount func() error) error {
	done := make(chan error, 1)
	go func() { done <- unmount() }()
	select {
	case err := <-done:
		return err
	case <-time.After(r.unmountTimeout):
		return errors.New("umount2 did not return in time; the mount table tells whether it took effect")
	}
}
