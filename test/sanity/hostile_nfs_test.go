package sanity

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/monocsi/monocsi/internal/treecopy"
)

// nfsHostile is the nfs driver under hostile calls, with a sibling volume
// ("victim") on the share that no call may touch.
type nfsHostile struct {
	n       nfsTarget
	srv     nfsServe
	ctl     csi.ControllerClient
	node    csi.NodeClient
	c       *canary
	pods    string        // targets go here
	outside string        // a directory outside the share (not the canary): archives to lure a restore
	timeout time.Duration // of each call; callTimeout when zero
}

const victimData = "the victim volume's data"

// sh is p on the share, as the test (the server's side) sees it.
func (h *nfsHostile) sh(p string) string { return filepath.Join(h.n.export, p) }

// id is a volume handle on the test's share.
func (h *nfsHostile) id(subDir, uuid string, more ...string) string {
	return strings.Join(append([]string{h.n.server, strings.Trim(h.n.share, "/"), subDir, uuid}, more...), "#")
}

// snapID is a snapshot handle on the test's share.
func (h *nfsHostile) snapID(name, src string) string {
	return strings.Join([]string{h.n.server, strings.Trim(h.n.share, "/"), name, name, src}, "#")
}

// callTimeout bounds each call of the hostile tests.
const callTimeout = time.Minute

func callCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), callTimeout)
}

// ctx is a call's context, under the test's timeout.
func (h *nfsHostile) ctx() (context.Context, context.CancelFunc) {
	if h.timeout == 0 {
		return callCtx()
	}
	return context.WithTimeout(context.Background(), h.timeout)
}

func (h *nfsHostile) create(name string, params map[string]string, src *csi.VolumeContentSource) (*csi.Volume, error) {
	ctx, cancel := h.ctx()
	defer cancel()
	resp, err := h.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, Parameters: params,
		VolumeCapabilities: []*csi.VolumeCapability{fsCap}, VolumeContentSource: src})
	return resp.GetVolume(), err
}

func (h *nfsHostile) delete(id string) error {
	ctx, cancel := h.ctx()
	defer cancel()
	_, err := h.ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
	return err
}

func (h *nfsHostile) snapshot(name, srcID string, params map[string]string) (*csi.Snapshot, error) {
	ctx, cancel := h.ctx()
	defer cancel()
	resp, err := h.ctl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: srcID, Parameters: params})
	return resp.GetSnapshot(), err
}

func (h *nfsHostile) deleteSnapshot(id string) error {
	ctx, cancel := h.ctx()
	defer cancel()
	_, err := h.ctl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id})
	return err
}

func (h *nfsHostile) publish(id, target string, vc map[string]string) error {
	ctx, cancel := h.ctx()
	defer cancel()
	_, err := h.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, TargetPath: target, VolumeCapability: fsCap, VolumeContext: vc})
	return err
}

func (h *nfsHostile) unpublish(id, target string) error {
	ctx, cancel := h.ctx()
	defer cancel()
	_, err := h.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
	return err
}

func fromSnapshot(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
}

func fromVolume(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
}

// victimIntact fails unless the sibling volume holds exactly its data.
func (h *nfsHostile) victimIntact(t *testing.T) {
	t.Helper()
	if got := entries(t, h.sh("victim")); !slices.Equal(got, []string{"data"}) {
		t.Errorf("the victim volume holds %v, want only its data", got)
	}
	if b, err := os.ReadFile(h.sh("victim/data")); err != nil || string(b) != victimData {
		t.Errorf("the victim volume's data: %q, %v", b, err)
	}
}

// exists and absent check a path on the share (not following a symlink).
func (h *nfsHostile) exists(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Lstat(h.sh(p)); err != nil {
			t.Errorf("%s on the share: %v; want it kept", p, err)
		}
	}
}

func (h *nfsHostile) absent(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Lstat(h.sh(p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s on the share: %v; want it absent", p, err)
		}
	}
}

// clean removes a case's setup from the share.
func (h *nfsHostile) clean(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if err := os.RemoveAll(h.sh(p)); err != nil {
			t.Errorf("clean %s: %v", p, err)
		}
	}
}

func (h *nfsHostile) mkdir(t *testing.T, p string) { mustMkdir(t, h.sh(p)) }

