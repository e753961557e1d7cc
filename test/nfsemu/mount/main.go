// Command mount is the test tree's NFS emulation, for machines whose kernel
// has no NFS client. Placed first in the driver's PATH (named "mount"), it
// turns
//
//	mount -t nfs|nfs4 [-o opts] server:/path target
//
// into a bind mount of $NFS_EMULATION_ROOT/<server>/<path> (read-only when
// the options say ro) and hands every other call to the real mount. A server
// without a directory under the root behaves as an unreachable one: the
// call never returns, so timeouts can be tested. A missing path is refused as
// a server refuses an unexported one. The driver has no test-only branch:
// it runs "mount" as it would on any node.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	args := os.Args[1:]
	fstype, opts, pos := parse(args)
	if fstype != "nfs" && fstype != "nfs4" {
		execReal(args)
	}
	root := os.Getenv("NFS_EMULATION_ROOT")
	if root == "" || len(pos) != 2 {
		fail("nfs emulation: need NFS_EMULATION_ROOT and 'mount -t nfs [-o opts] server:/path target', got %q", args)
	}
	server, path, ok := strings.Cut(pos[0], ":")
	server = strings.Trim(server, "[]")
	if !ok || server == "" || strings.Contains(server, "/") || !strings.HasPrefix(path, "/") {
		fail("mount.nfs: %s: bad source (want server:/path)", pos[0])
	}
	if _, err := os.Stat(filepath.Join(root, server)); err != nil {
		time.Sleep(time.Hour) // an unreachable server: mount.nfs retries for minutes
		os.Exit(32)
	}
	src := filepath.Join(root, server, filepath.Clean(path))
	if fi, err := os.Stat(src); err != nil || !fi.IsDir() {
		fail("mount.nfs: access denied by server while mounting %s", pos[0])
	}
	real := realMount()
	if out, err := exec.Command(real, "--bind", src, pos[1]).CombinedOutput(); err != nil {
		fail("nfs emulation: bind %s: %v: %s", src, err, out)
	}
	if slices.Contains(opts, "ro") {
		if out, err := exec.Command(real, "-o", "remount,bind,ro", pos[1]).CombinedOutput(); err != nil {
			exec.Command("umount", pos[1]).Run()
			fail("nfs emulation: remount ro %s: %v: %s", pos[1], err, out)
		}
	}
}

// parse splits mount's arguments into the type, the -o options and the
// positional arguments.
func parse(args []string) (fstype string, opts, pos []string) {
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "-t" && i+1 < len(args):
			fstype, i = args[i+1], i+1
		case a == "-o" && i+1 < len(args):
			opts, i = append(opts, strings.Split(args[i+1], ",")...), i+1
		case strings.HasPrefix(a, "-"):
		default:
			pos = append(pos, a)
		}
	}
	return fstype, opts, pos
}

// realMount is the first mount on PATH that is not this program.
func realMount() string {
	self, _ := os.Executable()
	self, _ = filepath.EvalSymlinks(self)
	for _, dir := range append(filepath.SplitList(os.Getenv("PATH")), "/usr/bin", "/bin") {
		p := filepath.Join(dir, "mount")
		if r, err := filepath.EvalSymlinks(p); err == nil && r != self {
			if fi, err := os.Stat(r); err == nil && fi.Mode()&0o111 != 0 {
				return p
			}
		}
	}
	fail("nfs emulation: no real mount found on PATH")
	return ""
}

func execReal(args []string) {
	real := realMount()
	err := syscall.Exec(real, append([]string{real}, args...), os.Environ())
	fail("nfs emulation: exec %s: %v", real, err)
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(32) // mount's "mount failure"
}
