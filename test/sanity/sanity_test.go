// Package sanity runs the upstream csi-sanity suite (csi-test v5) against
// `monocsi serve`, as a real process over a real gRPC socket, with real mounts.
package sanity

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/monocsi/monocsi/internal/testbin"
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
