package sanity

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
)

// localEnv is a running `monocsi serve --driver=local` for hostile cases.
type localEnv struct {
	ctl  csi.ControllerClient
	node csi.NodeClient
	root string
	n    int
}

// volume creates a fresh volume holding a file "data" and returns its ID.
func (e *localEnv) volume(t *testing.T) string {
	t.Helper()
	e.n++
	id := fmt.Sprintf("vol-%d", e.n)
	if _, err := e.ctl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: id, VolumeCapabilities: []*csi.VolumeCapability{rwoMount}}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.dir(id, "data"), []byte(id+"'s data"), 0o644); err != nil {
		t.Fatal(err)
	}
	return id
}

func (e *localEnv) dir(id string, sub ...string) string {
	return filepath.Join(append([]string{e.root, id}, sub...)...)
}

// intact checks that volume id still has its directory, its data and its record.
func (e *localEnv) intact(t *testing.T, id string) {
	t.Helper()
	if b, err := os.ReadFile(e.dir(id, "data")); err != nil || string(b) != id+"'s data" {
		t.Errorf("volume %s lost its data: %q, %v", id, b, err)
	}
	if _, err := os.Stat(filepath.Join(e.root, ".monocsi", id+".json")); err != nil {
		t.Errorf("volume %s lost its record: %v", id, err)
	}
}

// gone removes volume id (the case's own cleanup).
func (e *localEnv) gone(t *testing.T, id string) {
	t.Helper()
	if _, err := e.ctl.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Errorf("delete %s: %v", id, err)
	}
}

func (e *localEnv) publish(id, target string, flags ...string) error {
	vc := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{MountFlags: flags}},
		AccessMode: rwoMount.AccessMode}
	_, err := e.node.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{VolumeId: id, TargetPath: target, VolumeCapability: vc})
	return err
}

func (e *localEnv) unpublish(id, target string) error {
	_, err := e.node.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
	return err
}

func (e *localEnv) deleteVolume(id string) error {
	_, err := e.ctl.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id})
	return err
}

func mustMount(t *testing.T, src, target, fstype string, flags uintptr) {
	t.Helper()
	if err := unix.Mount(src, target, fstype, flags, ""); err != nil {
		t.Fatalf("mount %s at %s: %v", src, target, err)
	}
}

func mustUnmount(t *testing.T, target string) {
	t.Helper()
	if err := unix.Unmount(target, 0); err != nil {
		t.Errorf("unmount %s: %v", target, err)
	}
}