func (h *nfsHostile) write(t *testing.T, p, content string) {
	t.Helper()
	h.mkdir(t, filepath.Dir(p))
	if err := os.WriteFile(h.sh(p), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (h *nfsHostile) symlink(t *testing.T, to, p string) { mustSymlink(t, to, h.sh(p)) }

// tarGz is a gzip-compressed tar archive of the given entries.
func tarGz(t *testing.T, entries ...tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, hdr := range entries {
		body := []byte("escaped")
		hdr.Mode, hdr.Size = 0o644, int64(len(body))
		if err := tw.WriteHeader(&hdr); err != nil {
			t.Fatal(err)
		}
		tw.Write(body)
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

// TestNFSHostile sends the nfs driver hostile parameters, handles, volume
// contexts and shares (symlinks to a sibling volume, out of the share, in
// place of a snapshot's directory or archive; archives that lead out or are
// FIFOs): each case must answer with the right code (never INTERNAL or
// UNKNOWN) and leave the canary tree outside the share, the sibling volume,
// the mount table and the process table as they were.
func TestNFSHostile(t *testing.T) {
	n := nfsSetup(t)
	srv := serveNFS(t, n, "--nfs-mount-timeout=10s")
	h := &nfsHostile{n: n, srv: srv, ctl: csi.NewControllerClient(srv.conn), node: csi.NewNodeClient(srv.conn),
		c: newCanary(t), pods: realTempDir(t), outside: realTempDir(t)}
	victim, err := h.create("victim", n.params(), nil)
	if err != nil {
		t.Fatal(err)
	}
	h.write(t, "victim/data", victimData)
	total := runHostile(t, h.c, []string{h.pods, srv.work}, h.cases(t))
	t.Logf("%d nfs hostile cases", total)

	h.victimIntact(t)
	if got := entries(t, n.export); !slices.Equal(got, []string{"victim"}) {
		t.Errorf("the share holds %v after the cases, want only the victim volume", got)
	}
	if got := entries(t, srv.work); len(got) > 0 {
		t.Errorf("working mount points left: %v", got)
	}
	if err := h.delete(victim.GetVolumeId()); err != nil {
		t.Error(err)
	}
}

func (h *nfsHostile) cases(t *testing.T) []hostileCase {
	n := h.n
	pwned := "/tmp/monocsi-pwned-" + strings.ReplaceAll(t.Name(), "/", "_")
	createFails := func(name string, params map[string]string) func(t *testing.T) error {
		return func(t *testing.T) error {
			_, err := h.create(name, params, nil)
			return err
		}
	}
	nothingAt := func(paths ...string) func(t *testing.T) {
		return func(t *testing.T) { h.absent(t, paths...); h.victimIntact(t) }
	}
	deleteKeepsVictim := func(what, id string) hostileCase {
		return hostileCase{name: "DeleteVolume of a handle " + what,
			run:   func(t *testing.T) error { return h.delete(id) },
			codes: []codes.Code{codes.OK}, after: func(t *testing.T) { h.victimIntact(t) }}
	}
	bad := func(name string, params map[string]string) hostileCase {
		return hostileCase{name: "CreateVolume with " + name, run: createFails("pvc-bad", params), after: nothingAt("pvc-bad")}
	}
	cases := []hostileCase{
		// Parameters that try to leave the share or smuggle options
		// (TestNFSHostileInputs of before).
		bad("subDir ../../etc", n.params("subDir", "../../etc")),
		bad("subDir a/../../x", n.params("subDir", "a/../../x")),
		bad("subDir /abs", n.params("subDir", "/abs")),
		bad("server with spaces", n.params("server", "evil host")),
		bad("server -o", n.params("server", "-o")),
		bad("server option injection", n.params("server", "-oremount,rw")),
		bad("share ../", n.params("share", n.share+"/../..")),
		bad("share relative", n.params("share", "etc")),
		bad("mountOptions with a newline", n.params("mountOptions", "vers=4\nro")),
		bad("mountPermissions rwx", n.params("mountPermissions", "rwx")),
		bad("onDelete shred", n.params("onDelete", "shred")),
		bad("an unknown parameter", n.params("colour", "blue")),
		bad("subDir with #", n.params("subDir", "a#b")),
		{name: "CreateVolume with a newline in a mount flag", run: func(t *testing.T) error {
			c := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{MountFlags: []string{"vers=3\nro"}}},
				AccessMode: fsCap.AccessMode}
			ctx, cancel := callCtx()
			defer cancel()
			_, err := h.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-bad", Parameters: n.params(), VolumeCapabilities: []*csi.VolumeCapability{c}})
			return err
		}, after: nothingAt("pvc-bad")},

		// Handles must round-trip: a server whose handle would read back as
		// another server, share and subDir is refused at CreateVolume...
		bad("an IPv6 zone holding '#'", n.params("server", "fe80::1%eth0#victim")),
		bad("an IPv6 zone holding '/'", n.params("server", "fe80::1%a/b")),
		bad("an IPv6 zone holding a space", n.params("server", "fe80::1%a b")),
		bad("an unbalanced bracket", n.params("server", "[fd00::1")),
		bad("brackets around IPv4", n.params("server", "[127.0.0.1]")),
		bad("a subDir name of 256 bytes", n.params("subDir", strings.Repeat("n", 256))),
		bad("a subDir template filled with '#'", n.params("subDir", "${pvc.metadata.name}", "csi.storage.k8s.io/pvc/name", "a#victim")),
		bad("a subDir template filled with '..'", n.params("subDir", "${pvc.metadata.namespace}/claim", "csi.storage.k8s.io/pvc/namespace", "..")),
		// ... and a handle whose fields do not read back the same is no
		// volume of ours: deleting it removes nothing.
		deleteKeepsVictim("whose subDir has a trailing slash", h.id("victim/", "pvc-x")),
		deleteKeepsVictim("whose uuid is not a name", h.id("victim", "pvc-x!")),
		deleteKeepsVictim("whose uuid leads out", h.id("victim", "../x")),
		deleteKeepsVictim("of six fields", h.id("victim", "pvc-x", "delete", "more")),
		deleteKeepsVictim("whose subDir leads out", h.id("../victim", "")),
		deleteKeepsVictim("whose share is ..", n.server+"#..#victim#"),

		// nfs creates only where it was asked, and removes only what it made.
		{name: "CreateVolume through a regular file", run: func(t *testing.T) error {
			h.write(t, "afile", "a file")
			_, err := h.create("pvc-f", n.params("subDir", "afile/claim"), nil)
			return err
		}, after: func(t *testing.T) { h.exists(t, "afile"); h.clean(t, "afile") }},
		{name: "CreateVolume onto a regular file", codes: []codes.Code{codes.AlreadyExists}, run: func(t *testing.T) error {
			h.write(t, "pvc-file", "a file")
			_, err := h.create("pvc-file", n.params(), nil)
			return err
		}, after: func(t *testing.T) { h.clean(t, "pvc-file") }},
		{name: "CreateVolume through an in-share symlink to the sibling volume", run: func(t *testing.T) error {
			h.symlink(t, "victim", "ns-link")
			_, err := h.create("pvc-ns", n.params("subDir", "ns-link/claim"), nil)
			return err
		}, after: func(t *testing.T) { h.victimIntact(t); h.exists(t, "ns-link"); h.clean(t, "ns-link") }},
		{name: "CreateVolume whose subDir is an in-share symlink to the sibling volume", run: func(t *testing.T) error {
			h.symlink(t, "victim", "vol-link")
			_, err := h.create("pvc-vl", n.params("subDir", "vol-link", "mountPermissions", "0700"), nil)
			return err
		}, after: func(t *testing.T) {
			h.victimIntact(t)
			if fi, err := os.Stat(h.sh("victim")); err != nil || fi.Mode().Perm() == 0o700 {
				t.Errorf("the sibling volume's mode was changed: %v, %v", fi.Mode(), err)
			}
			h.clean(t, "vol-link")
		}},
		{name: "CreateVolume through a symlink out of the share", run: func(t *testing.T) error {
			h.symlink(t, h.outside, "to-outside")
			_, err := h.create("pvc-out", n.params("subDir", "to-outside/x"), nil)
			return err
		}, after: func(t *testing.T) {
			if got := entries(t, h.outside); len(got) > 0 {
				t.Errorf("created %v outside the share", got)
			}
			h.clean(t, "to-outside")
		}},
		{name: "CreateVolume through a symlink to /", run: func(t *testing.T) error {
			h.symlink(t, "/", "to-root")
			_, err := h.create("pvc-root", n.params("subDir", "to-root"+pwned), nil)
			return err
		}, after: func(t *testing.T) {
			if _, err := os.Lstat(pwned); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s was created through a symlink on the share", pwned)
				os.RemoveAll(pwned)
			}
			h.clean(t, "to-root")
		}},
		{name: "DeleteVolume through a parent that is a symlink to the sibling volume", run: func(t *testing.T) error {
			h.write(t, "sib/claim/data", "sibling's")
			h.symlink(t, "sib", "ns1")
			return h.delete(h.id("ns1/claim", "pvc-ns1"))
		}, after: func(t *testing.T) { h.exists(t, "sib/claim/data", "ns1"); h.clean(t, "sib", "ns1") }},
		{name: "DeleteVolume through a parent symlink its removal would leave empty", run: func(t *testing.T) error {
			h.mkdir(t, "emptydir/claim")
			h.symlink(t, "emptydir", "emptylink")
			return h.delete(h.id("emptylink/claim", "pvc-e"))
		}, after: func(t *testing.T) { h.exists(t, "emptydir/claim", "emptylink"); h.clean(t, "emptydir", "emptylink") }},
		{name: "DeleteVolume of a volume directory that is a symlink to the sibling", run: func(t *testing.T) error {
			h.symlink(t, "victim", "lnk-vol")
			return h.delete(h.id("lnk-vol", ""))
		}, after: func(t *testing.T) { h.victimIntact(t); h.exists(t, "lnk-vol"); h.clean(t, "lnk-vol") }},
		{name: "DeleteVolume of a volume directory that is a symlink out of the share", run: func(t *testing.T) error {
			h.symlink(t, h.c.dir, "lnk-out")
			return h.delete(h.id("lnk-out", ""))
		}, after: func(t *testing.T) { h.exists(t, "lnk-out"); h.clean(t, "lnk-out") }},
		{name: "DeleteVolume (archive) whose archived- parent is a symlink to the sibling", run: func(t *testing.T) error {
			h.write(t, "ns2/claim/data", "to archive")
			h.symlink(t, "victim", "archived-ns2")
			return h.delete(h.id("ns2/claim", "pvc-a", "archive"))
		}, after: func(t *testing.T) {
			h.victimIntact(t)
			h.exists(t, "ns2/claim/data", "archived-ns2")
			h.clean(t, "ns2", "archived-ns2")
		}},
		{name: "DeleteSnapshot whose directory is a symlink to a directory with the archive", run: func(t *testing.T) error {
			h.write(t, "realsnap/pvc-src.tar.gz", "not ours")
			h.symlink(t, "realsnap", "snap-l1")
			return h.deleteSnapshot(h.snapID("snap-l1", "pvc-src"))
		}, after: func(t *testing.T) {
			h.exists(t, "realsnap/pvc-src.tar.gz", "snap-l1")
			h.clean(t, "realsnap", "snap-l1")
		}},
		{name: "DeleteSnapshot whose directory is a symlink to an empty directory", run: func(t *testing.T) error {
			h.mkdir(t, "emptysnap")
			h.symlink(t, "emptysnap", "snap-l2")
			return h.deleteSnapshot(h.snapID("snap-l2", "pvc-src"))
		}, after: func(t *testing.T) { h.exists(t, "emptysnap", "snap-l2"); h.clean(t, "emptysnap", "snap-l2") }},
		{name: "DeleteSnapshot whose archive is a symlink out of the share", codes: []codes.Code{codes.FailedPrecondition}, run: func(t *testing.T) error {
			h.mkdir(t, "snap-l3")
			h.symlink(t, h.c.path("precious"), "snap-l3/pvc-src.tar.gz")
			return h.deleteSnapshot(h.snapID("snap-l3", "pvc-src"))
		}, after: func(t *testing.T) { h.exists(t, "snap-l3/pvc-src.tar.gz"); h.clean(t, "snap-l3") }},
		{name: "CreateSnapshot whose directory is an in-share symlink to the sibling", run: func(t *testing.T) error {
			h.symlink(t, "victim", "snap-l4")
			_, err := h.snapshot("snap-l4", h.id("victim", ""), nil)
			return err
		}, after: func(t *testing.T) { h.victimIntact(t); h.clean(t, "snap-l4") }},
		{name: "CreateSnapshot of a volume directory that is a symlink out of the share", run: func(t *testing.T) error {
			h.symlink(t, h.c.dir, "src-out")
			_, err := h.snapshot("snap-o", h.id("src-out", ""), nil)
			return err
		}, after: func(t *testing.T) { h.absent(t, "snap-o"); h.clean(t, "src-out") }},
		{name: "CreateSnapshot of a volume directory that is an in-share symlink to the sibling", run: func(t *testing.T) error {
			h.symlink(t, "victim", "src-in")
			_, err := h.snapshot("snap-i", h.id("src-in", ""), nil)
			return err
		}, after: func(t *testing.T) { h.absent(t, "snap-i"); h.clean(t, "src-in") }},
		{name: "CreateVolume from a snapshot whose directory is a symlink out of the share", run: func(t *testing.T) error {
			if err := os.WriteFile(filepath.Join(h.outside, "pvc-src.tar.gz"), tarGz(t, tar.Header{Name: "secret", Typeflag: tar.TypeReg}), 0o644); err != nil {
				t.Fatal(err)
			}
			h.symlink(t, h.outside, "snap-out")
			_, err := h.create("pvc-r1", n.params(), fromSnapshot(h.snapID("snap-out", "pvc-src")))
			return err
		}, after: func(t *testing.T) {
			h.absent(t, "pvc-r1", ".monocsi-new-pvc-r1")
			h.clean(t, "snap-out")
			os.Remove(filepath.Join(h.outside, "pvc-src.tar.gz"))
		}},
		{name: "CreateVolume cloned from a volume directory that is a symlink out of the share", run: func(t *testing.T) error {
			h.symlink(t, h.c.dir, "clone-out")
			_, err := h.create("pvc-c1", n.params(), fromVolume(h.id("clone-out", "")))
			return err
		}, after: func(t *testing.T) { h.absent(t, "pvc-c1", ".monocsi-new-pvc-c1"); h.clean(t, "clone-out") }},
		{name: "CreateVolume from an archive whose entries lead out", codes: []codes.Code{codes.FailedPrecondition}, run: func(t *testing.T) error {
			h.write(t, "snap-evil/pvc-src.tar.gz", string(tarGz(t, tar.Header{Name: "../escape", Typeflag: tar.TypeReg})))
			_, err := h.create("pvc-r2", n.params(), fromSnapshot(h.snapID("snap-evil", "pvc-src")))
			return err
		}, after: func(t *testing.T) { h.absent(t, "escape", "pvc-r2", ".monocsi-new-pvc-r2"); h.clean(t, "snap-evil") }},
		{name: "CreateVolume from an archive that is a FIFO", codes: []codes.Code{codes.FailedPrecondition}, run: func(t *testing.T) error {
			h.mkdir(t, "snap-fifo")
			if err := unix.Mkfifo(h.sh("snap-fifo/pvc-src.tar.gz"), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := h.create("pvc-r3", n.params(), fromSnapshot(h.snapID("snap-fifo", "pvc-src")))
			return err
		}, after: func(t *testing.T) { h.absent(t, "pvc-r3", ".monocsi-new-pvc-r3"); h.clean(t, "snap-fifo") }},
		{name: "CreateSnapshot of a volume holding a FIFO (skipped, no hang)", codes: []codes.Code{codes.OK}, run: func(t *testing.T) error {
			vol, err := h.create("pvc-fifo", n.params(), nil)
			if err != nil {
				return err
			}
			if err := unix.Mkfifo(h.sh("pvc-fifo/fifo"), 0o644); err != nil {
				t.Fatal(err)
			}
			h.write(t, "pvc-fifo/data", "fifo's neighbour")
			snap, err := h.snapshot("snap-fifo-vol", vol.GetVolumeId(), nil)
			if err == nil {
				err = h.deleteSnapshot(snap.GetSnapshotId())
			}
			if err == nil {
				err = h.delete(vol.GetVolumeId())
			}
			return err
		}, after: func(t *testing.T) { h.absent(t, "pvc-fifo", "snap-fifo-vol") }},

		// mountPermissions: setuid, setgid and sticky are applied exactly, on
		// the share and at every publish, and recorded as applied.
		h.modeCase("7777", 0o7777),
		h.modeCase("1777", 0o1777),
		h.modeCase("02750", 0o2750),
		bad("mountPermissions 10000 (beyond 07777)", n.params("mountPermissions", "10000")),
		bad("mountPermissions 0x1ff", n.params("mountPermissions", "0x1ff")),
		{name: "NodePublishVolume with mountPermissions 99 in the volume context", run: func(t *testing.T) error {
			return h.publish("v", filepath.Join(h.pods, "perm99"), map[string]string{"server": n.server, "share": n.share, "subDir": "victim", "mountPermissions": "99"})
		}, after: func(t *testing.T) { h.victimIntact(t) }},

		// Plain bad input.
		{name: "NodePublishVolume with subDir ../..", run: func(t *testing.T) error {
			return h.publish("v", filepath.Join(h.pods, "t1"), map[string]string{"server": n.server, "share": n.share, "subDir": "../.."})
		}},
		{name: "NodePublishVolume with server -o", run: func(t *testing.T) error {
			return h.publish("v", filepath.Join(h.pods, "t2"), map[string]string{"server": "-o", "share": n.share})
		}},
		{name: "NodePublishVolume with a newline in mountOptions", run: func(t *testing.T) error {
			return h.publish("v", filepath.Join(h.pods, "t3"), map[string]string{"server": n.server, "share": n.share, "mountOptions": "ro\nrw"})
		}},
		{name: "NodePublishVolume at a target in the driver's work directory", run: func(t *testing.T) error {
			return h.publish(h.id("victim", ""), filepath.Join(h.srv.work, "share-x"), nil)
		}, after: func(t *testing.T) {
			if got := entries(t, h.srv.work); len(got) > 0 {
				t.Errorf("the work directory holds %v", got)
			}
		}},
		{name: "CreateVolume named ../x", run: createFails("../x", n.params())},
		{name: "DeleteVolume without an ID", run: func(t *testing.T) error { return h.delete("") }},
		{name: "CreateSnapshot with an unknown parameter", run: func(t *testing.T) error {
			_, err := h.snapshot("snap-p", h.id("victim", ""), map[string]string{"colour": "blue"})
			return err
		}, after: nothingAt("snap-p")},
		{name: "CreateSnapshot named a/b", run: func(t *testing.T) error {
			_, err := h.snapshot("a/b", h.id("victim", ""), nil)
			return err
		}, after: nothingAt("a")},
		{name: "CreateSnapshot without a source", run: func(t *testing.T) error {
			_, err := h.snapshot("snap-n", "", nil)
			return err
		}, after: nothingAt("snap-n")},
		{name: "CreateSnapshot with a server parameter whose zone holds '#'", run: func(t *testing.T) error {
			_, err := h.snapshot("snap-z", h.id("victim", ""), map[string]string{"server": "fe80::1%a#b"})
			return err
		}, after: nothingAt("snap-z")},
		{name: "ControllerExpandVolume without a capacity", run: func(t *testing.T) error {
			ctx, cancel := callCtx()
			defer cancel()
			_, err := h.ctl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: h.id("victim", "")})
			return err
		}},
		{name: "ValidateVolumeCapabilities of a volume directory that is a symlink out of the share", codes: []codes.Code{codes.InvalidArgument, codes.NotFound}, run: func(t *testing.T) error {
			h.symlink(t, h.c.dir, "val-out")
			ctx, cancel := callCtx()
			defer cancel()
			_, err := h.ctl.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: h.id("val-out", ""), VolumeCapabilities: []*csi.VolumeCapability{fsCap}})
			return err
		}, after: func(t *testing.T) { h.clean(t, "val-out") }},
		{name: "NodeGetVolumeStats of a path that is not mounted", codes: []codes.Code{codes.NotFound}, run: func(t *testing.T) error {
			ctx, cancel := callCtx()
			defer cancel()
			_, err := h.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: h.id("victim", ""), VolumePath: h.pods})
			return err
		}},
	}
	return cases
}

