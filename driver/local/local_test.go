package local

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	mount "k8s.io/mount-utils"

	"github.com/monocsi/monocsi/driver"
)

// These tests mount for real: they need root.
func newDriver(t *testing.T) (*Driver, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("needs root for real bind mounts: run `make test` as root")
	}
	root := filepath.Join(t.TempDir(), "root")
	d, err := New(Config{NodeID: "node-a", Root: root})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { assertNoMounts(t, filepath.Dir(root)) })
	t.Cleanup(d.Close)
	return d, root
}

func assertNoMounts(t *testing.T, dir string) {
	t.Helper()
	mps, err := mount.New("").List()
	if err != nil {
		t.Fatal(err)
	}
	for _, mp := range mps {
		if strings.HasPrefix(mp.Path, dir+"/") {
			t.Errorf("mount left behind at %s", mp.Path)
			_ = unix.Unmount(mp.Path, unix.MNT_DETACH)
		}
	}
}

var ctx = context.Background()

func mountCap(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

var rwo = mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)

func create(t *testing.T, d *Driver, name string, size int64) *csi.Volume {
	t.Helper()
	resp, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name: name, VolumeCapabilities: []*csi.VolumeCapability{rwo},
		CapacityRange: &csi.CapacityRange{RequiredBytes: size},
	})
	if err != nil {
		t.Fatalf("CreateVolume(%s): %v", name, err)
	}
	return resp.GetVolume()
}

func wantCode(t *testing.T, err error, code codes.Code, what string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: got %v, want %s", what, err, code)
	}
}

func publish(t *testing.T, d *Driver, id, target string, readOnly bool) {
	t.Helper()
	if _, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
		VolumeId: id, TargetPath: target, VolumeCapability: rwo, Readonly: readOnly,
	}); err != nil {
		t.Fatalf("NodePublishVolume(%s, %s): %v", id, target, err)
	}
}

func unpublish(t *testing.T, d *Driver, id, target string) {
	t.Helper()
	if _, err := d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
		t.Fatalf("NodeUnpublishVolume: %v", err)
	}
}

func TestCreateIsIdempotentByNameAndSize(t *testing.T) {
	d, root := newDriver(t)
	v := create(t, d, "pvc-1", 1<<20)
	if v.GetVolumeId() != "pvc-1" || v.GetCapacityBytes() != 1<<20 {
		t.Fatalf("volume = %v", v)
	}
	if got := v.GetAccessibleTopology()[0].GetSegments()[driver.TopologyKeyNode]; got != "node-a" {
		t.Errorf("topology = %q, want node-a", got)
	}
	fi, err := os.Stat(filepath.Join(root, "pvc-1"))
	if err != nil || fi.Mode().Perm() != 0o777 {
		t.Fatalf("volume directory: %v %v", fi, err)
	}
	os.WriteFile(filepath.Join(root, "pvc-1", "data"), []byte("keep"), 0o644)
	create(t, d, "pvc-1", 1<<20) // same again: same volume, data kept
	if b, _ := os.ReadFile(filepath.Join(root, "pvc-1", "data")); string(b) != "keep" {
		t.Errorf("repeated CreateVolume lost data: %q", b)
	}
	_, err = d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-1", VolumeCapabilities: []*csi.VolumeCapability{rwo},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 2 << 20}})
	wantCode(t, err, codes.AlreadyExists, "same name, larger size")
}

