package sanity

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// targetDriver is one driver under the cross-driver target tests: a volume
// ready to be published, and how.
type targetDriver struct {
	conn       *grpc.ClientConn
	node       csi.NodeClient
	volumeID   string
	context    map[string]string
	capability *csi.VolumeCapability
	// staging is where an attaching driver's volume is staged ("" for the
	// others); publishContext is what ControllerPublishVolume returned.
	staging        string
	publishContext map[string]string
	stats          bool     // the driver serves NodeGetVolumeStats
	mountDirs      []string // the driver's own directories: no mount may be left there
}

func (d *targetDriver) publish(target string) error {
	return d.publishFrom(target, d.staging)
}

func (d *targetDriver) publishFrom(target, staging string) error {
	_, err := d.node.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{
		VolumeId: d.volumeID, TargetPath: target, StagingTargetPath: staging, VolumeCapability: d.capability,
		VolumeContext: d.context, PublishContext: d.publishContext})
	return err
}

func (d *targetDriver) unpublish(target string) error {
	_, err := d.node.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: d.volumeID, TargetPath: target})
	return err
}

func (d *targetDriver) stage(staging string) error {
	_, err := d.node.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{
		VolumeId: d.volumeID, StagingTargetPath: staging, VolumeCapability: d.capability,
		VolumeContext: d.context, PublishContext: d.publishContext})
	return err
}

func (d *targetDriver) unstage(staging string) error {
	_, err := d.node.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: d.volumeID, StagingTargetPath: staging})
	return err
}

// publishRaw publishes at target with the bytes "\xff\xfe" in place of
// the target's "@@": a string field that is not UTF-8, which no Go client
// can send (the marshaller refuses it), but a client in another language can.
func (d *targetDriver) publishRaw(target string) error {
	req, err := proto.Marshal(&csi.NodePublishVolumeRequest{VolumeId: d.volumeID, TargetPath: target, StagingTargetPath: d.staging,
		VolumeCapability: d.capability, VolumeContext: d.context, PublishContext: d.publishContext})
	if err != nil {
		return err
	}
	req = bytes.Replace(req, []byte("@@"), []byte("\xff\xfe"), 1)
	return d.invokeRaw(csi.Node_NodePublishVolume_FullMethodName, req)
}

func (d *targetDriver) invokeRaw(method string, req []byte) error {
	var resp []byte
	return d.conn.Invoke(context.Background(), method, &req, &resp, grpc.ForceCodecV2(rawCodec{}))
}

// rawCodec sends bytes as they are.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

func (rawCodec) Name() string { return "proto" }

func (d *targetDriver) statsAt(p string) error {
	_, err := d.node.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: d.volumeID, VolumePath: p})
	return err
}