// modeCase creates a volume with mountPermissions perm, publishes it, and
// checks the mode on the share, in the volume context and at the target.
func (h *nfsHostile) modeCase(perm string, want uint32) hostileCase {
	name := fmt.Sprintf("pvc-mode-%o", want)
	return hostileCase{name: "mountPermissions " + perm + " applied exactly", codes: []codes.Code{codes.OK}, run: func(t *testing.T) error {
		vol, err := h.create(name, h.n.params("mountPermissions", perm), nil)
		if err != nil {
			return err
		}
		if got := vol.GetVolumeContext()["mountPermissions"]; got != fmt.Sprintf("0%o", want) {
			t.Errorf("volume context mountPermissions %q, want 0%o", got, want)
		}
		checkMode(t, "the volume's directory on the share", h.sh(name), want)
		target := filepath.Join(h.pods, name)
		// The share's mode is changed behind the driver's back: publish
		// applies it again.
		os.Chmod(h.sh(name), 0o755)
		if err := h.publish(vol.GetVolumeId(), target, vol.GetVolumeContext()); err != nil {
			return err
		}
		checkMode(t, "the published volume", target, want)
		if err := h.unpublish(vol.GetVolumeId(), target); err != nil {
			return err
		}
		return h.delete(vol.GetVolumeId())
	}, after: func(t *testing.T) { h.absent(t, name) }}
}