func TestCreateRejectsWhatItCannotServe(t *testing.T) {
	d, root := newDriver(t)
	block := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	cases := map[string]struct {
		req  *csi.CreateVolumeRequest
		code codes.Code
		msg  string
	}{
		"unknown parameter": {&csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: []*csi.VolumeCapability{rwo},
			Parameters: map[string]string{"sise": "1"}}, codes.InvalidArgument, `"sise"`},
		"block and mount": {&csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: []*csi.VolumeCapability{block, rwo}},
			codes.InvalidArgument, "both"},
		"multi-node": {&csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: []*csi.VolumeCapability{
			mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)}}, codes.InvalidArgument, "one node"},
		"other node": {&csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: []*csi.VolumeCapability{rwo},
			AccessibilityRequirements: &csi.TopologyRequirement{Requisite: []*csi.Topology{
				{Segments: map[string]string{driver.TopologyKeyNode: "node-b"}}}}}, codes.ResourceExhausted, "node-b"},
		"too big": {&csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: []*csi.VolumeCapability{rwo},
			CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 62}}, codes.ResourceExhausted, "bytes free"},
		"missing snapshot": {&csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: []*csi.VolumeCapability{rwo},
			VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
				Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: "nope"}}}}, codes.NotFound, "nope"},
	}
	for name, c := range cases {
		_, err := d.CreateVolume(ctx, c.req)
		if status.Code(err) != c.code || !strings.Contains(status.Convert(err).Message(), c.msg) {
			t.Errorf("%s: got %v, want %s mentioning %q", name, err, c.code, c.msg)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "a")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a rejected CreateVolume left %s/a behind", root)
	}
}

func TestPublishWriteUnpublishDelete(t *testing.T) {
	d, root := newDriver(t)
	create(t, d, "vol", 0)
	pods := t.TempDir()
	target := filepath.Join(pods, "target")
	publish(t, d, "vol", target, false)
	publish(t, d, "vol", target, false) // idempotent
	if err := os.WriteFile(filepath.Join(target, "hello"), []byte("world"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(root, "vol", "hello")); err != nil || string(b) != "world" {
		t.Fatalf("file written through the mount is not in the volume: %q %v", b, err)
	}
	st, err := d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "vol", VolumePath: target})
	if err != nil || st.GetUsage()[0].GetTotal() <= 0 {
		t.Fatalf("NodeGetVolumeStats: %v %v", st, err)
	}

	// A read-only publish of the same volume elsewhere cannot write.
	ro := filepath.Join(pods, "ro")
	publish(t, d, "vol", ro, true)
	if err := os.WriteFile(filepath.Join(ro, "x"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("write through a read-only publish: %v, want EROFS", err)
	}
	_, err = d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "vol", TargetPath: ro, VolumeCapability: rwo})
	wantCode(t, err, codes.AlreadyExists, "republish read-only target as read-write")

	// Still in use: DeleteVolume must refuse and keep the data.
	_, err = d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "vol"})
	wantCode(t, err, codes.FailedPrecondition, "delete a published volume")
	if _, err := os.Stat(filepath.Join(root, "vol", "hello")); err != nil {
		t.Fatalf("refused delete lost data: %v", err)
	}

	for _, tg := range []string{target, ro} {
		unpublish(t, d, "vol", tg)
		unpublish(t, d, "vol", tg) // idempotent
		if _, err := os.Lstat(tg); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("target %s not removed: %v", tg, err)
		}
	}
	for range 2 {
		if _, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "vol"}); err != nil {
			t.Fatalf("DeleteVolume: %v", err)
		}
	}
	entries, _ := os.ReadDir(root)
	for _, e := range entries {
		if e.Name() != metaDirName {
			t.Errorf("left in root after delete: %s", e.Name())
		}
	}
	if ids, _ := listIDs(d.recordDir()); len(ids) != 0 {
		t.Errorf("records left after delete: %v", ids)
	}
}

func TestSingleWriterRefusesSecondTarget(t *testing.T) {
	d, _ := newDriver(t)
	create(t, d, "sw", 0)
	one := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER)
	pods := t.TempDir()
	if _, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "sw", TargetPath: pods + "/a", VolumeCapability: one}); err != nil {
		t.Fatal(err)
	}
	defer unpublish(t, d, "sw", pods+"/a")
	_, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "sw", TargetPath: pods + "/b", VolumeCapability: one})
	wantCode(t, err, codes.FailedPrecondition, "second single-writer publish")
	if _, err := os.Lstat(pods + "/b"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("refused publish left its target behind")
	}
}