func dial(t *testing.T, sock string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func realTempDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

var rwoMount = &csi.VolumeCapability{
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
}

// TestHostileTargets sends target and staging paths that try to redirect a
// mount, an unmount or a removal (a symlink in any component, a file, a
// missing parent, a magic link, a path that is not clean) to every driver:
// local, nfs (the emulation) and flex (bindmount, without attach; loopdev,
// with staging). Each call must fail with the right code and a message,
// leave the canary tree and the mount table as they were, and leave no
// process behind.
func TestHostileTargets(t *testing.T) {
	requireRoot(t)
	total := 0
	for _, drv := range []struct {
		name  string
		setup func(t *testing.T) *targetDriver
		stage bool
	}{
		{"local", setupLocalTarget, false},
		{"nfs", setupNFSTarget, false},
		{"flex-bindmount", setupFlexBindmountTarget, false},
		{"flex-loopdev", setupFlexLoopdevTarget, true},
	} {
		t.Run(drv.name, func(t *testing.T) {
			d := drv.setup(t)
			c := newCanary(t)
			pods := realTempDir(t)
			cases := targetCases(d, c, pods)
			if drv.stage {
				cases = append(cases, stagingCases(d, c, pods)...)
			}
			total += runHostile(t, c, append([]string{pods}, d.mountDirs...), cases)
		})
	}
	t.Logf("%d hostile target and staging cases", total)
}

func setupLocalTarget(t *testing.T) *targetDriver {
	sock, root := serveLocal(t)
	conn := dial(t, sock)
	if _, err := csi.NewControllerClient(conn).CreateVolume(context.Background(), &csi.CreateVolumeRequest{
		Name: "vol-a", VolumeCapabilities: []*csi.VolumeCapability{rwoMount}}); err != nil {
		t.Fatal(err)
	}
	return &targetDriver{conn: conn, node: csi.NewNodeClient(conn), volumeID: "vol-a", capability: rwoMount, stats: true, mountDirs: []string{filepath.Dir(root)}}
}

func setupNFSTarget(t *testing.T) *targetDriver {
	n := nfsSetup(t)
	srv := serveNFS(t, n)
	resp, err := csi.NewControllerClient(srv.conn).CreateVolume(context.Background(), &csi.CreateVolumeRequest{
		Name: "vol-a", Parameters: n.params(), VolumeCapabilities: []*csi.VolumeCapability{fsCap}})
	if err != nil {
		t.Fatal(err)
	}
	return &targetDriver{conn: srv.conn, node: csi.NewNodeClient(srv.conn), volumeID: resp.GetVolume().GetVolumeId(), context: resp.GetVolume().GetVolumeContext(),
		capability: fsCap, stats: true, mountDirs: []string{srv.work}}
}

func setupFlexBindmountTarget(t *testing.T) *targetDriver {
	sock, dir := serveFlex(t, "bindmount")
	conn := dial(t, sock)
	return &targetDriver{conn: conn, node: csi.NewNodeClient(conn), volumeID: "vol-a", capability: rwoMount,
		context: map[string]string{"source": filepath.Join(dir, "src")}, mountDirs: []string{dir}}
}

// setupFlexLoopdevTarget attaches and stages a loop device volume; the
// cases publish it. It is unstaged and detached at the end.
func setupFlexLoopdevTarget(t *testing.T) *targetDriver {
	sock, dir := serveFlex(t, "loopdev")
	conn := dial(t, sock)
	ctl := csi.NewControllerClient(conn)
	ext4 := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}},
		AccessMode: rwoMount.AccessMode}
	d := &targetDriver{conn: conn, node: csi.NewNodeClient(conn), volumeID: "vol-a", capability: ext4,
		context: map[string]string{"dir": filepath.Join(dir, "backing"), "size": "16Mi"}, mountDirs: []string{dir}}
	resp, err := ctl.ControllerPublishVolume(context.Background(), &csi.ControllerPublishVolumeRequest{
		VolumeId: d.volumeID, NodeId: "sanity-node", VolumeCapability: ext4, VolumeContext: d.context})
	if err != nil {
		t.Fatal(err)
	}
	d.publishContext = resp.GetPublishContext()
	d.staging = filepath.Join(realTempDir(t), "staged", "vol-a")
	if err := d.stage(d.staging); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.unstage(d.staging); err != nil {
			t.Errorf("unstage: %v", err)
		}
		if _, err := ctl.ControllerUnpublishVolume(context.Background(), &csi.ControllerUnpublishVolumeRequest{VolumeId: d.volumeID, NodeId: "sanity-node"}); err != nil {
			t.Errorf("detach: %v", err)
		}
	})
	return d
}

// caseDir is a fresh directory of pods for one case.
func caseDir(t *testing.T, pods string) string {
	t.Helper()
	dir, err := os.MkdirTemp(pods, "case-")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// isMounted reports whether p is a mount point in this process's table.
func isMounted(t *testing.T, p string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == p {
			return true
		}
	}
	return false
}

// publishedAt publishes the volume at dir/real/target for a case that
// needs a real mount, and returns the target and a symlink dir/link ->
// dir/real. cleanup unpublishes it by its real path.
func publishedAt(t *testing.T, d *targetDriver, dir string) (target, link string) {
	t.Helper()
	target = filepath.Join(mustMkdir(t, filepath.Join(dir, "real")), "target")
	if err := d.publish(target); err != nil {
		t.Fatalf("publish at %s: %v", target, err)
	}
	return target, mustSymlink(t, filepath.Join(dir, "real"), filepath.Join(dir, "link"))
}

