package local

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// These tests attach real loop devices: they need root and /dev/loop-control.

func blockCap(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

var rwoBlock = blockCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)

// newBlockDriver is newDriver that also fails the test for a loop device
// of the root left attached at its end.
func newBlockDriver(t *testing.T) (*Driver, string) {
	t.Helper()
	d, root := newDriver(t)
	if d.noLoop != "" {
		t.Fatalf("loop devices do not work here: %s", d.noLoop)
	}
	t.Cleanup(func() { assertNoLoops(t, root) })
	return d, root
}

func assertNoLoops(t *testing.T, root string) {
	t.Helper()
	loops, err := listLoops()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range loops {
		if strings.HasPrefix(l.backing, root+"/") {
			t.Errorf("loop device %s left attached to %s", l.path, l.backing)
			_ = detachLoop(l)
		}
	}
}

func createBlock(t *testing.T, d *Driver, name string, size int64) *csi.Volume {
	t.Helper()
	resp, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name: name, VolumeCapabilities: []*csi.VolumeCapability{rwoBlock},
		CapacityRange: &csi.CapacityRange{RequiredBytes: size},
	})
	if err != nil {
		t.Fatalf("CreateVolume(%s): %v", name, err)
	}
	return resp.GetVolume()
}

func publishBlock(d *Driver, id, target string, vc *csi.VolumeCapability, ro bool) error {
	_, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, TargetPath: target, VolumeCapability: vc, Readonly: ro})
	return err
}

// loopsOf returns the loop devices attached to the volume's file.
func loopsOf(t *testing.T, d *Driver, id string) []loopDev {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(d.volumeDir(id), &st); err != nil {
		t.Fatal(err)
	}
	mine, _, err := d.volumeLoops(id, &st)
	if err != nil {
		t.Fatal(err)
	}
	return mine
}