func checkMode(t *testing.T, what, p string, want uint32) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Errorf("%s: %v", what, err)
	} else if got := st.Mode & 0o7777; got != want {
		t.Errorf("%s has mode 0%o, want 0%o", what, got, want)
	}
}

// TestNFSAbandonedWorkKeepsLock: a call whose context ends while its work
// on the share is still running returns, but the work goes on, and it keeps
// the volume locked until it returns: a retry meanwhile is ABORTED, and
// once the work is done the retry succeeds, with nothing done twice or
// lost. The work is held deterministically with a lease on a file of the
// source volume: the driver's read of it waits until the lease is let go.
func TestNFSAbandonedWorkKeepsLock(t *testing.T) {
	n := nfsSetup(t)
	if n.real {
		t.Skip("needs a lease on a file of the share, which the test can take only on the emulation's local share")
	}
	srv := serveNFS(t, n)
	h := &nfsHostile{n: n, srv: srv, ctl: csi.NewControllerClient(srv.conn), node: csi.NewNodeClient(srv.conn)}
	src, err := h.create("pvc-src", n.params(), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"a-first": "first", "gate": "held by a lease", "z-last": "last", "dir/inner": "inner"}
	for p, content := range want {
		h.write(t, filepath.Join("pvc-src", p), content)
	}
	for _, tc := range []struct {
		name, method string
		call         func(ctx context.Context) error
		check        func(t *testing.T) // what the finished work left
	}{
		{"CreateSnapshot", "CreateSnapshot", func(ctx context.Context) error {
			_, err := h.ctl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-slow", SourceVolumeId: src.GetVolumeId()})
			return err
		}, func(t *testing.T) {
			if got := entries(t, h.sh("snap-slow")); !slices.Equal(got, []string{"pvc-src.tar.gz"}) {
				t.Errorf("the snapshot's directory holds %v, want its one archive", got)
			}
			dir := t.TempDir()
			if err := treecopy.ExtractFile(h.sh("snap-slow/pvc-src.tar.gz"), dir); err != nil {
				t.Fatal(err)
			}
			sameFiles(t, dir, want)
		}},
		{"CreateVolume cloned", "CreateVolume", func(ctx context.Context) error {
			_, err := h.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-slow", Parameters: n.params(),
				VolumeCapabilities: []*csi.VolumeCapability{fsCap}, VolumeContentSource: fromVolume(src.GetVolumeId())})
			return err
		}, func(t *testing.T) {
			h.absent(t, ".monocsi-new-pvc-slow")
			sameFiles(t, h.sh("pvc-slow"), want)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			broken, release := holdLease(t, h.sh("pvc-src/gate"))
			defer release()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			before := failedCalls(srv, tc.method)
			first := make(chan error, 1)
			go func() { first <- tc.call(ctx) }()
			broken()
			// The driver is at the gate: the call is given up, and the
			// driver's handler returns (its log says so).
			cancel()
			if err := <-first; status.Code(err) != codes.Canceled {
				t.Fatalf("the cancelled call: %v, want Canceled", err)
			}
			for deadline := time.Now().Add(30 * time.Second); failedCalls(srv, tc.method) == before; time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("the driver never logged the end of the cancelled %s", tc.method)
				}
			}
			// Its work is still at the gate (the lease is held): a retry
			// must not run beside it.
			for range 3 {
				rctx, rcancel := callCtx()
				err := tc.call(rctx)
				rcancel()
				if status.Code(err) != codes.Aborted {
					t.Fatalf("a retry while the abandoned work runs: %v, want Aborted", err)
				}
				time.Sleep(200 * time.Millisecond)
			}
			release()
			// Once the work has returned, the retry succeeds.
			deadline := time.Now().Add(time.Minute)
			for {
				rctx, rcancel := callCtx()
				err := tc.call(rctx)
				rcancel()
				if err == nil {
					break
				}
				if status.Code(err) != codes.Aborted || time.Now().After(deadline) {
					t.Fatalf("the retry after the work: %v", err)
				}
				time.Sleep(100 * time.Millisecond)
			}
			tc.check(t)
			assertNoMountsUnder(t, srv.work)
			if got := entries(t, srv.work); len(got) > 0 {
				t.Errorf("working mount points left: %v", got)
			}
		})
	}
}