func TestSymlinkTargetIsNotFollowed(t *testing.T) {
	d, _ := newDriver(t)
	create(t, d, "v", 0)
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	os.Mkdir(victim, 0o755)
	os.WriteFile(filepath.Join(victim, "precious"), []byte("x"), 0o644)
	link := filepath.Join(dir, "target")
	os.Symlink(victim, link)

	_, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "v", TargetPath: link, VolumeCapability: rwo})
	wantCode(t, err, codes.InvalidArgument, "publish onto a symlink")
	_, err = d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "v", TargetPath: link})
	wantCode(t, err, codes.InvalidArgument, "unpublish a symlink")
	if _, err := os.Stat(filepath.Join(victim, "precious")); err != nil {
		t.Errorf("victim directory was touched: %v", err)
	}
	if mounted, _ := mount.New("").IsMountPoint(victim); mounted {
		t.Errorf("the volume was mounted through the symlink")
	}
}

func TestInterruptedCallsRecover(t *testing.T) {
	d, root := newDriver(t)
	// CreateVolume died after mkdir, before the record: the retry adopts the empty directory.
	os.Mkdir(filepath.Join(root, "half"), 0o700)
	create(t, d, "half", 0)
	if rec, _ := d.readRecord("half"); rec == nil {
		t.Fatal("retry did not record the volume")
	}
	// DeleteVolume died after removing the directory: the record keeps the volume
	// listed and a retry finishes.
	create(t, d, "gone", 0)
	os.RemoveAll(filepath.Join(root, "gone"))
	h, err := d.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: "gone"})
	if err != nil || len(h.GetVolumeHealth().GetHealthStatuses()) != 1 {
		t.Fatalf("health of a volume without its directory: %v %v", h, err)
	}
	if _, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "gone"}); err != nil {
		t.Fatal(err)
	}
	if rec, _ := d.readRecord("gone"); rec != nil {
		t.Fatal("record left after the retried delete")
	}
}

func TestSnapshotRestoreAndClone(t *testing.T) {
	d, root := newDriver(t)
	create(t, d, "src", 1<<20)
	src := filepath.Join(root, "src")
	os.MkdirAll(filepath.Join(src, "sub"), 0o750)
	os.WriteFile(filepath.Join(src, "sub", "f"), []byte("v1"), 0o640)
	os.Chown(filepath.Join(src, "sub", "f"), 1234, 5678)
	os.Symlink("sub/f", filepath.Join(src, "link"))
	os.Symlink("/etc/passwd", filepath.Join(src, "host")) // kept as a link, never dereferenced

	snap, err := d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s1", SourceVolumeId: "src"})
	if err != nil || !snap.GetSnapshot().GetReadyToUse() || snap.GetSnapshot().GetSizeBytes() != 1<<20 {
		t.Fatalf("CreateSnapshot: %v %v", snap, err)
	}
	_, err = d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s1", SourceVolumeId: "other"})
	wantCode(t, err, codes.AlreadyExists, "same snapshot name, other source")
	os.WriteFile(filepath.Join(src, "sub", "f"), []byte("v2"), 0o640)

	fromSnap := &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: "s1"}}}
	fromVol := &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: "src"}}}
	for name, want := range map[string]struct {
		src  *csi.VolumeContentSource
		data string
	}{"restored": {fromSnap, "v1"}, "cloned": {fromVol, "v2"}} {
		_, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{rwo},
			CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 19}, VolumeContentSource: want.src})
		wantCode(t, err, codes.OutOfRange, name+" smaller than its source")
		if _, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{rwo},
			VolumeContentSource: want.src}); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		f := filepath.Join(root, name, "sub", "f")
		b, _ := os.ReadFile(f)
		var st unix.Stat_t
		unix.Stat(f, &st)
		if string(b) != want.data || st.Uid != 1234 || st.Gid != 5678 || st.Mode&0o777 != 0o640 {
			t.Errorf("%s: content %q uid %d gid %d mode %o", name, b, st.Uid, st.Gid, st.Mode&0o777)
		}
		if l, _ := os.Readlink(filepath.Join(root, name, "host")); l != "/etc/passwd" {
			t.Errorf("%s: symlink not kept as a link: %q", name, l)
		}
		// The same request again names the same volume; another source does not.
		other := fromVol
		if want.src == fromVol {
			other = fromSnap
		}
		_, err = d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{rwo}, VolumeContentSource: other})
		wantCode(t, err, codes.AlreadyExists, name+" with another source")
	}
	list, err := d.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SourceVolumeId: "src"})
	if err != nil || len(list.GetEntries()) != 1 {
		t.Fatalf("ListSnapshots: %v %v", list, err)
	}
	for range 2 {
		if _, err := d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: "s1"}); err != nil {
			t.Fatal(err)
		}
	}
	left, _ := os.ReadDir(d.snapshotDir())
	if len(left) != 0 {
		t.Errorf("files left after DeleteSnapshot: %v", left)
	}
}

