package sanity

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/monocsi/monocsi/test/nfsemu"
	"github.com/monocsi/monocsi/test/testbin"
)

// nfsTarget is the NFS server the NFS tests use: a real one when
// $MONOCSI_NFS_SERVER is set (make e2e-nfs, inside a VM whose kernel serves
// NFS on loopback), the test tree's emulation otherwise.
type nfsTarget struct {
	server, share, mountOptions string
	export                      string   // the share's directory as this test sees it
	env                         []string // added to monocsi's environment
	real                        bool
}

func nfsSetup(t *testing.T) nfsTarget {
	requireRoot(t)
	if server := os.Getenv("MONOCSI_NFS_SERVER"); server != "" {
		// The server runs on this machine: its export is a local directory,
		// shared by every test, so each one leaves it as it found it
		// (hostile tests make symlinks and files the driver must not remove).
		share := os.Getenv("MONOCSI_NFS_SHARE")
		before := entries(t, share)
		t.Cleanup(func() { // after the test's server has stopped
			for _, e := range entries(t, share) {
				if !slices.Contains(before, e) {
					if err := os.RemoveAll(filepath.Join(share, e)); err != nil {
						t.Errorf("clean %s off the share: %v", e, err)
					}
				}
			}
		})
		return nfsTarget{server: server, share: share, export: share, mountOptions: os.Getenv("MONOCSI_NFS_MOUNT_OPTIONS"), real: true}
	}
	emu := nfsemu.Start(t)
	return nfsTarget{server: "127.0.0.1", share: "/exports/data", export: emu.Export("127.0.0.1", "/exports/data"), env: emu.Env}
}

// params are the StorageClass parameters of a volume on the target.
func (n nfsTarget) params(extra ...string) map[string]string {
	p := map[string]string{"server": n.server, "share": n.share}
	if n.mountOptions != "" {
		p["mountOptions"] = n.mountOptions
	}
	for i := 0; i+1 < len(extra); i += 2 {
		p[extra[i]] = extra[i+1]
	}
	return p
}

// nfsServe is a running `monocsi serve --driver=nfs`.
type nfsServe struct {
	conn       *grpc.ClientConn
	sock, work string // its socket and its work directory
	proc       *testbin.Process
}

// serveNFS starts `monocsi serve --driver=nfs` for the target.
func serveNFS(t *testing.T, n nfsTarget, args ...string) nfsServe {
	dir := t.TempDir()
	s := nfsServe{sock: filepath.Join(dir, "csi.sock"), work: filepath.Join(dir, "work")}
	s.proc = testbin.StartEnv(t, n.env, append([]string{"serve", "--driver=nfs", "--endpoint=unix://" + s.sock,
		"--node-id=sanity-node", "--nfs-workdir=" + s.work, "--v=2"}, args...)...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	testbin.WaitForSocket(ctx, t, s.sock)
	var err error
	if s.conn, err = grpc.NewClient("unix://"+s.sock, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.conn.Close() })
	return s
}

func TestSanityNFS(t *testing.T) {
	if ownProcess(t) {
		return
	}
	n := nfsSetup(t)
	srv := serveNFS(t, n)
	dir := t.TempDir()
	cfg := sanity.NewTestConfig()
	cfg.Address = "unix://" + srv.sock
	cfg.TargetPath = filepath.Join(dir, "mount")
	cfg.StagingPath = filepath.Join(dir, "stage")
	cfg.TestVolumeParameters = n.params()
	cfg.IdempotentCount = 10
	sanity.Test(t, cfg)

	assertNoMountsUnder(t, dir, srv.work)
	if left := entries(t, n.export); len(left) > 0 {
		t.Errorf("sanity's volumes are gone, yet the share still holds %v", left)
	}
}

func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

var fsCap = &csi.VolumeCapability{
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER},
}