// failedCalls counts the calls of method the driver logged as failed.
func failedCalls(srv nfsServe, method string) int {
	n := 0
	for _, line := range strings.Split(srv.proc.Log(), "\n") {
		if strings.Contains(line, "CSI call failed") && strings.Contains(line, "/"+method+`"`) {
			n++
		}
	}
	return n
}

// holdLease takes a write lease on file: another process's open of it then
// waits (or, non-blocking, fails with EWOULDBLOCK) until the lease is let
// go, or the kernel breaks it after fs.lease-break-time (45 s by default).
// broken waits until someone has tried to open the file: the kernel then
// starts breaking the lease, and F_GETLEASE no longer says F_WRLCK.
func holdLease(t *testing.T, file string) (broken, release func()) {
	t.Helper()
	fd, err := unix.Open(file, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_WRLCK); err != nil {
		unix.Close(fd)
		t.Fatalf("take a lease on %s: %v", file, err)
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_UNLCK)
			unix.Close(fd)
		})
	}
	broken = func() {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if l, err := unix.FcntlInt(uintptr(fd), unix.F_GETLEASE, 0); err != nil || l != unix.F_WRLCK {
				return
			}
		}
		t.Fatalf("the driver never tried to read %s", file)
	}
	return broken, release
}

// sameFiles fails unless dir holds exactly the files of want.
func sameFiles(t *testing.T, dir string, want map[string]string) {
	t.Helper()
	got := map[string]string{}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			b, _ := os.ReadFile(p)
			rel, _ := filepath.Rel(dir, p)
			got[rel] = string(b)
		}
		return nil
	})
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s holds %v, want %v", dir, got, want)
	}
}