func TestListVolumesPages(t *testing.T) {
	d, _ := newDriver(t)
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		create(t, d, n, 0)
	}
	var got []string
	tok := ""
	for {
		resp, err := d.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 2, StartingToken: tok})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range resp.GetEntries() {
			got = append(got, e.GetVolume().GetVolumeId())
		}
		if tok = resp.GetNextToken(); tok == "" {
			break
		}
		// Deleting the last entry of a page must not invalidate the token.
		d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: got[len(got)-1]})
	}
	if !slices.Equal(got, []string{"a", "b", "c", "d", "e"}) {
		t.Errorf("pages = %v", got)
	}
	_, err := d.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: "bogus"})
	wantCode(t, err, codes.Aborted, "unknown token")
}

// A symlink anywhere in the target, not only its last component, is refused
// by publish and unpublish: nothing is created, mounted or removed at its
// destination.
func TestSymlinkedTargetParentIsNotFollowed(t *testing.T) {
	d, _ := newDriver(t)
	create(t, d, "v", 0)
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	os.MkdirAll(filepath.Join(victim, "target"), 0o755)
	os.WriteFile(filepath.Join(victim, "precious"), []byte("x"), 0o644)
	os.Symlink(victim, filepath.Join(dir, "link"))
	for _, target := range []string{filepath.Join(dir, "link", "new"), filepath.Join(dir, "link", "target")} {
		_, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "v", TargetPath: target, VolumeCapability: rwo})
		wantCode(t, err, codes.InvalidArgument, "publish under a symlinked parent")
		_, err = d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "v", TargetPath: target})
		wantCode(t, err, codes.InvalidArgument, "unpublish under a symlinked parent")
	}
	if _, err := os.Lstat(filepath.Join(victim, "new")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a target was created in the symlink's destination")
	}
	if _, err := os.Stat(filepath.Join(victim, "target")); err != nil {
		t.Errorf("unpublish removed the symlink's destination: %v", err)
	}
	if mounted, _ := mount.New("").IsMountPoint(filepath.Join(victim, "target")); mounted {
		t.Errorf("the volume was mounted through the symlinked parent")
	}
}

// Targets in, on or above the root are refused: a mount there would land in
// another volume's data or the records, or hide them.
func TestTargetsInTheRootAreRefused(t *testing.T) {
	d, root := newDriver(t)
	create(t, d, "a", 0)
	create(t, d, "b", 0)
	os.WriteFile(filepath.Join(root, "b", "data"), []byte("b's"), 0o644)
	for _, target := range []string{
		filepath.Join(root, "b"), filepath.Join(root, "b", "sub"), filepath.Join(root, metaDirName),
		filepath.Join(root, metaDirName, "snapshots"), root, filepath.Dir(root), filepath.Join(root, "new-dir"),
	} {
		_, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "a", TargetPath: target, VolumeCapability: rwo})
		wantCode(t, err, codes.InvalidArgument, "publish at "+target)
		if msg := status.Convert(err).Message(); !strings.Contains(msg, "root") {
			t.Errorf("the refusal does not say why: %q", msg)
		}
		_, err = d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "b", TargetPath: target})
		wantCode(t, err, codes.InvalidArgument, "unpublish at "+target)
	}
	if b, err := os.ReadFile(filepath.Join(root, "b", "data")); err != nil || string(b) != "b's" {
		t.Errorf("volume b lost its data: %q, %v", b, err)
	}
	if _, err := os.Lstat(filepath.Join(root, "new-dir")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused publish created a directory in the root")
	}
}

