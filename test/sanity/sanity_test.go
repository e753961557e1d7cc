// Package sanity runs the upstream csi-sanity suite (csi-test v5) against
// `monocsi serve`, as a real process over a real gRPC socket, with real mounts.
package sanity

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/monocsi/monocsi/test/testbin"
)

func requireRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("csi-sanity needs root: the driver bind-mounts volumes. Run the tests as root (make test does).")
	}
}

// serveLocal starts `monocsi serve --driver=local` and returns its socket and root.
func serveLocal(t *testing.T) (sock, root string) {
	dir := t.TempDir()
	sock, root = filepath.Join(dir, "csi.sock"), filepath.Join(dir, "root")
	testbin.Start(t, "serve", "--driver=local", "--endpoint=unix://"+sock, "--node-id=sanity-node", "--local-root="+root, "--v=2")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	testbin.WaitForSocket(ctx, t, sock)
	return sock, root
}

func TestSanityLocal(t *testing.T) {
	requireRoot(t)
	if ownProcess(t) {
		return
	}
	sock, root := serveLocal(t)
	work := t.TempDir()
	cfg := sanity.NewTestConfig()
	cfg.Address = "unix://" + sock
	cfg.TargetPath = filepath.Join(work, "mount")
	cfg.StagingPath = filepath.Join(work, "stage")
	cfg.TestVolumeSize = 64 << 20 // sizes are checked against free space; keep CI machines with little disk green
	cfg.IdempotentCount = 10
	sanity.Test(t, cfg)

	assertNoMountsUnder(t, work, root)
}

// TestSanityLocalBlock runs the suite again with block volumes: a sparse
// file per volume, published as a loop device bind-mounted on a file.
func TestSanityLocalBlock(t *testing.T) {
	requireRoot(t)
	if ownProcess(t) {
		return
	}
	sock, root := serveLocal(t)
	work := t.TempDir()
	cfg := sanity.NewTestConfig()
	cfg.Address = "unix://" + sock
	cfg.TargetPath = filepath.Join(work, "mount")
	cfg.StagingPath = filepath.Join(work, "stage")
	cfg.TestVolumeSize = 64 << 20
	cfg.TestVolumeAccessType = "block"
	cfg.IdempotentCount = 10
	sanity.Test(t, cfg)

	assertNoMountsUnder(t, work, root)
	assertNoLoopsOf(t, root)
}

// assertNoLoopsOf fails when a loop device is left attached to a file
// under root, and detaches it.
func assertNoLoopsOf(t *testing.T, root string) {
	t.Helper()
	links, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range links {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if back := strings.TrimSpace(string(b)); strings.HasPrefix(back, root+"/") {
			dev := "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(f)))
			t.Errorf("loop device %s left attached to %s", dev, back)
			if fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
				_ = unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0)
				unix.Close(fd)
			}
		}
	}
}

// assertNoMountsUnder fails when any mount is left below the given directories.
func assertNoMountsUnder(t *testing.T, dirs ...string) {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		for _, d := range dirs {
			if f[4] == d || strings.HasPrefix(f[4], d+"/") {
				t.Errorf("mount left behind: %s", f[4])
			}
		}
	}
}

// TestHostileVolumeIDs sends volume IDs and names that try to escape the
// root: each must be INVALID_ARGUMENT and leave the root as it was.
func TestHostileVolumeIDs(t *testing.T) {
	requireRoot(t)
	sock, root := serveLocal(t)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctl, node := csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	ctx := context.Background()
	before := listTree(t, filepath.Dir(root))
	mnt := &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
	target := filepath.Join(t.TempDir(), "target")
	hostile := []string{"", "../x", "a/b", "..", ".", ".hidden", "/etc", "x\x00y", strings.Repeat("a", 10_000), "a b", "-o"}
	for _, id := range hostile {
		calls := map[string]error{}
		_, calls["CreateVolume"] = ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: id, VolumeCapabilities: []*csi.VolumeCapability{mnt}})
		_, calls["DeleteVolume"] = ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
		_, calls["ValidateVolumeCapabilities"] = ctl.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: id, VolumeCapabilities: []*csi.VolumeCapability{mnt}})
		_, calls["NodePublishVolume"] = node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, TargetPath: target, VolumeCapability: mnt})
		_, calls["NodeUnpublishVolume"] = node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
		_, calls["NodeGetVolumeStats"] = node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target})
		for call, err := range calls {
			if status.Code(err) != codes.InvalidArgument {
				t.Errorf("%s(%.40q): got %v, want InvalidArgument", call, id, err)
			} else if status.Convert(err).Message() == "" {
				t.Errorf("%s(%.40q): InvalidArgument without a message", call, id)
			}
		}
	}
	after := listTree(t, filepath.Dir(root))
	if strings.Join(before, "\n") != strings.Join(after, "\n") {
		t.Errorf("hostile calls changed the filesystem:\nbefore %v\nafter  %v", before, after)
	}
	if _, err := os.Lstat(target); !os.IsNotExist(err) {
		t.Errorf("target %s was created by a rejected call", target)
	}
}