// TestNFSVolumeLifecycle follows a volume as a user's claim would: a
// templated sub-directory appears on the share, a pod's writes land in it,
// a read-only mount refuses writes, and deletion removes, keeps or archives it.
func TestNFSVolumeLifecycle(t *testing.T) {
	n := nfsSetup(t)
	srv := serveNFS(t, n)
	conn, work := srv.conn, srv.work
	ctl, node := csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	ctx := context.Background()
	targets := t.TempDir()

	for _, tc := range []struct {
		onDelete string
		gone     bool   // the directory is removed
		archived string // where the data must be afterwards, if kept
	}{
		{onDelete: "delete", gone: true},
		{onDelete: "retain", archived: "team-a/claim-retain"},
		{onDelete: "archive", gone: true, archived: "archived-team-a/claim-archive"},
	} {
		t.Run(tc.onDelete, func(t *testing.T) {
			name := "pvc-" + tc.onDelete
			claim := "claim-" + tc.onDelete
			params := n.params("subDir", "${pvc.metadata.namespace}/${pvc.metadata.name}", "onDelete", tc.onDelete,
				"mountPermissions", "0777",
				"csi.storage.k8s.io/pvc/name", claim, "csi.storage.k8s.io/pvc/namespace", "team-a", "csi.storage.k8s.io/pv/name", name)
			resp, err := ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, Parameters: params, VolumeCapabilities: []*csi.VolumeCapability{fsCap}})
			if err != nil {
				t.Fatal(err)
			}
			vol := resp.GetVolume()
			want := n.server + "#" + strings.Trim(n.share, "/") + "#team-a/" + claim + "#" + name
			if tc.onDelete != "delete" {
				want += "#" + tc.onDelete
			}
			if vol.GetVolumeId() != want {
				t.Errorf("volume handle %q, want csi-driver-nfs's %q", vol.GetVolumeId(), want)
			}
			dir := filepath.Join(n.export, "team-a", claim)
			if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o777 {
				t.Fatalf("the claim's directory on the share: %v, %v (want mode 0777)", fi, err)
			}

			target := filepath.Join(targets, tc.onDelete)
			pub := &csi.NodePublishVolumeRequest{VolumeId: vol.GetVolumeId(), TargetPath: target, VolumeCapability: fsCap, VolumeContext: vol.GetVolumeContext()}
			for range 2 { // idempotent
				if _, err := node.NodePublishVolume(ctx, pub); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(filepath.Join(target, "data"), []byte("kept"), 0o644); err != nil {
				t.Fatal(err)
			}
			if b, err := os.ReadFile(filepath.Join(dir, "data")); err != nil || string(b) != "kept" {
				t.Fatalf("file written in the pod is not on the server: %q, %v", b, err)
			}
			ro := filepath.Join(targets, tc.onDelete+"-ro")
			if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: vol.GetVolumeId(), TargetPath: ro,
				VolumeCapability: fsCap, VolumeContext: vol.GetVolumeContext(), Readonly: true}); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(ro, "x"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
				t.Errorf("write on a read-only publish: %v, want EROFS", err)
			}
			for _, tp := range []string{target, ro, target} { // the last one repeats
				if _, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vol.GetVolumeId(), TargetPath: tp}); err != nil {
					t.Fatal(err)
				}
				if _, err := os.Lstat(tp); !os.IsNotExist(err) {
					t.Errorf("target %s still exists after unpublish: %v", tp, err)
				}
			}
			for range 2 {
				if _, err := ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId()}); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := os.Stat(dir); tc.gone != os.IsNotExist(err) {
				t.Errorf("after delete with onDelete=%s: stat %s: %v", tc.onDelete, dir, err)
			}
			if tc.archived != "" {
				if b, err := os.ReadFile(filepath.Join(n.export, tc.archived, "data")); err != nil || string(b) != "kept" {
					t.Errorf("onDelete=%s: data not kept at %s: %q, %v", tc.onDelete, tc.archived, b, err)
				}
			}
		})
	}
	if _, err := os.Stat(filepath.Join(n.export, "team-a")); err != nil {
		t.Errorf("the retained volume's parent should remain: %v", err)
	}
	assertNoMountsUnder(t, targets, work)
}