// stillPublished checks that a refused call left the real mount alone,
// then unpublishes it.
func stillPublished(t *testing.T, d *targetDriver, target string) {
	t.Helper()
	if !isMounted(t, target) {
		t.Errorf("the volume is no longer mounted at %s", target)
	}
	if err := d.unpublish(target); err != nil {
		t.Errorf("unpublish by the real path: %v", err)
	}
	if _, err := os.Lstat(target); !os.IsNotExist(err) {
		t.Errorf("target %s still exists after unpublish: %v", target, err)
	}
}

// targetCases are the target-path cases every driver must pass.
func targetCases(d *targetDriver, c *canary, pods string) []hostileCase {
	var dir string // the case's own directory, made by each run
	in := func(t *testing.T) string { dir = caseDir(t, pods); return dir }
	cases := []hostileCase{
		{name: "publish under a symlinked parent", run: func(t *testing.T) error {
			return d.publish(filepath.Join(mustSymlink(t, c.dir, filepath.Join(in(t), "link")), "new"))
		}},
		{name: "publish onto an existing directory under a symlinked parent", run: func(t *testing.T) error {
			return d.publish(filepath.Join(mustSymlink(t, c.dir, filepath.Join(in(t), "link")), "void"))
		}},
		{name: "publish under a symlinked grandparent", run: func(t *testing.T) error {
			return d.publish(filepath.Join(mustSymlink(t, c.dir, filepath.Join(in(t), "link")), "a", "new"))
		}},
		{name: "publish onto a symlink to a directory", run: func(t *testing.T) error {
			return d.publish(mustSymlink(t, c.path("void"), filepath.Join(in(t), "link")))
		}},
		{name: "publish onto a dangling symlink", run: func(t *testing.T) error {
			return d.publish(mustSymlink(t, c.path("ghost"), filepath.Join(in(t), "link")))
		}},
		{name: "publish onto a regular file", run: func(t *testing.T) error {
			return d.publish(c.path("precious"))
		}},
		{name: "publish under a regular file", run: func(t *testing.T) error {
			return d.publish(filepath.Join(c.path("precious"), "target"))
		}},
		{name: "publish under a missing parent", codes: []codes.Code{codes.FailedPrecondition}, run: func(t *testing.T) error {
			return d.publish(filepath.Join(in(t), "missing", "target"))
		}, after: func(t *testing.T) {
			if _, err := os.Lstat(filepath.Join(dir, "missing")); !os.IsNotExist(err) {
				t.Errorf("a refused publish created the missing parent: %v", err)
			}
		}},
		{name: "publish at a relative target", run: func(t *testing.T) error {
			return d.publish("pods/target")
		}},
		{name: "publish at a target with ..", run: func(t *testing.T) error {
			return d.publish(filepath.Join(in(t), "x") + "/../../" + filepath.Base(c.dir) + "/void")
		}},
		{name: "publish at /", run: func(t *testing.T) error {
			return d.publish("/")
		}},
		{name: "publish through the magic link /proc/self/root", run: func(t *testing.T) error {
			return d.publish("/proc/self/root" + c.path("void"))
		}},
		{name: "publish at a target with a NUL", run: func(t *testing.T) error {
			return d.publish(filepath.Join(in(t), "tar\x00get"))
		}},
		{name: "publish at a target that is not UTF-8", run: func(t *testing.T) error {
			return d.publishRaw(filepath.Join(in(t), "target@@"))
		}, after: func(t *testing.T) {
			if es, _ := os.ReadDir(dir); len(es) != 0 {
				t.Errorf("a refused publish created %v", es)
			}
		}},
		{name: "unpublish with a malformed request", run: func(t *testing.T) error {
			req, err := proto.Marshal(&csi.NodeUnpublishVolumeRequest{VolumeId: d.volumeID, TargetPath: c.path("void")})
			if err != nil {
				t.Fatal(err)
			}
			return d.invokeRaw(csi.Node_NodeUnpublishVolume_FullMethodName, req[:len(req)-3])
		}},
		{name: "unpublish under a symlinked parent of a real mount", run: func(t *testing.T) error {
			target, link := publishedAt(t, d, in(t))
			_ = target
			return d.unpublish(filepath.Join(link, "target"))
		}, after: func(t *testing.T) { stillPublished(t, d, filepath.Join(dir, "real", "target")) }},
		{name: "unpublish an empty directory under a symlinked parent", run: func(t *testing.T) error {
			return d.unpublish(filepath.Join(mustSymlink(t, c.dir, filepath.Join(in(t), "link")), "void"))
		}},
		{name: "unpublish a symlink to a directory", run: func(t *testing.T) error {
			return d.unpublish(mustSymlink(t, c.path("void"), filepath.Join(in(t), "link")))
		}},
		{name: "unpublish through the magic link /proc/self/root", run: func(t *testing.T) error {
			return d.unpublish("/proc/self/root" + c.path("void"))
		}},
		{name: "unpublish a non-empty directory that is not a mount", codes: []codes.Code{codes.FailedPrecondition}, run: func(t *testing.T) error {
			return d.unpublish(c.path("a"))
		}},
		{name: "unpublish a regular file", run: func(t *testing.T) error {
			return d.unpublish(c.path("precious"))
		}},
	}
	if d.stats {
		cases = append(cases,
			hostileCase{name: "stats under a symlinked parent of a real mount", codes: []codes.Code{codes.InvalidArgument, codes.NotFound},
				run: func(t *testing.T) error {
					_, link := publishedAt(t, d, in(t))
					return d.statsAt(filepath.Join(link, "target"))
				}, after: func(t *testing.T) { stillPublished(t, d, filepath.Join(dir, "real", "target")) }},
			hostileCase{name: "stats of a directory that is not the volume", codes: []codes.Code{codes.NotFound}, run: func(t *testing.T) error {
				return d.statsAt(c.path("a"))
			}},
		)
	}
	return cases
}

