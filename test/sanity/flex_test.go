package sanity

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"

	"github.com/monocsi/monocsi/test/flexsamples"
	"github.com/monocsi/monocsi/test/testbin"
)

// serveFlex installs a sample FlexVolume driver and starts `monocsi serve
// --driver=flex` for it.
func serveFlex(t *testing.T, sample string) (sock, dir string) {
	requireRoot(t)
	dir = t.TempDir()
	flexDir := filepath.Join(dir, "flex")
	if err := flexsamples.Install(flexDir, sample); err != nil {
		t.Fatal(err)
	}
	sock = filepath.Join(dir, "csi.sock")
	testbin.StartEnv(t, []string{"NODE_NAME=sanity-node"}, "serve", "--driver=flex", "--flex-dir="+flexDir,
		"--flex-driver="+flexsamples.Dir(sample), "--endpoint=unix://"+sock, "--node-id=sanity-node", "--flex-timeout=30s", "--v=4")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	testbin.WaitForSocket(ctx, t, sock)
	return sock, dir
}

func flexSanity(t *testing.T, sock, dir string, params map[string]string) {
	cfg := sanity.NewTestConfig()
	cfg.Address = "unix://" + sock
	cfg.TargetPath = filepath.Join(dir, "mount")
	cfg.StagingPath = filepath.Join(dir, "stage")
	cfg.TestVolumeParameters = params
	cfg.TestVolumeSize = 16 << 20
	cfg.IdempotentCount = 5
	sanity.Test(t, cfg)
	assertNoMountsUnder(t, dir)
}

// The attach-capable sample: attach is a loop device over a backing file,
// mountdevice formats and mounts it.
func TestSanityFlexLoopdev(t *testing.T) {
	if ownProcess(t) {
		return
	}
	sock, dir := serveFlex(t, "loopdev")
	backing := filepath.Join(dir, "backing")
	flexSanity(t, sock, dir, map[string]string{"dir": backing, "size": "16Mi"})
	// Every attach was detached: no loop device is left over the backing files.
	out, err := exec.Command("losetup", "-a").CombinedOutput()
	if err != nil {
		t.Fatalf("losetup -a: %v: %s", err, out)
	}
	if strings.Contains(string(out), backing) {
		t.Errorf("loop devices left over the backing files:\n%s", out)
	}
}

// The NFS-style sample: no attach; mount bind-mounts the source directory.
func TestSanityFlexBindmount(t *testing.T) {
	if ownProcess(t) {
		return
	}
	sock, dir := serveFlex(t, "bindmount")
	flexSanity(t, sock, dir, map[string]string{"source": filepath.Join(dir, "src")})
}
