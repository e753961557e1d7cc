package sanity

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
)

// TestLocalBlockRestart: a block volume over `monocsi serve` with real loop
// devices, across a crash. Data written through the published device is
// read back after monocsi is killed and started again; the read-only
// device whose publication went away during the crash is detached at start
// while the published one is kept; the volume grows while published (file,
// then the device with NodeExpandVolume); nothing is left attached at the
// end. The root is on MONOCSI_LOCAL_QUOTA_DIR when set (make e2e-kernel:
// XFS and ext4 in a real kernel), else in a temporary directory.
func TestLocalBlockRestart(t *testing.T) {
	requireRoot(t)
	base := os.Getenv("MONOCSI_LOCAL_QUOTA_DIR")
	if base == "" {
		base = realTempDir(t)
	}
	root, err := os.MkdirTemp(base, "block-root-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	s := &quotaServer{sock: filepath.Join(t.TempDir(), "csi.sock"), root: root}
	s.start(t)
	t.Cleanup(func() { assertNoLoopsOf(t, root) })
	ctx := context.Background()

	const id, size = "blk", 8 << 20
	if _, err := s.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: id, VolumeCapabilities: []*csi.VolumeCapability{rwoBlock},
		CapacityRange: &csi.CapacityRange{RequiredBytes: size}}); err != nil {
		t.Fatal(err)
	}
	pods := realTempDir(t)
	rw, ro := filepath.Join(pods, "rw"), filepath.Join(pods, "ro")
	multi := &csi.VolumeCapability{AccessType: rwoBlock.AccessType,
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER}}
	publish := func(target string, readOnly bool) {
		t.Helper()
		if _, err := s.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, TargetPath: target, VolumeCapability: multi, Readonly: readOnly}); err != nil {
			t.Fatalf("publish at %s: %v", target, err)
		}
	}
	unpublish := func(target string) {
		t.Helper()
		if _, err := s.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
			t.Fatalf("unpublish %s: %v", target, err)
		}
	}
	write := func(target string, off int64, what string) {
		t.Helper()
		f, err := os.OpenFile(target, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt([]byte(what), off); err != nil || f.Sync() != nil {
			t.Fatalf("write at %d through %s: %v", off, target, err)
		}
	}
	readBack := func(target string, want map[int64]string) {
		t.Helper()
		f, err := os.Open(target)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for off, s := range want {
			got := make([]byte, len(s))
			if _, err := f.ReadAt(got, off); err != nil || !bytes.Equal(got, []byte(s)) {
				t.Errorf("at %d through %s: %q, %v; want %q", off, target, got, err, s)
			}
		}
	}
	publish(rw, false)
	publish(ro, true)
	data := map[int64]string{0: "first sector", 7 << 20: "last MiB"}
	for off, s := range data {
		write(rw, off, s)
	}
	readBack(ro, data)

	// The crash: monocsi is killed, and the read-only publication is
	// unmounted behind its back (its NodeUnpublishVolume never came).
	if err := s.p.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if _, exited := s.p.Exited(10 * time.Second); !exited {
		t.Fatal("monocsi did not exit after SIGKILL")
	}
	s.conn.Close()
	if err := unix.Unmount(ro, 0); err != nil {
		t.Fatal(err)
	}
	os.Remove(ro)
	s.start(t)
	if !strings.Contains(s.p.Log(), "published=1 detached=1") {
		t.Errorf("start did not keep the published device and detach the other one:\n%s", s.p.Log())
	}
	readBack(rw, data)

	// Expansion while published: the file, then the device.
	if resp, err := s.ctl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id, CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * size}}); err != nil || !resp.GetNodeExpansionRequired() {
		t.Fatalf("ControllerExpandVolume: %v, %v", resp, err)
	}
	if _, err := s.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: rw}); err != nil {
		t.Fatalf("NodeExpandVolume: %v", err)
	}
	f, err := os.Open(rw)
	if err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint64(int(f.Fd()), unix.BLKGETSIZE64)
	f.Close()
	if err != nil || n != 2*size {
		t.Fatalf("device size after expansion: %d, %v; want %d", n, err, 2*size)
	}
	data[2*size-4096] = "grown part"
	write(rw, 2*size-4096, data[2*size-4096])
	unpublish(rw)
	assertNoLoopsOf(t, root)

	publish(rw, true)
	readBack(rw, data)
	unpublish(rw)
	if _, err := s.ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	}
	if es, _ := os.ReadDir(root); len(es) != 1 {
		t.Errorf("root after the delete: %v, want only .monocsi", es)
	}
}