// TestNFSExistingVolumes mounts volumes this driver did not create: a PV in
// csi-driver-nfs's handle format, one written by hand with only server and
// share attributes, and an inline (ephemeral) volume.
func TestNFSExistingVolumes(t *testing.T) {
	n := nfsSetup(t)
	srv := serveNFS(t, n)
	conn, work := srv.conn, srv.work
	node := csi.NewNodeClient(conn)
	ctx := context.Background()
	if err := os.MkdirAll(filepath.Join(n.export, "static-dir"), 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(n.export, "static-dir", "hello"), []byte("from the server"), 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(filepath.Join(n.export, "static-dir"))
	opts := map[string]string{}
	if n.mountOptions != "" {
		opts["mountOptions"] = n.mountOptions
	}
	with := func(m map[string]string) map[string]string {
		for k, v := range opts {
			m[k] = v
		}
		return m
	}
	targets := t.TempDir()
	for _, tc := range []struct {
		name, id string
		attrs    map[string]string
		file     string // expected inside the mount
	}{
		{"csi-driver-nfs handle, no attributes", n.server + "#" + strings.Trim(n.share, "/") + "#static-dir#", with(map[string]string{}), "hello"},
		{"csi-driver-nfs PV", n.server + "#" + strings.Trim(n.share, "/") + "#static-dir#",
			with(map[string]string{"server": n.server, "share": n.share, "subdir": "static-dir"}), "hello"},
		{"seed-style static PV", "my-static-volume", with(map[string]string{"server": n.server, "share": n.share}), "static-dir/hello"},
		{"inline volume", "csi-0123456789abcdef", with(map[string]string{"server": n.server, "share": n.share, "subDir": "static-dir",
			"csi.storage.k8s.io/ephemeral": "true", "csi.storage.k8s.io/pod.name": "p"}), "hello"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target := filepath.Join(targets, "t")
			if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: tc.id, TargetPath: target, VolumeCapability: fsCap, VolumeContext: tc.attrs}); err != nil {
				t.Fatal(err)
			}
			if b, err := os.ReadFile(filepath.Join(target, tc.file)); err != nil || string(b) != "from the server" {
				t.Errorf("read %s through the mount: %q, %v", tc.file, b, err)
			}
			st, err := node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: tc.id, VolumePath: target})
			if err != nil || len(st.GetUsage()) != 2 || st.GetUsage()[0].GetTotal() <= 0 {
				t.Errorf("NodeGetVolumeStats: %v, %v", st, err)
			}
			if _, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: tc.id, TargetPath: target}); err != nil {
				t.Fatal(err)
			}
		})
	}
	assertNoMountsUnder(t, targets, work)
}

// TestNFSDeleteSecretsMountOptions: under the standard sidecars a PV's
// mountOptions reach DeleteVolume only as the secrets' mountOptions, as with
// csi-driver-nfs. The share is mounted with them: with ro added the volume
// cannot be removed (the emulation honours ro, as a real server does), a
// malformed value is INVALID_ARGUMENT naming the key, and plain options
// delete the volume.
func TestNFSDeleteSecretsMountOptions(t *testing.T) {
	n := nfsSetup(t)
	srv := serveNFS(t, n)
	ctl := csi.NewControllerClient(srv.conn)
	ctx := context.Background()
	resp, err := ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-secret-opts", Parameters: n.params(), VolumeCapabilities: []*csi.VolumeCapability{fsCap}})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetVolume().GetVolumeId()
	dir := filepath.Join(n.export, "pvc-secret-opts")
	if err := os.WriteFile(filepath.Join(dir, "data"), []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}
	with := func(opt string) map[string]string {
		if n.mountOptions != "" {
			opt = n.mountOptions + "," + opt
		}
		return map[string]string{"mountOptions": opt}
	}
	untouched := func(what string) {
		t.Helper()
		if b, err := os.ReadFile(filepath.Join(dir, "data")); err != nil || string(b) != "kept" {
			t.Errorf("after DeleteVolume with %s the volume's data is %q, %v; want it untouched", what, b, err)
		}
	}

	_, err = ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: with("ro")})
	if err == nil || !strings.Contains(strings.ToLower(status.Convert(err).Message()), "read-only") {
		t.Errorf("DeleteVolume with secrets' mountOptions ro: %v; want a failure on the read-only mount", err)
	}
	untouched("ro in the secrets' mountOptions")

	_, err = ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: with("ro\nrw")})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "mountOptions") {
		t.Errorf("DeleteVolume with a newline in the secrets' mountOptions: %v; want InvalidArgument naming mountOptions", err)
	}
	untouched("a newline in the secrets' mountOptions")

	if _, err := ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: with("rw")}); err != nil {
		t.Fatalf("DeleteVolume with secrets' mountOptions rw: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the volume's directory after DeleteVolume: %v; want it gone", err)
	}
	assertNoMountsUnder(t, srv.work)
}

