package sanity

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/monocsi/monocsi/driver/flex"
	"github.com/monocsi/monocsi/test/flexsamples"
	"github.com/monocsi/monocsi/test/nfsemu"
	"github.com/monocsi/monocsi/test/testbin"
)

// TestNFSFlexScript runs the bash + jq NFS sample (test/flexsamples/nfsscript)
// the way a classic FlexVolume script needs it: `monocsi serve
// --driver=flex --flex-exec=host`, each command through nsenter in PID 1's
// mount namespace, where bash, jq, findmnt and mount.nfs are, against the
// real kernel NFS server and client (make e2e-nfs).
func TestNFSFlexScript(t *testing.T) {
	server, share := os.Getenv("MONOCSI_NFS_SERVER"), os.Getenv("MONOCSI_NFS_SHARE")
	if server == "" {
		t.Skip("needs a real NFS server and client, and bash, jq, findmnt and mount.nfs in PID 1's mount namespace (make e2e-nfs sets MONOCSI_NFS_SERVER)")
	}
	requireRoot(t)
	flexScriptNFS(t, flexScriptTarget{server: server, share: share, export: share, mountOptions: os.Getenv("MONOCSI_NFS_MOUNT_OPTIONS"), real: true},
		"--flex-exec=host")
}

// TestFlexScriptEmulated is TestNFSFlexScript where the kernel has no NFS:
// the test tree's emulating mount is first on the script's PATH (which
// --flex-path puts there), in both exec modes. Host mode enters this test's
// own mount namespace (--flex-mount-ns): PID 1's may be out of reach here,
// and this machine is the host anyway.
func TestFlexScriptEmulated(t *testing.T) {
	requireRoot(t)
	emu := nfsemu.Start(t)
	var bin string
	for _, kv := range emu.Env {
		if p, ok := strings.CutPrefix(kv, "PATH="); ok {
			bin, _, _ = strings.Cut(p, string(os.PathListSeparator))
		}
	}
	flexPath := "--flex-path=" + bin + string(os.PathListSeparator) + flex.DefaultPath
	// The emulating mount finds its servers' disks through the environment.
	flexEnv := "--flex-env=NFS_EMULATION_ROOT"
	for mode, args := range map[string][]string{
		"container": {"--flex-exec=container", flexPath, flexEnv},
		"host":      {"--flex-exec=host", fmt.Sprintf("--flex-mount-ns=/proc/%d/ns/mnt", os.Getpid()), flexPath, flexEnv},
	} {
		t.Run(mode, func(t *testing.T) {
			share := "/exports/flexscript-" + mode
			flexScriptNFS(t, flexScriptTarget{server: "127.0.0.1", share: share, export: emu.Export("127.0.0.1", share), env: emu.Env}, args...)
		})
	}
}

type flexScriptTarget struct {
	server, share, mountOptions string
	export                      string   // the share's directory as this test sees it
	env                         []string // added to monocsi's environment
	real                        bool     // a kernel NFS mount (not the emulation's bind mount)
}

