package sanity

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
)

var rwoBlock = &csi.VolumeCapability{
	AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
}

// blockVolume creates a fresh 1 MiB block volume whose file starts with
// "<id>'s data" and returns its ID.
func (e *localEnv) blockVolume(t *testing.T) string {
	t.Helper()
	e.n++
	id := fmt.Sprintf("blk-%d", e.n)
	if _, err := e.ctl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: id, VolumeCapabilities: []*csi.VolumeCapability{rwoBlock},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}}); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(e.dir(id), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte(id+"'s data"), 0); err != nil {
		t.Fatal(err)
	}
	return id
}

// blockIntact checks that block volume id still has its file of 1 MiB,
// its data and its record.
func (e *localEnv) blockIntact(t *testing.T, id string) {
	t.Helper()
	b, err := os.ReadFile(e.dir(id))
	if err != nil || len(b) != 1<<20 || string(b[:len(id)+7]) != id+"'s data" {
		t.Errorf("block volume %s lost its data (%d bytes): %v", id, len(b), err)
	}
	if _, err := os.Stat(filepath.Join(e.root, ".monocsi", id+".json")); err != nil {
		t.Errorf("volume %s lost its record: %v", id, err)
	}
}

func (e *localEnv) publishBlock(id, target string) error {
	_, err := e.node.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{VolumeId: id, TargetPath: target, VolumeCapability: rwoBlock})
	return err
}