func TestBlockLifecycle(t *testing.T) {
	d, root := newBlockDriver(t)
	v := createBlock(t, d, "blk", 1<<20+1)
	if v.GetCapacityBytes() != 1<<20+512 {
		t.Fatalf("capacity = %d, want %d (whole sectors)", v.GetCapacityBytes(), 1<<20+512)
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(root, "blk"), &st); err != nil || st.Size != 1<<20+512 || st.Blocks != 0 {
		t.Fatalf("volume file: size %d, %d blocks, %v; want a sparse file of the exact size", st.Size, st.Blocks, err)
	}
	createBlock(t, d, "blk", 1<<20+1) // idempotent
	_, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "blk", VolumeCapabilities: []*csi.VolumeCapability{rwo},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}})
	wantCode(t, err, codes.AlreadyExists, "same name as a filesystem volume")

	pods := t.TempDir()
	t1, t2 := filepath.Join(pods, "t1"), filepath.Join(pods, "t2")
	multi := blockCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER)
	for _, target := range []string{t1, t1, t2} { // t1 twice: idempotent
		if err := publishBlock(d, "blk", target, multi, false); err != nil {
			t.Fatalf("publish at %s: %v", target, err)
		}
	}
	if ls := loopsOf(t, d, "blk"); len(ls) != 1 {
		t.Fatalf("loop devices of the volume: %v, want one shared by both targets", ls)
	}
	var tst unix.Stat_t
	if err := unix.Stat(t1, &tst); err != nil || tst.Mode&unix.S_IFMT != unix.S_IFBLK {
		t.Fatalf("target %s is not a block device: %v", t1, err)
	}
	data := bytes.Repeat([]byte("monocsi!"), 64)
	if err := os.WriteFile(t1, data, 0); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	f, err := os.Open(t2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back through the second target: %q, %v", got[:16], err)
	}
	f.Close()
	wantCode(t, publishBlock(d, "blk", t1, multi, true), codes.AlreadyExists, "same target, read-only")
	wantCode(t, publishBlock(d, "blk", filepath.Join(pods, "t3"), rwoBlock, false), codes.OK, "a third, single-node-writer")
	wantCode(t, publishBlock(d, "blk", filepath.Join(pods, "t4"), blockCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER), false),
		codes.FailedPrecondition, "single-writer while published")
	unpublish(t, d, "blk", filepath.Join(pods, "t3"))

	_, err = d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "blk"})
	wantCode(t, err, codes.FailedPrecondition, "delete while published")

	// Expansion: never shrinks; grows the file, then the device on the node.
	_, err = d.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: "blk", CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 19}})
	wantCode(t, err, codes.OutOfRange, "shrink")
	resp, err := d.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: "blk", CapacityRange: &csi.CapacityRange{RequiredBytes: 2 << 20}})
	if err != nil || resp.GetCapacityBytes() != 2<<20 || !resp.GetNodeExpansionRequired() {
		t.Fatalf("ControllerExpandVolume = %v, %v; want 2 MiB, node expansion required", resp, err)
	}
	nresp, err := d.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: "blk", VolumePath: t1, CapacityRange: &csi.CapacityRange{RequiredBytes: 2 << 20}})
	if err != nil || nresp.GetCapacityBytes() != 2<<20 {
		t.Fatalf("NodeExpandVolume = %v, %v", nresp, err)
	}
	if n, err := deviceSize(t1); err != nil || n != 2<<20 {
		t.Fatalf("device size after expansion = %d, %v", n, err)
	}
	stats, err := d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "blk", VolumePath: t2})
	if err != nil || stats.GetUsage()[0].GetTotal() != 2<<20 {
		t.Fatalf("NodeGetVolumeStats = %v, %v", stats, err)
	}

	unpublish(t, d, "blk", t1)
	if ls := loopsOf(t, d, "blk"); len(ls) != 1 {
		t.Fatalf("after one of two unpublishes: loop devices %v, want the one still published", ls)
	}
	unpublish(t, d, "blk", t2)
	unpublish(t, d, "blk", t2) // idempotent
	if ls := loopsOf(t, d, "blk"); len(ls) != 0 {
		t.Fatalf("after the last unpublish: loop devices %v, want none", ls)
	}
	for _, target := range []string{t1, t2} {
		if _, err := os.Lstat(target); !os.IsNotExist(err) {
			t.Errorf("target %s left behind: %v", target, err)
		}
	}
	// Republish: the data is still there.
	if err := publishBlock(d, "blk", t1, rwoBlock, true); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(t1); err != nil || !bytes.Equal(b[:len(data)], data) || len(b) != 2<<20 {
		t.Fatalf("read-only republish: %d bytes, %v", len(b), err)
	}
	if err := os.WriteFile(t1, data, 0); err == nil {
		t.Errorf("wrote through a read-only publication")
	}
	unpublish(t, d, "blk", t1)
	if _, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "blk"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(root, "blk")); !os.IsNotExist(err) {
		t.Errorf("volume file left behind: %v", err)
	}
}