// DeleteVolume of a volume with another filesystem mounted on or in its
// directory removes nothing and says so.
func TestDeleteThroughAForeignMount(t *testing.T) {
	d, root := newDriver(t)
	for _, sub := range []string{"", "sub"} {
		create(t, d, "a", 0)
		create(t, d, "b", 0)
		os.WriteFile(filepath.Join(root, "b", "data"), []byte("b's"), 0o644)
		at := filepath.Join(root, "a", sub)
		os.MkdirAll(at, 0o755)
		if err := unix.Mount(filepath.Join(root, "b"), at, "", unix.MS_BIND, ""); err != nil {
			t.Fatal(err)
		}
		_, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "a"})
		wantCode(t, err, codes.FailedPrecondition, "delete with a mount at "+at)
		if b, err := os.ReadFile(filepath.Join(root, "b", "data")); err != nil || string(b) != "b's" {
			t.Errorf("delete went through the mount at %s: %q, %v", at, b, err)
		}
		if rec, _ := d.readRecord("a"); rec == nil {
			t.Errorf("the refused delete removed the record")
		}
		if err := unix.Unmount(at, 0); err != nil {
			t.Fatal(err)
		}
		for _, id := range []string{"a", "b"} {
			if _, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// Plain bad input is never INTERNAL.
func TestBadTargetsAreNotInternal(t *testing.T) {
	d, _ := newDriver(t)
	create(t, d, "v", 0)
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("keep"), 0o644)
	_, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "v", TargetPath: file, VolumeCapability: rwo})
	wantCode(t, err, codes.InvalidArgument, "publish at a regular file")
	_, err = d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "v", TargetPath: file})
	wantCode(t, err, codes.InvalidArgument, "unpublish a regular file")
	full := filepath.Join(dir, "full")
	os.MkdirAll(filepath.Join(full, "sub"), 0o755)
	_, err = d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "v", TargetPath: full})
	wantCode(t, err, codes.FailedPrecondition, "unpublish a non-empty directory that is not a mount")
	if _, err := os.Stat(filepath.Join(full, "sub")); err != nil {
		t.Errorf("unpublish removed what was in the directory: %v", err)
	}
	_, err = d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "v", TargetPath: filepath.Join(dir, "no", "target"), VolumeCapability: rwo})
	wantCode(t, err, codes.FailedPrecondition, "publish under a missing parent")
	for _, flag := range []string{"remount", "move", "rbind", "size=1m", "X-mount.mkdir"} {
		vc := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
		vc.GetMount().MountFlags = []string{flag}
		_, err = d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "v", TargetPath: filepath.Join(dir, "t"), VolumeCapability: vc})
		wantCode(t, err, codes.InvalidArgument, "mount flag "+flag)
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "keep" {
		t.Errorf("the file was touched: %q, %v", b, err)
	}
}

// A mount over the record directory (or the root) is noticed before a
// record is written into what it hides.
func TestMountOverTheRecordsIsNoticed(t *testing.T) {
	d, root := newDriver(t)
	create(t, d, "a", 0)
	meta := filepath.Join(root, metaDirName)
	if err := unix.Mount("tmpfs", meta, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	_, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "b", VolumeCapabilities: []*csi.VolumeCapability{rwo}})
	wantCode(t, err, codes.FailedPrecondition, "create with a mount over the records")
	_, err = d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "a"})
	wantCode(t, err, codes.FailedPrecondition, "delete with a mount over the records")
	if es, _ := os.ReadDir(meta); len(es) != 0 {
		t.Errorf("written into the mount over the records: %v", es)
	}
	if err := unix.Unmount(meta, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "a")); err != nil {
		t.Errorf("volume a is gone: %v", err)
	}
	if _, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "a"}); err != nil {
		t.Fatal(err)
	}
}

// A second driver on a root waits until the first is gone: two would take
// each other's published loop devices for leaks and share project IDs.
func TestOneDriverPerRoot(t *testing.T) {
	first, root := newDriver(t)
	got := make(chan *Driver, 1)
	go func() {
		d, err := New(Config{NodeID: "node-a", Root: root})
		if err != nil {
			t.Error(err)
		}
		got <- d
	}()
	select {
	case d := <-got:
		d.Close()
		t.Fatal("a second driver started on a root another one serves")
	case <-time.After(300 * time.Millisecond):
	}
	first.Close()
	select {
	case d := <-got:
		if d != nil {
			d.Close()
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the second driver did not start once the first was closed")
	}
}