// TestNFSUnreachableServer: a server that does not answer fails the call
// within the mount timeout, with DEADLINE_EXCEEDED, and leaves no working
// mount point.
func TestNFSUnreachableServer(t *testing.T) {
	n := nfsSetup(t)
	if n.real {
		n.server = "192.0.2.1" // TEST-NET-1: never routed
	} else {
		n.server = "unreachable.test" // no directory in the emulation: it never answers
	}
	srv := serveNFS(t, n, "--nfs-mount-timeout=3s")
	conn, work := srv.conn, srv.work
	ctl := csi.NewControllerClient(conn)
	start := time.Now()
	_, err := ctl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "pvc-x", Parameters: n.params(), VolumeCapabilities: []*csi.VolumeCapability{fsCap}})
	took := time.Since(start)
	if c := status.Code(err); c != codes.DeadlineExceeded && c != codes.Unavailable {
		t.Errorf("CreateVolume on an unreachable server: %v, want DeadlineExceeded or Unavailable", err)
	}
	if took > 15*time.Second {
		t.Errorf("CreateVolume on an unreachable server took %s, the mount timeout is 3s", took)
	}
	t.Logf("unreachable server: %v after %s", err, took.Round(time.Millisecond))
	if left := entries(t, work); len(left) > 0 {
		t.Errorf("working mount points left: %v", left)
	}
}

// TestNFSDeadServer needs a real server it can stop: a volume is mounted,
// the server stops, and unpublish must still come back in bounded time with
// the mount gone.
func TestNFSDeadServer(t *testing.T) {
	stop, start := os.Getenv("MONOCSI_NFS_SERVER_STOP"), os.Getenv("MONOCSI_NFS_SERVER_START")
	if stop == "" || start == "" {
		t.Skip("needs a real NFS server that the test can stop (make e2e-nfs sets MONOCSI_NFS_SERVER_STOP/START)")
	}
	n := nfsSetup(t)
	srv := serveNFS(t, n, "--nfs-mount-timeout=6s")
	conn, work, proc := srv.conn, srv.work, srv.proc
	node := csi.NewNodeClient(conn)
	ctx := context.Background()
	target := filepath.Join(t.TempDir(), "t")
	attrs := map[string]string{"server": n.server, "share": n.share, "mountOptions": n.mountOptions}
	if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "dead", TargetPath: target, VolumeCapability: fsCap, VolumeContext: attrs}); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(stop).CombinedOutput(); err != nil {
		t.Fatalf("stop the NFS server: %v: %s", err, out)
	}
	defer func() {
		if out, err := exec.Command(start).CombinedOutput(); err != nil {
			t.Errorf("restart the NFS server: %v: %s", err, out)
		}
	}()
	// A pod writing now hangs (a hard mount waits for the server forever):
	// that is the proof the server is gone, and the state unpublish must cope with.
	wrote := make(chan error, 1)
	go func() { wrote <- os.WriteFile(filepath.Join(target, "stuck"), []byte("x"), 0o644) }()
	select {
	case err := <-wrote:
		t.Fatalf("a write with the server stopped returned at once (%v): the server is not gone", err)
	case <-time.After(2 * time.Second):
	}
	began := time.Now()
	uctx, cancel := context.WithTimeout(ctx, time.Minute) // a hang fails the test with the driver's log
	defer cancel()
	_, err := node.NodeUnpublishVolume(uctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "dead", TargetPath: target})
	took := time.Since(began)
	t.Logf("unpublish with the server stopped and a writer stuck: %v after %s", err, took.Round(time.Millisecond))
	if err != nil {
		t.Errorf("NodeUnpublishVolume with the server gone: %v", err)
	}
	if took > 30*time.Second {
		t.Errorf("NodeUnpublishVolume took %s with the server gone", took)
	}
	assertNoMountsUnder(t, filepath.Dir(target), work)
	var how []string
	for _, line := range strings.Split(proc.Log(), "\n") {
		if strings.Contains(line, "Unmounted NFS volume the hard way") {
			how = append(how, line)
		}
	}
	if len(how) == 0 {
		t.Errorf("the log does not say the volume was unmounted forcibly or lazily:\n%s", proc.Log())
	}
	t.Logf("the driver's log: %s", strings.Join(how, "; "))
}