func TestBlockKindsDoNotMix(t *testing.T) {
	d, _ := newBlockDriver(t)
	createBlock(t, d, "blk", 1<<20)
	create(t, d, "dir", 1<<20)
	pods := t.TempDir()
	wantCode(t, publishBlock(d, "blk", filepath.Join(pods, "a"), rwo, false), codes.InvalidArgument, "mount capability on a block volume")
	wantCode(t, publishBlock(d, "dir", filepath.Join(pods, "b"), rwoBlock, false), codes.InvalidArgument, "block capability on a filesystem volume")
	for id, vc := range map[string]*csi.VolumeCapability{"blk": rwo, "dir": rwoBlock} {
		resp, err := d.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: id, VolumeCapabilities: []*csi.VolumeCapability{vc}})
		if err != nil || resp.GetConfirmed() != nil {
			t.Errorf("ValidateVolumeCapabilities(%s, other kind) = %v, %v; want not confirmed", id, resp, err)
		}
	}
	resp, err := d.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: "blk", VolumeCapabilities: []*csi.VolumeCapability{rwoBlock}})
	if err != nil || resp.GetConfirmed() == nil {
		t.Errorf("ValidateVolumeCapabilities(blk, block) = %v, %v; want confirmed", resp, err)
	}
	if _, err := d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: "blk"}); err != nil {
		t.Fatal(err)
	}
	_, err = d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "clone", VolumeCapabilities: []*csi.VolumeCapability{rwo},
		VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: "blk"}}}})
	wantCode(t, err, codes.InvalidArgument, "filesystem clone of a block volume")
	_, err = d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "clone", VolumeCapabilities: []*csi.VolumeCapability{rwo},
		VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: "s"}}}})
	wantCode(t, err, codes.InvalidArgument, "filesystem restore of a block snapshot")
	if _, err := d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: "s"}); err != nil {
		t.Fatal(err)
	}
	_, err = d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "clone", VolumeCapabilities: []*csi.VolumeCapability{rwoBlock},
		VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: "dir"}}}})
	wantCode(t, err, codes.InvalidArgument, "block clone of a filesystem volume")
	_, err = d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "odd", VolumeCapabilities: []*csi.VolumeCapability{rwoBlock},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 1000, LimitBytes: 1000}})
	wantCode(t, err, codes.OutOfRange, "a size that rounds above its limit")
	for _, id := range []string{"blk", "dir"} {
		if _, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestBlockTargetsAreChecked(t *testing.T) {
	d, root := newBlockDriver(t)
	createBlock(t, d, "blk", 1<<20)
	pods := t.TempDir()
	dir := filepath.Join(pods, "dir")
	os.Mkdir(dir, 0o750)
	link := filepath.Join(pods, "link")
	os.Symlink(filepath.Join(pods, "elsewhere"), link)
	cases := map[string]struct {
		target string
		code   codes.Code
	}{
		"a directory":    {dir, codes.InvalidArgument},
		"a symlink":      {link, codes.InvalidArgument},
		"in the root":    {filepath.Join(root, "x"), codes.InvalidArgument},
		"the file":       {filepath.Join(root, "blk"), codes.InvalidArgument},
		"missing parent": {filepath.Join(pods, "no", "t"), codes.FailedPrecondition},
		"relative":       {"t", codes.InvalidArgument},
	}
	for name, c := range cases {
		if err := publishBlock(d, "blk", c.target, rwoBlock, false); status.Code(err) != c.code {
			t.Errorf("%s: got %v, want %s", name, err, c.code)
		}
	}
	if _, err := os.Lstat(filepath.Join(pods, "elsewhere")); !os.IsNotExist(err) {
		t.Errorf("the symlink was followed")
	}
	if ls := loopsOf(t, d, "blk"); len(ls) != 0 {
		t.Errorf("refused publishes left loop devices: %v", ls)
	}
	// A file that is not ours is not deleted on unpublish.
	own := filepath.Join(pods, "own")
	os.WriteFile(own, []byte("data"), 0o600)
	_, err := d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "blk", TargetPath: own})
	wantCode(t, err, codes.FailedPrecondition, "unpublish of a file with data")
	if _, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "blk"}); err != nil {
		t.Fatal(err)
	}
}

func TestBlockReplacedFileIsRefused(t *testing.T) {
	d, root := newBlockDriver(t)
	createBlock(t, d, "blk", 1<<20)
	pods := t.TempDir()
	t1 := filepath.Join(pods, "t1")
	if err := publishBlock(d, "blk", t1, rwoBlock, false); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(root, "other")
	os.WriteFile(other, make([]byte, 4096), 0o600)
	if err := os.Rename(other, filepath.Join(root, "blk")); err != nil {
		t.Fatal(err)
	}
	wantCode(t, publishBlock(d, "blk", filepath.Join(pods, "t2"), rwoBlock, false), codes.FailedPrecondition, "publish after the file was replaced")
	_, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "blk"})
	wantCode(t, err, codes.FailedPrecondition, "delete while the replaced file's device is published")
	unpublish(t, d, "blk", t1) // detaches the stale device too (assertNoLoops)
	if _, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "blk"}); err != nil {
		t.Fatal(err)
	}
}