// TestHostileLocalBlock aims at block volumes: targets that are
// directories, symlinks, in the root or the volumes' files; capabilities of
// the other kind; shrinking; a volume's file replaced or turned into a
// symlink behind the driver's back; deleting or unpublishing what is in
// use. Besides runHostile's checks, no loop device may be left attached to
// a file of the root once a case has cleaned up.
func TestHostileLocalBlock(t *testing.T) {
	requireRoot(t)
	sock, root := serveLocal(t)
	conn := dial(t, sock)
	e := &localEnv{ctl: csi.NewControllerClient(conn), node: csi.NewNodeClient(conn), root: root}
	c := newCanary(t)
	pods := realTempDir(t)
	target := func(t *testing.T) string { return filepath.Join(caseDir(t, pods), "target") }
	var a, b string
	var tmp string
	gone := func(t *testing.T, ids ...string) {
		for _, id := range ids {
			e.gone(t, id)
		}
		assertNoLoopsOf(t, root)
	}
	intactGone := func(t *testing.T) { e.blockIntact(t, a); gone(t, a) }
	bothGone := func(t *testing.T) { e.blockIntact(t, a); e.blockIntact(t, b); gone(t, a, b) }
	cases := []hostileCase{
		{name: "block publish at a directory", run: func(t *testing.T) error {
			a = e.blockVolume(t)
			tmp = mustMkdir(t, target(t))
			return e.publishBlock(a, tmp)
		}, after: func(t *testing.T) {
			if es, err := os.ReadDir(tmp); err != nil || len(es) != 0 {
				t.Errorf("the directory target changed: %v, %v", es, err)
			}
			intactGone(t)
		}},
		{name: "block publish at a symlink to a canary file", run: func(t *testing.T) error {
			a = e.blockVolume(t)
			return e.publishBlock(a, mustSymlink(t, c.path("precious"), target(t)))
		}, after: intactGone},
		{name: "block publish through a symlinked parent into the canary", run: func(t *testing.T) error {
			a = e.blockVolume(t)
			link := mustSymlink(t, c.dir, filepath.Join(caseDir(t, pods), "link"))
			return e.publishBlock(a, filepath.Join(link, "new-target"))
		}, after: intactGone},
		{name: "block publish at a new file in the root", run: func(t *testing.T) error {
			a = e.blockVolume(t)
			return e.publishBlock(a, filepath.Join(root, "not-a-volume"))
		}, after: func(t *testing.T) {
			if _, err := os.Lstat(filepath.Join(root, "not-a-volume")); !os.IsNotExist(err) {
				t.Errorf("created in the root: %v", err)
			}
			intactGone(t)
		}},
		{name: "block publish at the volume's own file", run: func(t *testing.T) error {
			a = e.blockVolume(t)
			return e.publishBlock(a, e.dir(a))
		}, after: intactGone},
		{name: "block publish at another block volume's file", run: func(t *testing.T) error {
			a, b = e.blockVolume(t), e.blockVolume(t)
			return e.publishBlock(a, e.dir(b))
		}, after: bothGone},
		{name: "block publish at a file among the records", run: func(t *testing.T) error {
			a = e.blockVolume(t)
			return e.publishBlock(a, filepath.Join(root, ".monocsi", a+".json"))
		}, after: intactGone},
		{name: "block capability on a filesystem volume", run: func(t *testing.T) error {
			a = e.volume(t)
			return e.publishBlock(a, target(t))
		}, after: func(t *testing.T) { e.intact(t, a); gone(t, a) }},
		{name: "mount capability on a block volume", run: func(t *testing.T) error {
			a = e.blockVolume(t)
			return e.publish(a, target(t))
		}, after: intactGone},
		{name: "block create from a filesystem volume", run: func(t *testing.T) error {
			a = e.volume(t)
			_, err := e.ctl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "blk-clone", VolumeCapabilities: []*csi.VolumeCapability{rwoBlock},
				VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: a}}}})
			return err
		}, after: func(t *testing.T) {
			if _, err := os.Lstat(filepath.Join(root, "blk-clone")); !os.IsNotExist(err) {
				t.Errorf("the refused clone exists: %v", err)
			}
			e.intact(t, a)
			gone(t, a)
		}},
		{name: "block volume shrunk", codes: []codes.Code{codes.OutOfRange}, run: func(t *testing.T) error {
			a = e.blockVolume(t)
			_, err := e.ctl.ControllerExpandVolume(context.Background(), &csi.ControllerExpandVolumeRequest{VolumeId: a, CapacityRange: &csi.CapacityRange{RequiredBytes: 4096}})
			return err
		}, after: intactGone},
		{name: "delete a published block volume", codes: []codes.Code{codes.FailedPrecondition}, run: func(t *testing.T) error {
			a = e.blockVolume(t)
			tmp = target(t)
			if err := e.publishBlock(a, tmp); err != nil {
				t.Fatal(err)
			}
			return e.deleteVolume(a)
		}, after: func(t *testing.T) {
			if err := e.unpublish(a, tmp); err != nil {
				t.Error(err)
			}
			intactGone(t)
		}},
		{name: "block publish at a target another block volume is on", codes: []codes.Code{codes.AlreadyExists}, run: func(t *testing.T) error {
			a, b = e.blockVolume(t), e.blockVolume(t)
			tmp = target(t)
			if err := e.publishBlock(b, tmp); err != nil {
				t.Fatal(err)
			}
			return e.publishBlock(a, tmp)
		}, after: func(t *testing.T) {
			if got, err := os.ReadFile(tmp); err != nil || string(got[:len(b)+7]) != b+"'s data" {
				t.Errorf("the other volume is no longer at its target: %v", err)
			}
			if err := e.unpublish(b, tmp); err != nil {
				t.Error(err)
			}
			bothGone(t)
		}},
		{name: "block publish after the volume's file was replaced while published", codes: []codes.Code{codes.FailedPrecondition}, run: func(t *testing.T) error {
			a = e.blockVolume(t)
			tmp = target(t)
			if err := e.publishBlock(a, tmp); err != nil {
				t.Fatal(err)
			}
			other := filepath.Join(root, "replacement")
			if err := os.WriteFile(other, make([]byte, 1<<20), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(other, e.dir(a)); err != nil {
				t.Fatal(err)
			}
			return e.publishBlock(a, target(t))
		}, after: func(t *testing.T) {
			// The pod's device still reaches the old data; unpublishing
			// detaches it.
			if got, err := os.ReadFile(tmp); err != nil || string(got[:len(a)+7]) != a+"'s data" {
				t.Errorf("the published device lost its data: %v", err)
			}
			if err := e.unpublish(a, tmp); err != nil {
				t.Error(err)
			}
			gone(t, a)
		}},
		{name: "block publish of a volume whose file is a symlink to the canary", codes: []codes.Code{codes.FailedPrecondition}, run: func(t *testing.T) error {
			a = e.blockVolume(t)
			if err := os.Remove(e.dir(a)); err != nil {
				t.Fatal(err)
			}
			mustSymlink(t, c.path("disk.img"), e.dir(a))
			return e.publishBlock(a, target(t))
		}, after: func(t *testing.T) { gone(t, a) }},
		{name: "block expand of a volume whose file is a symlink to the canary", codes: []codes.Code{codes.FailedPrecondition}, run: func(t *testing.T) error {
			a = e.blockVolume(t)
			if err := os.Remove(e.dir(a)); err != nil {
				t.Fatal(err)
			}
			mustSymlink(t, c.path("disk.img"), e.dir(a))
			_, err := e.ctl.ControllerExpandVolume(context.Background(), &csi.ControllerExpandVolumeRequest{VolumeId: a, CapacityRange: &csi.CapacityRange{RequiredBytes: 2 << 20}})
			return err
		}, after: func(t *testing.T) { gone(t, a) }},
		{name: "delete a block volume whose file is a symlink to the canary", codes: []codes.Code{codes.OK}, run: func(t *testing.T) error {
			a = e.blockVolume(t)
			if err := os.Remove(e.dir(a)); err != nil {
				t.Fatal(err)
			}
			mustSymlink(t, c.path("disk.img"), e.dir(a))
			return e.deleteVolume(a)
		}, after: func(t *testing.T) {
			if _, err := os.Lstat(e.dir(a)); !os.IsNotExist(err) {
				t.Errorf("the symlink is still there: %v", err)
			}
			assertNoLoopsOf(t, root)
		}},
		{name: "block unpublish of a file holding data", codes: []codes.Code{codes.FailedPrecondition}, run: func(t *testing.T) error {
			a = e.blockVolume(t)
			tmp = target(t)
			if err := os.WriteFile(tmp, []byte("not the driver's"), 0o600); err != nil {
				t.Fatal(err)
			}
			return e.unpublish(a, tmp)
		}, after: func(t *testing.T) {
			if got, err := os.ReadFile(tmp); err != nil || string(got) != "not the driver's" {
				t.Errorf("unpublish touched the file: %q, %v", got, err)
			}
			intactGone(t)
		}},
		{name: "block stats at another volume's target", codes: []codes.Code{codes.NotFound}, run: func(t *testing.T) error {
			a, b = e.blockVolume(t), e.blockVolume(t)
			tmp = target(t)
			if err := e.publishBlock(b, tmp); err != nil {
				t.Fatal(err)
			}
			_, err := e.node.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: a, VolumePath: tmp})
			return err
		}, after: func(t *testing.T) {
			if err := e.unpublish(b, tmp); err != nil {
				t.Error(err)
			}
			bothGone(t)
		}},
	}
	n := runHostile(t, c, []string{pods, filepath.Dir(root)}, cases)
	t.Logf("%d hostile local block cases", n)
}