// TestNFSSymlinkSwap swaps, again and again, the directories snapshots,
// restores and clones read and write (a volume's, a snapshot's) for
// symlinks out of the share (to the canary tree, to a directory holding a
// lure archive) and to a sibling volume, while those calls run. Nothing
// outside the share may be read into an archive or a volume, nor written or
// removed there, and no call may fail with INTERNAL or UNKNOWN.
//
// On a real NFS server (MONOCSI_NFS_SERVER) every call mounts the share, so
// the test runs fewer rounds there; everywhere, a call that takes longer
// than slowCall is a failure (a CSI call must not block for minutes), and
// nfsSetup's cleanup removes all the test made on the share, the driver's
// leftovers of refused calls too (a snapshot directory the driver left
// because it was a symlink when it looked).
func TestNFSSymlinkSwap(t *testing.T) {
	n := nfsSetup(t)
	srv := serveNFS(t, n)
	const slowCall = 30 * time.Second
	h := &nfsHostile{n: n, srv: srv, ctl: csi.NewControllerClient(srv.conn), node: csi.NewNodeClient(srv.conn),
		c: newCanary(t), outside: realTempDir(t), timeout: slowCall + 15*time.Second}
	becomeSubreaper(t)
	rounds := 25
	if n.real {
		rounds = 4
	}
	// Runs after the test's defers (the swappers have stopped by then).
	before := entries(t, n.export)
	t.Cleanup(func() {
		for _, e := range entries(t, n.export) {
			if !slices.Contains(before, e) {
				if err := os.RemoveAll(h.sh(e)); err != nil {
					t.Errorf("clean %s off the share: %v", e, err)
				}
			}
		}
	})
	src, err := h.create("pvc-src", n.params(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"data", "d/data", "d/e/data"} {
		h.write(t, filepath.Join("pvc-src", p), "volume data")
	}
	if _, err := h.snapshot("snap-good", src.GetVolumeId(), nil); err != nil {
		t.Fatal(err)
	}
	decoy, err := h.create("decoy", n.params(), nil)
	if err != nil {
		t.Fatal(err)
	}
	h.write(t, "decoy/data", "DECOY")
	// A lure: an archive outside the share, named as snap-good's.
	lure := tarGz(t, tar.Header{Name: "data", Typeflag: tar.TypeReg})
	if err := os.WriteFile(filepath.Join(h.outside, "pvc-src.tar.gz"), lure, 0o644); err != nil {
		t.Fatal(err)
	}
	outsideBefore := listTree(t, h.outside)

	// Each swapper replaces name in the directory dir with a symlink to
	// each target in turn, and back, until stopped. The directories are
	// opened first, before any swapping, and names are resolved relative to
	// them: the test itself never follows a symlink it planted.
	swaps := []struct {
		dir, name string
		targets   []string
	}{
		{".", "pvc-src", []string{h.c.dir, "decoy", h.c.path("a")}},
		{"pvc-src", "d", []string{h.c.dir, "../decoy"}},
		{".", "snap-good", []string{h.outside, "decoy"}},
		{".", "snap-new", []string{h.outside, "decoy"}}, // the snapshots' directory, once made
	}
	fds := make([]int, len(swaps))
	for i, sw := range swaps {
		if fds[i], err = unix.Open(h.sh(sw.dir), unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fds[i])
	}
	// The test reads what a call made only while no swap is in progress
	// (paused), so it reads the real directories.
	stop := make(chan struct{})
	var swappers sync.WaitGroup
	var paused sync.RWMutex
	var stopOnce sync.Once
	var vanished atomic.Int32 // swaps that found a name gone (see below)
	stopSwapping := func() { stopOnce.Do(func() { close(stop); swappers.Wait() }) }
	defer stopSwapping() // on a t.Fatal too
	for i, sw := range swaps {
		swappers.Add(1)
		go func(fd int) {
			defer swappers.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				// The symlink is made under another name and exchanged
				// with the directory atomically, and exchanged back: the
				// name never disappears, so a directory the driver makes
				// meanwhile is never clobbered by the test.
				paused.RLock()
				lnk, target := sw.name+".lnk", sw.targets[i%len(sw.targets)]
				if unix.Symlinkat(target, fd, lnk) == nil {
					if unix.Renameat2(fd, sw.name, fd, lnk, unix.RENAME_EXCHANGE) == nil {
						time.Sleep(time.Duration(i%3) * time.Millisecond)
						if unix.Renameat2(fd, lnk, fd, sw.name, unix.RENAME_EXCHANGE) != nil {
							// One of the two went meanwhile. Seen once
							// on a real NFSv3 share: an NFS removal
							// goes by name on the server, after the
							// client checked the type of what it had
							// cached, so a call removing the snapshot
							// directory it made can take the planted
							// name. Neither is outside the share (the
							// checks below hold); the swap is undone
							// as far as it can be.
							vanished.Add(1)
							if unix.Renameat2(fd, lnk, fd, sw.name, unix.RENAME_NOREPLACE) != nil {
								if got, _ := readlinkat(fd, sw.name); got == target {
									unix.Unlinkat(fd, sw.name, 0)
								}
							}
						}
					}
					unix.Unlinkat(fd, lnk, 0) // the symlink; never the directory (EISDIR)
				}
				paused.RUnlock()
				time.Sleep(time.Duration(1+i%2) * time.Millisecond)
			}
		}(fds[i])
	}

	counts := map[string]map[codes.Code]int{}
	var slowest time.Duration
	slow := false
	// timed runs a call and notes its result and how long it took.
	timed := func(op string, call func() error) error {
		start := time.Now()
		err := call()
		took := time.Since(start)
		slowest = max(slowest, took)
		if counts[op] == nil {
			counts[op] = map[codes.Code]int{}
		}
		counts[op][status.Code(err)]++
		if c := status.Code(err); c == codes.Internal || c == codes.Unknown {
			t.Errorf("%s: %v", op, err)
		}
		if took > slowCall {
			t.Errorf("%s took %s (more than %s): %v", op, took.Round(time.Millisecond), slowCall, err)
			slow = true
		}
		return err
	}
	for i := 0; i < rounds && !slow; i++ {
		var snap *csi.Snapshot
		err := timed("CreateSnapshot", func() (err error) {
			snap, err = h.snapshot("snap-new", src.GetVolumeId(), nil)
			return err
		})
		if err == nil {
			paused.Lock()
			h.checkArchive(t, "snap-new/pvc-src.tar.gz")
			paused.Unlock()
			timed("DeleteSnapshot", func() error { return h.deleteSnapshot(snap.GetSnapshotId()) })
		}
		for _, c := range []struct {
			op  string
			src *csi.VolumeContentSource
		}{
			{"restore", fromSnapshot(h.snapID("snap-good", "pvc-src"))},
			{"clone", fromVolume(src.GetVolumeId())},
		} {
			name := fmt.Sprintf("pvc-%s-%d", c.op, i)
			var vol *csi.Volume
			err := timed(c.op, func() (err error) {
				vol, err = h.create(name, n.params(), c.src)
				return err
			})
			if err == nil {
				paused.Lock()
				h.checkVolume(t, name)
				paused.Unlock()
				timed("DeleteVolume", func() error { return h.delete(vol.GetVolumeId()) })
			}
		}
	}
	stopSwapping()
	t.Logf("%d rounds; calls by result while directories were swapped: %v; the slowest took %s; swaps that found a name gone: %d",
		rounds, counts, slowest.Round(time.Millisecond), vanished.Load())

	h.c.check(t)
	if after := listTree(t, h.outside); !slices.Equal(after, outsideBefore) {
		t.Errorf("the directory outside the share changed: %v, was %v", after, outsideBefore)
	}
	if b, err := os.ReadFile(filepath.Join(h.outside, "pvc-src.tar.gz")); err != nil || !bytes.Equal(b, lure) {
		t.Errorf("the lure archive outside the share changed: %v", err)
	}
	if got := entries(t, h.sh("decoy")); !slices.Equal(got, []string{"data"}) {
		t.Errorf("the decoy volume holds %v, want only its data", got)
	}
	assertNoMountsUnder(t, srv.work, h.c.dir, h.outside)
	if got := entries(t, srv.work); len(got) > 0 {
		t.Errorf("working mount points left: %v", got)
	}
	assertNoStrayProcesses(t)
	for _, id := range []string{src.GetVolumeId(), decoy.GetVolumeId()} {
		if err := h.delete(id); err != nil {
			t.Error(err)
		}
	}
	h.deleteSnapshot(h.snapID("snap-good", "pvc-src"))
}