// stagingCases are the staging-path cases of a driver that stages.
func stagingCases(d *targetDriver, c *canary, pods string) []hostileCase {
	var dir string
	in := func(t *testing.T) string { dir = caseDir(t, pods); return dir }
	stagedParent := filepath.Dir(d.staging)
	return []hostileCase{
		{name: "stage under a symlinked parent", run: func(t *testing.T) error {
			return d.stage(filepath.Join(mustSymlink(t, c.dir, filepath.Join(in(t), "link")), "stage"))
		}},
		{name: "stage onto an existing directory under a symlinked parent", run: func(t *testing.T) error {
			return d.stage(filepath.Join(mustSymlink(t, c.dir, filepath.Join(in(t), "link")), "void"))
		}},
		{name: "stage onto a symlink to a directory", run: func(t *testing.T) error {
			return d.stage(mustSymlink(t, c.path("void"), filepath.Join(in(t), "link")))
		}},
		{name: "stage onto a regular file", run: func(t *testing.T) error {
			return d.stage(c.path("disk.img"))
		}},
		{name: "stage under a regular file", run: func(t *testing.T) error {
			return d.stage(filepath.Join(c.path("precious"), "stage"))
		}},
		{name: "unstage under a symlinked parent of the staged mount", run: func(t *testing.T) error {
			return d.unstage(filepath.Join(mustSymlink(t, stagedParent, filepath.Join(in(t), "link")), filepath.Base(d.staging)))
		}, after: func(t *testing.T) {
			if !isMounted(t, d.staging) {
				t.Errorf("the staged mount at %s is gone", d.staging)
			}
		}},
		{name: "unstage a regular file", run: func(t *testing.T) error {
			return d.unstage(c.path("precious"))
		}},
		{name: "publish from a staging path through a symlink", run: func(t *testing.T) error {
			link := mustSymlink(t, stagedParent, filepath.Join(in(t), "link"))
			return d.publishFrom(filepath.Join(dir, "target"), filepath.Join(link, filepath.Base(d.staging)))
		}, after: func(t *testing.T) {
			if es, _ := os.ReadDir(dir); slices.ContainsFunc(es, func(e os.DirEntry) bool { return e.Name() == "target" }) {
				t.Errorf("a refused publish created its target")
			}
		}},
	}
}