func listTree(t *testing.T, dir string) []string {
	var out []string
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if info.Mode()&os.ModeSocket == 0 {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// ownProcess runs the calling test in a child process of this test binary
// and reports whether the caller is the parent (and should return). Ginkgo,
// which csi-sanity runs on, cannot run its suite twice in one process, and
// each driver has its own suite.
func ownProcess(t *testing.T) bool {
	const env = "MONOCSI_SANITY_CHILD"
	if os.Getenv(env) == t.Name() {
		return false
	}
	args := []string{"-test.run", "^" + t.Name() + "$", "-test.count=1"}
	if testing.Verbose() {
		args = append(args, "-test.v")
	}
	cmd := exec.Command(os.Args[0], append(args, "-ginkgo.no-color")...)
	cmd.Env = append(os.Environ(), env+"="+t.Name())
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		t.Errorf("%s in its own process: %v", t.Name(), err)
	}
	return true
}

// canary is a tree of files and directories with content, outside every
// driver's storage, that hostile calls are aimed at through symlinks and
// bad paths: it must stay exactly as it was.
type canary struct {
	dir  string
	want string
}

// newCanary creates a canary tree in a fresh temporary directory.
func newCanary(t *testing.T) *canary {
	t.Helper()
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir = filepath.Join(dir, "canary")
	for p, content := range map[string]string{
		"precious":            "do not touch",
		"a/file":              "a's file",
		"a/b/deep":            "deep file",
		"dir/keep":            "kept",
		"disk.img":            strings.Repeat("\x00", 4096),
		"empty/.placeholder":  "",
		"exec/hostile-target": "a file where a directory is expected",
	} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "void"), 0o755); err != nil {
		t.Fatal(err)
	}
	c := &canary{dir: dir}
	c.want = c.state(t)
	return c
}

// path is the canary's p.
func (c *canary) path(p string) string { return filepath.Join(c.dir, p) }

// state lists every entry of the tree with its type, mode, size, symlink
// target and content hash.
func (c *canary) state(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	err := filepath.Walk(c.dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %v %d", strings.TrimPrefix(p, c.dir), fi.Mode(), fi.Size())
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			fmt.Fprintf(&b, " -> %s", l)
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, " %x", sha256.Sum256(data))
		}
		b.WriteByte('\n')
		return nil
	})
	if err != nil {
		t.Fatalf("read the canary tree: %v", err)
	}
	return b.String()
}

// check fails when the tree changed, or anything is mounted in it.
func (c *canary) check(t *testing.T) {
	t.Helper()
	assertNoMountsUnder(t, c.dir)
	if got := c.state(t); got != c.want {
		t.Errorf("the canary tree %s changed:\nbefore:\n%safter:\n%s", c.dir, c.want, got)
	}
}

var subreaper sync.Once

// becomeSubreaper makes this test process the reaper of orphans of the
// processes it starts: a child an executable leaves running behind (a
// daemon, a command in the background) is then reparented here, where
// strayProcesses finds it, instead of to PID 1.
func becomeSubreaper(t *testing.T) {
	subreaper.Do(func() {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			t.Fatalf("PR_SET_CHILD_SUBREAPER: %v", err)
		}
	})
}