// TestHostileLocal aims at the local driver's own storage: targets in, on
// or above its root (another volume's directory, the records), DeleteVolume
// through a mount on or in the volume's directory, a mount over the
// records, volume directories replaced by symlinks, mount flags that are no
// bind mount's. Each case checks the code, the canary tree, the mounts and
// the processes (runHostile).
func TestHostileLocal(t *testing.T) {
	requireRoot(t)
	sock, root := serveLocal(t)
	conn := dial(t, sock)
	e := &localEnv{ctl: csi.NewControllerClient(conn), node: csi.NewNodeClient(conn), root: root}
	c := newCanary(t)
	pods := realTempDir(t)
	target := func(t *testing.T) string { return filepath.Join(caseDir(t, pods), "target") }
	var a, b string // the case's volumes
	two := func(t *testing.T) { a, b = e.volume(t), e.volume(t) }
	bothIntact := func(t *testing.T) { e.intact(t, a); e.intact(t, b); e.gone(t, a); e.gone(t, b) }
	var tmp string // a case's own mount point
	cases := []hostileCase{
		{name: "publish at another volume's directory", run: func(t *testing.T) error {
			two(t)
			return e.publish(a, e.dir(b))
		}, after: bothIntact},
		{name: "publish inside another volume's directory", run: func(t *testing.T) error {
			two(t)
			return e.publish(a, e.dir(b, "sub"))
		}, after: func(t *testing.T) {
			if _, err := os.Lstat(e.dir(b, "sub")); !os.IsNotExist(err) {
				t.Errorf("created in another volume: %v", err)
			}
			bothIntact(t)
		}},
		{name: "publish at the record directory", run: func(t *testing.T) error {
			a = e.volume(t)
			return e.publish(a, filepath.Join(root, ".monocsi"))
		}, after: func(t *testing.T) { e.intact(t, a); e.gone(t, a) }},
		{name: "publish inside the record directory", run: func(t *testing.T) error {
			a = e.volume(t)
			return e.publish(a, filepath.Join(root, ".monocsi", "snapshots"))
		}, after: func(t *testing.T) { e.intact(t, a); e.gone(t, a) }},
		{name: "publish at a new directory among the records", run: func(t *testing.T) error {
			a = e.volume(t)
			return e.publish(a, filepath.Join(root, ".monocsi", "new", "x"))
		}, after: func(t *testing.T) {
			if _, err := os.Lstat(filepath.Join(root, ".monocsi", "new", "x")); !os.IsNotExist(err) {
				t.Errorf("created among the records: %v", err)
			}
			e.gone(t, a)
		}},
		{name: "publish at the root", run: func(t *testing.T) error {
			a = e.volume(t)
			return e.publish(a, root)
		}, after: func(t *testing.T) { e.intact(t, a); e.gone(t, a) }},
		{name: "publish above the root", run: func(t *testing.T) error {
			a = e.volume(t)
			return e.publish(a, filepath.Dir(root))
		}, after: func(t *testing.T) { e.intact(t, a); e.gone(t, a) }},
		{name: "publish at a new directory in the root", run: func(t *testing.T) error {
			a = e.volume(t)
			return e.publish(a, filepath.Join(root, "not-a-volume"))
		}, after: func(t *testing.T) {
			if _, err := os.Lstat(filepath.Join(root, "not-a-volume")); !os.IsNotExist(err) {
				t.Errorf("created in the root: %v", err)
			}
			e.gone(t, a)
		}},
		{name: "publish into another volume through a bind mount of the root", run: func(t *testing.T) error {
			two(t)
			tmp = mustMkdir(t, filepath.Join(caseDir(t, pods), "alias"))
			mustMount(t, root, tmp, "", unix.MS_BIND)
			return e.publish(a, filepath.Join(tmp, b))
		}, after: func(t *testing.T) { mustUnmount(t, tmp); bothIntact(t) }},
		{name: "unpublish another volume's directory", run: func(t *testing.T) error {
			two(t)
			os.Remove(e.dir(b, "data")) // empty: an rmdir would take it
			return e.unpublish(a, e.dir(b))
		}, after: func(t *testing.T) {
			if _, err := os.Stat(e.dir(b)); err != nil {
				t.Errorf("unpublish removed another volume's directory: %v", err)
			}
			e.gone(t, a)
			e.gone(t, b)
		}},
		{name: "unpublish the record directory", run: func(t *testing.T) error {
			a = e.volume(t)
			return e.unpublish(a, filepath.Join(root, ".monocsi", "new"))
		}, after: func(t *testing.T) {
			if _, err := os.Stat(filepath.Join(root, ".monocsi", "new")); err != nil {
				t.Errorf("unpublish removed a directory of the records: %v", err)
			}
			e.gone(t, a)
		}},
		{name: "delete a volume with another volume mounted on its directory", codes: []codes.Code{codes.FailedPrecondition}, run: func(t *testing.T) error {
			two(t)
			mustMount(t, e.dir(b), e.dir(a), "", unix.MS_BIND)
			return e.deleteVolume(a)
		}, after: func(t *testing.T) { mustUnmount(t, e.dir(a)); bothIntact(t) }},
		{name: "delete a volume with another volume mounted inside", codes: []codes.Code{codes.FailedPrecondition}, run: func(t *testing.T) error {
			two(t)
			mustMount(t, e.dir(b), mustMkdir(t, e.dir(a, "sub", "mnt")), "", unix.MS_BIND)
			return e.deleteVolume(a)
		}, after: func(t *testing.T) { mustUnmount(t, e.dir(a, "sub", "mnt")); bothIntact(t) }},
		{name: "delete a volume with the canary mounted on its directory", codes: []codes.Code{codes.FailedPrecondition}, run: func(t *testing.T) error {
			a = e.volume(t)
			mustMount(t, c.dir, e.dir(a), "", unix.MS_BIND)
			return e.deleteVolume(a)
		}, after: func(t *testing.T) { mustUnmount(t, e.dir(a)); e.intact(t, a); e.gone(t, a) }},
		{name: "delete a volume with the canary mounted inside", codes: []codes.Code{codes.FailedPrecondition}, run: func(t *testing.T) error {
			a = e.volume(t)
			mustMount(t, c.dir, mustMkdir(t, e.dir(a, "mnt")), "", unix.MS_BIND)
			return e.deleteVolume(a)
		}, after: func(t *testing.T) { mustUnmount(t, e.dir(a, "mnt")); e.intact(t, a); e.gone(t, a) }},
		{name: "delete a volume with a tmpfs mounted inside", codes: []codes.Code{codes.FailedPrecondition}, run: func(t *testing.T) error {
			a = e.volume(t)
			tmp = mustMkdir(t, e.dir(a, "tmp"))
			mustMount(t, "tmpfs", tmp, "tmpfs", 0)
			if err := os.WriteFile(filepath.Join(tmp, "f"), []byte("on tmpfs"), 0o644); err != nil {
				t.Fatal(err)
			}
			return e.deleteVolume(a)
		}, after: func(t *testing.T) {
			if b, err := os.ReadFile(filepath.Join(tmp, "f")); err != nil || string(b) != "on tmpfs" {
				t.Errorf("delete removed files of the tmpfs: %q, %v", b, err)
			}
			mustUnmount(t, tmp)
			e.intact(t, a)
			e.gone(t, a)
		}},
		{name: "delete a published volume", codes: []codes.Code{codes.FailedPrecondition}, run: func(t *testing.T) error {
			a = e.volume(t)
			tmp = target(t)
			if err := e.publish(a, tmp); err != nil {
				t.Fatal(err)
			}
			return e.deleteVolume(a)
		}, after: func(t *testing.T) {
			if err := e.unpublish(a, tmp); err != nil {
				t.Error(err)
			}
			e.intact(t, a)
			e.gone(t, a)
		}},
		{name: "delete a volume whose directory is a symlink to the canary", codes: []codes.Code{codes.OK}, run: func(t *testing.T) error {
			a = e.volume(t)
			if err := os.RemoveAll(e.dir(a)); err != nil {
				t.Fatal(err)
			}
			mustSymlink(t, c.dir, e.dir(a))
			return e.deleteVolume(a)
		}, after: func(t *testing.T) {
			if _, err := os.Lstat(e.dir(a)); !os.IsNotExist(err) {
				t.Errorf("the symlink is still there: %v", err)
			}
		}},
		{name: "publish a volume whose directory is a symlink to the canary", codes: []codes.Code{codes.FailedPrecondition}, run: func(t *testing.T) error {
			a = e.volume(t)
			if err := os.RemoveAll(e.dir(a)); err != nil {
				t.Fatal(err)
			}
			mustSymlink(t, c.dir, e.dir(a))
			return e.publish(a, target(t))
		}, after: func(t *testing.T) { e.gone(t, a) }},
		{name: "create a volume with a tmpfs mounted over the records", codes: []codes.Code{codes.FailedPrecondition}, run: func(t *testing.T) error {
			tmp = filepath.Join(root, ".monocsi")
			mustMount(t, "tmpfs", tmp, "tmpfs", 0)
			_, err := e.ctl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "over-records", VolumeCapabilities: []*csi.VolumeCapability{rwoMount}})
			return err
		}, after: func(t *testing.T) {
			if es, _ := os.ReadDir(tmp); len(es) != 0 {
				t.Errorf("a record was written into the mount over the records: %v", es)
			}
			mustUnmount(t, tmp)
			if _, err := os.Lstat(filepath.Join(root, "over-records")); !os.IsNotExist(err) {
				t.Errorf("the refused volume's directory was created: %v", err)
			}
		}},
		{name: "create a volume with a tmpfs mounted over the root", codes: []codes.Code{codes.FailedPrecondition}, run: func(t *testing.T) error {
			mustMount(t, "tmpfs", root, "tmpfs", 0)
			_, err := e.ctl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "over-root", VolumeCapabilities: []*csi.VolumeCapability{rwoMount}})
			return err
		}, after: func(t *testing.T) {
			if es, _ := os.ReadDir(root); len(es) != 0 {
				t.Errorf("written into the mount over the root: %v", es)
			}
			mustUnmount(t, root)
		}},
		{name: "delete a volume with a tmpfs mounted over the records", codes: []codes.Code{codes.FailedPrecondition}, run: func(t *testing.T) error {
			a = e.volume(t)
			tmp = filepath.Join(root, ".monocsi")
			mustMount(t, "tmpfs", tmp, "tmpfs", 0)
			return e.deleteVolume(a)
		}, after: func(t *testing.T) { mustUnmount(t, tmp); e.intact(t, a); e.gone(t, a) }},
		{name: "publish at a target another volume is mounted on", codes: []codes.Code{codes.AlreadyExists}, run: func(t *testing.T) error {
			two(t)
			tmp = target(t)
			if err := e.publish(b, tmp); err != nil {
				t.Fatal(err)
			}
			return e.publish(a, tmp)
		}, after: func(t *testing.T) {
			if _, err := os.Stat(filepath.Join(tmp, "data")); err != nil {
				t.Errorf("the other volume is no longer visible at its target: %v", err)
			}
			if err := e.unpublish(b, tmp); err != nil {
				t.Error(err)
			}
			bothIntact(t)
		}},
		{name: "stats of another volume's directory", codes: []codes.Code{codes.NotFound}, run: func(t *testing.T) error {
			two(t)
			_, err := e.node.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: a, VolumePath: e.dir(b)})
			return err
		}, after: bothIntact},
		{name: "stats through a symlink to the volume's directory", run: func(t *testing.T) error {
			a = e.volume(t)
			link := mustSymlink(t, root, filepath.Join(caseDir(t, pods), "link"))
			_, err := e.node.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: a, VolumePath: filepath.Join(link, a)})
			return err
		}, after: func(t *testing.T) { e.gone(t, a) }},
	}
	for _, flag := range []string{"remount", "move", "rbind", "X-mount.mkdir", "size=1m", "ro,exec", "bind\nro"} {
		cases = append(cases, hostileCase{name: fmt.Sprintf("mount flag %q", flag), run: func(t *testing.T) error {
			a = e.volume(t)
			return e.publish(a, target(t), flag)
		}, after: func(t *testing.T) { e.gone(t, a) }})
	}
	n := runHostile(t, c, []string{pods, filepath.Dir(root)}, cases)
	t.Logf("%d hostile local cases", n)
}