// TestNFSSnapshotAndClone: a snapshot is csi-driver-nfs's archive on the
// share; volumes restored from it or cloned from the volume hold its data.
func TestNFSSnapshotAndClone(t *testing.T) {
	n := nfsSetup(t)
	srv := serveNFS(t, n)
	conn, work := srv.conn, srv.work
	ctl := csi.NewControllerClient(conn)
	ctx := context.Background()
	create := func(name string, src *csi.VolumeContentSource) *csi.Volume {
		t.Helper()
		resp, err := ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, Parameters: n.params(), VolumeCapabilities: []*csi.VolumeCapability{fsCap}, VolumeContentSource: src})
		if err != nil {
			t.Fatalf("CreateVolume %s: %v", name, err)
		}
		t.Cleanup(func() { ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: resp.GetVolume().GetVolumeId()}) })
		return resp.GetVolume()
	}
	src := create("pvc-src", nil)
	if err := os.WriteFile(filepath.Join(n.export, "pvc-src", "data"), []byte("snap me"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("data", filepath.Join(n.export, "pvc-src", "link")); err != nil {
		t.Fatal(err)
	}
	snap, err := ctl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-1", SourceVolumeId: src.GetVolumeId()})
	if err != nil {
		t.Fatal(err)
	}
	if want := n.server + "#" + strings.Trim(n.share, "/") + "#snap-1#snap-1#pvc-src"; snap.GetSnapshot().GetSnapshotId() != want || !snap.GetSnapshot().GetReadyToUse() {
		t.Errorf("snapshot %v; want csi-driver-nfs's handle %s, ready", snap.GetSnapshot(), want)
	}
	if _, err := os.Stat(filepath.Join(n.export, "snap-1", "pvc-src.tar.gz")); err != nil {
		t.Errorf("the archive on the share: %v", err)
	}
	for name, cs := range map[string]*csi.VolumeContentSource{
		"pvc-restored": {Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshot().GetSnapshotId()}}},
		"pvc-clone":    {Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: src.GetVolumeId()}}},
	} {
		create(name, cs)
		dir := filepath.Join(n.export, name)
		if b, err := os.ReadFile(filepath.Join(dir, "data")); err != nil || string(b) != "snap me" {
			t.Errorf("%s: data %q, %v", name, b, err)
		}
		if l, err := os.Readlink(filepath.Join(dir, "link")); err != nil || l != "data" {
			t.Errorf("%s: the symlink is %q, %v", name, l, err)
		}
		if fi, err := os.Stat(filepath.Join(dir, "data")); err != nil || fi.Mode().Perm() != 0o640 {
			t.Errorf("%s: mode %v, %v; want 0640 kept", name, fi, err)
		}
	}
	for _, bad := range []string{n.server + "#" + n.share + "#snap-x#snap-x#pvc-src", n.server + "#..#a#a#b", "not-a-snapshot"} {
		_, err := ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-bad", Parameters: n.params(), VolumeCapabilities: []*csi.VolumeCapability{fsCap},
			VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: bad}}}})
		if status.Code(err) != codes.NotFound {
			t.Errorf("restore from %q: %v, want NotFound", bad, err)
		}
	}
	if _, err := os.Stat(filepath.Join(n.export, "pvc-bad")); !os.IsNotExist(err) {
		t.Errorf("a failed restore left its directory: %v", err)
	}
	if _, err := ctl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshot().GetSnapshotId()}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(n.export, "snap-1")); !os.IsNotExist(err) {
		t.Errorf("snapshot directory left after DeleteSnapshot: %v", err)
	}
	assertNoMountsUnder(t, work)
}