// strayProcesses lists the live processes below this test process other
// than monocsi servers (the binary exe), as "pid command line".
func strayProcesses(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	children := map[int][]int{}
	state := map[int]byte{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		rest := string(b[strings.LastIndexByte(string(b), ')')+1:])
		f := strings.Fields(rest)
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		children[ppid] = append(children[ppid], pid)
		state[pid] = f[0][0]
	}
	var stray []string
	queue := slices.Clone(children[os.Getpid()])
	for len(queue) > 0 {
		pid := queue[0]
		queue = append(queue[1:], children[pid]...)
		if state[pid] == 'Z' || state[pid] == 'X' {
			continue // ended
		}
		if testbin.Started(pid) {
			continue // a monocsi server; its children are looked at
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		stray = append(stray, fmt.Sprintf("%d %s", pid, strings.ReplaceAll(string(cmdline), "\x00", " ")))
	}
	return stray
}

// assertNoStrayProcesses fails when a process other than the monocsi
// servers is left below this test process (after a short grace for
// processes on their way out), and ends what it found.
func assertNoStrayProcesses(t *testing.T) {
	t.Helper()
	becomeSubreaper(t)
	var stray []string
	for deadline := time.Now().Add(3 * time.Second); ; {
		if stray = strayProcesses(t); len(stray) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, s := range stray {
		t.Errorf("process left running: %s", s)
		pid, _ := strconv.Atoi(strings.Fields(s)[0])
		_ = unix.Kill(pid, unix.SIGKILL)
	}
}

// hostileCase is one hostile call: run makes it (setting up what it needs
// first) and returns its error; the call must fail with one of codes
// (INVALID_ARGUMENT when none are named; codes.OK when success is the
// right answer) and a message. after, when set, checks what the call left
// and undoes the case's own setup.
type hostileCase struct {
	name  string
	run   func(t *testing.T) error
	codes []codes.Code
	after func(t *testing.T)
}

// runHostile runs each case as a subtest and checks, after each: the gRPC
// code (never INTERNAL or UNKNOWN, with a message), the canary tree, no
// mount left below the given directories, and no process left behind.
// It returns how many cases ran.
func runHostile(t *testing.T, c *canary, mountDirs []string, cases []hostileCase) int {
	t.Helper()
	becomeSubreaper(t)
	names := map[string]bool{}
	for _, tc := range cases {
		if names[tc.name] {
			t.Fatalf("two cases named %q", tc.name)
		}
		names[tc.name] = true
		t.Run(tc.name, func(t *testing.T) {
			want := tc.codes
			if len(want) == 0 {
				want = []codes.Code{codes.InvalidArgument}
			}
			// Each case against the tree as it was just before, and what a
			// failed case mounted is undone: cases stay independent.
			c.want = c.state(t)
			defer unmountUnder(append([]string{c.dir}, mountDirs...)...)
			err := tc.run(t)
			got := status.Code(err)
			switch {
			case got == codes.Internal || got == codes.Unknown:
				t.Errorf("got %v: bad input must not be %s", err, got)
			case !slices.Contains(want, got):
				t.Errorf("got %v, want %v", err, want)
			case got != codes.OK && status.Convert(err).Message() == "":
				t.Errorf("%s without a message", got)
			}
			if err != nil {
				t.Logf("%s: %s", got, status.Convert(err).Message())
			}
			if tc.after != nil {
				tc.after(t)
			}
			c.check(t)
			assertNoMountsUnder(t, mountDirs...)
			assertNoStrayProcesses(t)
		})
	}
	return len(cases)
}

// unmountUnder detaches every mount below the directories, deepest
// first: what a failing case left there (already reported).
func unmountUnder(dirs ...string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var mps []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		for _, d := range dirs {
			if f[4] == d || strings.HasPrefix(f[4], d+"/") {
				mps = append(mps, f[4])
			}
		}
	}
	slices.Sort(mps)
	for _, mp := range slices.Backward(mps) {
		_ = unix.Unmount(mp, unix.MNT_DETACH)
	}
}

// mustMkdir creates a directory (and its parents) for a case's setup.
func mustMkdir(t *testing.T, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// mustSymlink creates link -> to for a case's setup.
func mustSymlink(t *testing.T, to, link string) string {
	t.Helper()
	if err := os.Symlink(to, link); err != nil {
		t.Fatal(err)
	}
	return link
}