// checkArchive fails when an archive on the share holds anything but the
// source volume's data.
func (h *nfsHostile) checkArchive(t *testing.T, p string) {
	t.Helper()
	f, err := os.Open(h.sh(p))
	if err != nil {
		t.Errorf("the snapshot's archive: %v", err)
		return
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Errorf("%s: %v", p, err)
		return
	}
	tr := tar.NewReader(zr)
	for {
		hdr, err := tr.Next()
		if err != nil {
			return
		}
		if b, _ := io.ReadAll(tr); hdr.Typeflag == tar.TypeReg && string(b) != "volume data" {
			t.Errorf("%s: entry %s holds %.40q, not the volume's data", p, hdr.Name, b)
		}
	}
}

// checkVolume fails when a new volume holds anything but the source
// volume's data.
func (h *nfsHostile) checkVolume(t *testing.T, name string) {
	t.Helper()
	filepath.WalkDir(h.sh(name), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if b, _ := os.ReadFile(p); string(b) != "volume data" {
				t.Errorf("%s holds %.40q, not the source's data", p, b)
			}
		}
		return nil
	})
}

// readlinkat returns the target of the symlink name in the directory fd.
func readlinkat(fd int, name string) (string, error) {
	buf := make([]byte, 4096)
	n, err := unix.Readlinkat(fd, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}