func TestBlockLoopsReconciledAtStart(t *testing.T) {
	d, root := newBlockDriver(t)
	createBlock(t, d, "kept", 1<<20)
	createBlock(t, d, "leaked", 1<<20)
	target := filepath.Join(t.TempDir(), "t")
	if err := publishBlock(d, "kept", target, rwoBlock, false); err != nil {
		t.Fatal(err)
	}
	// A crash between attach and mount: a device no publication uses.
	fd, _, err := d.openBlockFile("leaked", unix.O_RDWR)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := attachLoop(d.loopControl, fd, d.volumeDir("leaked"), false)
	unix.Close(fd)
	if err != nil {
		t.Fatal(err)
	}
	// The kept volume grew while the driver was down.
	if err := os.Truncate(filepath.Join(root, "kept"), 2<<20); err != nil {
		t.Fatal(err)
	}
	d.Close() // the process ends
	d2, err := New(Config{NodeID: "node-a", Root: root})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d2.Close)
	if ls := loopsOf(t, d2, "leaked"); len(ls) != 0 {
		t.Errorf("the unused device %s was not detached at start", dev)
	}
	if ls := loopsOf(t, d2, "kept"); len(ls) != 1 {
		t.Fatalf("the published device was not kept: %v", ls)
	}
	if n, err := deviceSize(target); err != nil || n != 2<<20 {
		t.Errorf("published device's size after start = %d, %v; want the file's", n, err)
	}
	unpublish(t, d2, "kept", target)
}

func TestBlockWithoutLoopDevices(t *testing.T) {
	root := filepath.Join(t.TempDir(), "root")
	d, err := New(Config{NodeID: "node-a", Root: root, loopControl: filepath.Join(t.TempDir(), "no-loop-control")})
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "blk", VolumeCapabilities: []*csi.VolumeCapability{rwoBlock}})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "loop devices") {
		t.Fatalf("block CreateVolume without loop devices: %v", err)
	}
	c, err := d.GetCapacity(ctx, &csi.GetCapacityRequest{VolumeCapabilities: []*csi.VolumeCapability{rwoBlock}})
	if err != nil || c.GetAvailableCapacity() != 0 {
		t.Errorf("GetCapacity(block) = %v, %v; want 0", c, err)
	}
	create(t, d, "dir", 1<<20) // filesystem volumes are unaffected
}

func TestBlockSnapshotRestoreAndClone(t *testing.T) {
	d, root := newBlockDriver(t)
	createBlock(t, d, "src", 4<<20)
	pods := t.TempDir()
	target := filepath.Join(pods, "src")
	if err := publishBlock(d, "src", target, rwoBlock, false); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(target, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("head"), 0)
	f.WriteAt([]byte("tail"), 3<<20)
	f.Close()
	unpublish(t, d, "src", target)

	snap, err := d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: "src"})
	if err != nil || snap.GetSnapshot().GetSizeBytes() != 4<<20 {
		t.Fatalf("CreateSnapshot = %v, %v", snap, err)
	}
	mk := func(name string, size int64, src *csi.VolumeContentSource) error {
		_, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{rwoBlock},
			CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeContentSource: src})
		return err
	}
	fromSnap := &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: "snap"}}}
	fromVol := &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: "src"}}}
	wantCode(t, mk("small", 1<<20, fromSnap), codes.OutOfRange, "restore into a smaller volume")
	for name, src := range map[string]*csi.VolumeContentSource{"restored": fromSnap, "clone": fromVol} {
		if err := mk(name, 8<<20, src); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := mk(name, 8<<20, src); err != nil { // idempotent
			t.Fatalf("%s again: %v", name, err)
		}
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(root, name), &st); err != nil || st.Size != 8<<20 || st.Blocks*512 > 1<<20 {
			t.Errorf("%s: size %d, %d bytes allocated, %v; want 8 MiB, sparse", name, st.Size, st.Blocks*512, err)
		}
		b, err := os.ReadFile(filepath.Join(root, name))
		if err != nil || string(b[:4]) != "head" || string(b[3<<20:3<<20+4]) != "tail" {
			t.Errorf("%s lost the source's data: %v", name, err)
		}
	}
	if _, err := d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: "snap"}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"src", "restored", "clone"} {
		if _, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Fatal(err)
		}
	}
	for _, dir := range []string{root, filepath.Join(root, ".monocsi", "snapshots"), filepath.Join(root, ".monocsi", "new")} {
		if es, _ := os.ReadDir(dir); len(es) > 0 && dir != root || len(es) > 1 {
			t.Errorf("%s not empty after deleting everything: %v", dir, es)
		}
	}
}

