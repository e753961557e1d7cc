// Package nfsemu sets up the test tree's NFS emulation (see ./mount): a
// tmpfs playing the servers' disks and a "mount" command that bind-mounts
// from it, for the tests that run where the kernel has no NFS.
package nfsemu

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// Build compiles the emulating mount command, static, into dir/mount.
func Build(dir string) error {
	_, file, _, _ := runtime.Caller(0)
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "mount"), "./mount")
	cmd.Dir = filepath.Dir(file)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build the nfs emulation: %v\n%s", err, out)
	}
	return nil
}

// MountRoot mounts a tmpfs at root: the emulated servers' disks must be a
// filesystem of their own, as a real export is.
func MountRoot(root string) error {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("nfsemu", root, "tmpfs", 0, "size=512m,mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs at %s: %w", root, err)
	}
	return nil
}

// Server is an emulated server for one test.
type Server struct {
	Root string   // the servers' disks: <Root>/<server>/<path>
	Env  []string // what the driver's process needs: PATH and NFS_EMULATION_ROOT
}

// Export creates the exported directory path of server and returns where
// it lives on the host.
func (s Server) Export(server, path string) string {
	dir := filepath.Join(s.Root, server, path)
	if err := os.MkdirAll(dir, 0o777); err != nil {
		panic(err)
	}
	return dir
}

// Start builds the emulation and mounts its root for t; both go at cleanup.
func Start(t testing.TB) Server {
	t.Helper()
	dir := t.TempDir()
	bin, root := filepath.Join(dir, "bin"), filepath.Join(dir, "servers")
	if err := Build(bin); err != nil {
		t.Fatal(err)
	}
	if err := MountRoot(root); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(root, unix.MNT_DETACH) })
	return Server{Root: root, Env: []string{
		"PATH=" + bin + string(os.PathListSeparator) + os.Getenv("PATH"),
		"NFS_EMULATION_ROOT=" + root,
	}}
}