// flexScriptNFS serves the NFS script and checks, over gRPC: a publish
// mounts the share (twice: idempotent), a file written there is on the
// share, a read-only publish refuses writes, unpublish leaves no mount and
// no target; a share that does not exist fails with the script's own
// message (its Failure on stderr) as NOT_FOUND.
func flexScriptNFS(t *testing.T, n flexScriptTarget, args ...string) {
	dir := t.TempDir()
	flexDir := filepath.Join(dir, "flex")
	if _, err := flexsamples.InstallNFSScript(flexDir); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "csi.sock")
	testbin.StartEnv(t, n.env, append([]string{"serve", "--driver=flex", "--flex-dir=" + flexDir,
		"--flex-driver=" + flexsamples.Dir(flexsamples.NFSScript), "--endpoint=unix://" + sock, "--node-id=sanity-node",
		"--flex-timeout=30s", "--v=4"}, args...)...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	testbin.WaitForSocket(ctx, t, sock)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if info, err := csi.NewIdentityClient(conn).GetPluginInfo(ctx, &csi.GetPluginInfoRequest{}); err != nil || info.GetName() != flexsamples.NFSScriptDriver {
		t.Fatalf("GetPluginInfo: %v, %v; want %s", info, err, flexsamples.NFSScriptDriver)
	}
	node := csi.NewNodeClient(conn)
	attrs := map[string]string{"server": n.server, "share": n.share}
	if n.mountOptions != "" {
		attrs["mountOptions"] = n.mountOptions
	}
	targets := filepath.Join(dir, "targets")
	if err := os.MkdirAll(targets, 0o755); err != nil {
		t.Fatal(err)
	}

	target := filepath.Join(targets, "rw")
	pub := &csi.NodePublishVolumeRequest{VolumeId: "flexscript-rw", TargetPath: target, VolumeCapability: fsCap, VolumeContext: attrs}
	for range 2 {
		if _, err := node.NodePublishVolume(ctx, pub); err != nil {
			t.Fatal(err)
		}
	}
	if fstype := mountType(t, target); n.real && !strings.HasPrefix(fstype, "nfs") {
		t.Errorf("the mount at %s is %q, want an NFS mount made by the script's mount -t nfs", target, fstype)
	} else if fstype == "" {
		t.Fatalf("nothing mounted at %s after publish", target)
	}
	name := "written-through-the-flex-script"
	if err := os.WriteFile(filepath.Join(target, name), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The share is the other tests' too: leave it as it was.
	t.Cleanup(func() { os.Remove(filepath.Join(n.export, name)) })
	if b, err := os.ReadFile(filepath.Join(n.export, name)); err != nil || string(b) != "hello" {
		t.Errorf("the file written through the mount is not on the share: %q, %v", b, err)
	}

	ro := filepath.Join(targets, "ro")
	if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "flexscript-ro", TargetPath: ro,
		VolumeCapability: fsCap, VolumeContext: attrs, Readonly: true}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(ro, name)); err != nil || string(b) != "hello" {
		t.Errorf("read-only mount: %q, %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(ro, "x"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("write on a read-only publish: %v, want EROFS", err)
	}

	for _, p := range []struct{ id, target string }{{"flexscript-rw", target}, {"flexscript-ro", ro}, {"flexscript-rw", target}} {
		if _, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: p.id, TargetPath: p.target}); err != nil {
			t.Fatal(err)
		}
		if fstype := mountType(t, p.target); fstype != "" {
			t.Errorf("%s still mounted (%s) after unpublish", p.target, fstype)
		}
		if _, err := os.Lstat(p.target); !os.IsNotExist(err) {
			t.Errorf("target %s still exists after unpublish: %v", p.target, err)
		}
	}
	if _, err := os.Stat(filepath.Join(n.export, name)); err != nil {
		t.Errorf("the file is gone from the share after unpublish: %v", err)
	}

	// A share the server does not export: the script's Failure, written on
	// stderr with exit status 1, comes back with its message and code.
	missing := strings.TrimSuffix(n.share, "/") + "/does-not-exist"
	bad := filepath.Join(targets, "missing")
	start := time.Now()
	_, err = node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "flexscript-missing", TargetPath: bad, VolumeCapability: fsCap,
		VolumeContext: map[string]string{"server": n.server, "share": missing, "mountOptions": n.mountOptions}})
	msg := status.Convert(err).Message()
	if status.Code(err) != codes.NotFound || !strings.Contains(msg, "flex driver "+flexsamples.NFSScriptDriver+": mount: mount "+n.server+":"+missing) {
		t.Errorf("publish of a share that does not exist: %v; want NotFound with the script's message", err)
	}
	t.Logf("a share that does not exist: %v (after %s)", err, time.Since(start).Round(time.Millisecond))
	if _, err := os.Lstat(bad); !os.IsNotExist(err) {
		t.Errorf("target %s left after a failed publish: %v", bad, err)
	}
	assertNoMountsUnder(t, dir)
}

// mountType is the filesystem type mounted at p (the last mount there), or "".
func mountType(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	fstype := ""
	for _, line := range strings.Split(string(b), "\n") {
		// ID parent major:minor root mountpoint options [optional...] - fstype source super
		f := strings.Fields(line)
		if len(f) < 5 || f[4] != p {
			continue
		}
		for i := 5; i+1 < len(f); i++ {
			if f[i] == "-" {
				fstype = f[i+1]
				break
			}
		}
	}
	return fstype
}