// A device still open elsewhere when its last publication goes is only
// marked to detach on its last close: the next publish must attach a
// device of its own, never reuse that one (it would vanish from under it,
// and its number go to another volume).
func TestBlockDetachingDeviceIsNotReused(t *testing.T) {
	d, _ := newBlockDriver(t)
	createBlock(t, d, "blk", 1<<20)
	pods := t.TempDir()
	t1, t2 := filepath.Join(pods, "t1"), filepath.Join(pods, "t2")
	if err := publishBlock(d, "blk", t1, rwoBlock, false); err != nil {
		t.Fatal(err)
	}
	first := loopsOf(t, d, "blk")
	if len(first) != 1 {
		t.Fatalf("loop devices after publish: %v", first)
	}
	holder, err := os.Open(first[0].path) // udev's blkid, a slow reader
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	unpublish(t, d, "blk", t1)
	if ls := loopsOf(t, d, "blk"); len(ls) != 1 || !ls[0].autoclear {
		t.Fatalf("after unpublish with the device open elsewhere: %+v, want it marked to detach on close", ls)
	}
	if err := publishBlock(d, "blk", t2, rwoBlock, false); err != nil {
		t.Fatal(err)
	}
	var tst unix.Stat_t
	if err := unix.Stat(t2, &tst); err != nil {
		t.Fatal(err)
	}
	if old, err := rdevOf(first[0].path); err == nil && old == tst.Rdev {
		t.Fatalf("publish reused %s, which is detaching", first[0].path)
	}
	holder.Close()
	if ls := loopsOf(t, d, "blk"); len(ls) != 1 || ls[0].autoclear {
		t.Fatalf("after the holder closed: %+v, want the publication's own device alone", ls)
	}
	unpublish(t, d, "blk", t2)
	if _, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "blk"}); err != nil {
		t.Fatal(err)
	}
}

// A file longer than its record (an expansion cut short before the record
// was written) is never cut back: neither by a retried create nor by an
// expansion to less than its length.
func TestBlockFileNeverShrinks(t *testing.T) {
	d, root := newBlockDriver(t)
	createBlock(t, d, "blk", 4<<20)
	p := filepath.Join(root, "blk")
	if err := os.Truncate(p, 8<<20); err != nil {
		t.Fatal(err)
	}
	createBlock(t, d, "blk", 4<<20) // idempotent retry
	if _, err := d.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: "blk",
		CapacityRange: &csi.CapacityRange{RequiredBytes: 6 << 20}}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Size() != 8<<20 {
		t.Fatalf("volume file after a retried create and an expansion to 6 MiB: %v, %v; want 8 MiB kept", fi.Size(), err)
	}
}

// A clone with no capacity range takes its source's size, however large.
func TestBlockCloneTakesSourceSize(t *testing.T) {
	d, _ := newBlockDriver(t)
	createBlock(t, d, "big", 3<<30) // sparse
	resp, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "copy", VolumeCapabilities: []*csi.VolumeCapability{rwoBlock},
		VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: "big"}}}})
	if err != nil || resp.GetVolume().GetCapacityBytes() != 3<<30 {
		t.Fatalf("clone of a 3 GiB volume without a size: %v, %v", resp.GetVolume().GetCapacityBytes(), err)
	}
}

// An unpublish that unmounts but cannot remove its target (a file that is
// not the empty one the CO made) still detaches the volume's device: a
// retry that fails the same way forever must not keep it attached.
func TestBlockUnpublishDetachesWhenTargetStays(t *testing.T) {
	d, _ := newBlockDriver(t)
	createBlock(t, d, "blk", 1<<20)
	target := filepath.Join(t.TempDir(), "t")
	if err := publishBlock(d, "blk", target, rwoBlock, false); err != nil {
		t.Fatal(err)
	}
	if err := unix.Unmount(target, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(target, []byte("not the CO's empty file"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "blk", TargetPath: target})
	wantCode(t, err, codes.FailedPrecondition, "unpublish of a target that is a non-empty file")
	if ls := loopsOf(t, d, "blk"); len(ls) != 0 {
		t.Errorf("the volume's device %s stays attached after its only target was unmounted", loopPaths(ls))
	}
	if b, err := os.ReadFile(target); err != nil || string(b) != "not the CO's empty file" {
		t.Errorf("the target's content was touched: %q, %v", b, err)
	}
}
