package sanity

// The local driver on filesystems with project quotas. This machine's
// kernel may have none (mount -o prjquota fails), so these tests run in
// the real-kernel tier (make e2e-kernel, test/nfsvm), which mounts an XFS
// prjquota and an ext4 quota,project loop filesystem and names one in
// MONOCSI_LOCAL_QUOTA_DIR, its type in MONOCSI_LOCAL_QUOTA_FS.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/monocsi/monocsi/test/testbin"
)

// quotaFS returns the quota filesystem's directory and type, or skips.
func quotaFS(t *testing.T) (dir, kind string) {
	dir, kind = os.Getenv("MONOCSI_LOCAL_QUOTA_DIR"), os.Getenv("MONOCSI_LOCAL_QUOTA_FS")
	if dir == "" || kind == "" {
		t.Skip("needs a filesystem with project quotas (MONOCSI_LOCAL_QUOTA_DIR, MONOCSI_LOCAL_QUOTA_FS): make e2e-kernel runs it on XFS and ext4")
	}
	return dir, kind
}

// quotaServer is `monocsi serve --driver=local` on a root in the quota
// filesystem, restartable on the same root.
type quotaServer struct {
	sock, root string
	p          *testbin.Process
	conn       *grpc.ClientConn
	ctl        csi.ControllerClient
	node       csi.NodeClient
}

func newQuotaServer(t *testing.T) *quotaServer {
	requireRoot(t)
	dir, _ := quotaFS(t)
	root, err := os.MkdirTemp(dir, "root-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	s := &quotaServer{sock: filepath.Join(t.TempDir(), "csi.sock"), root: root}
	s.start(t)
	return s
}

func (s *quotaServer) start(t *testing.T) {
	t.Helper()
	s.p = testbin.Start(t, "serve", "--driver=local", "--endpoint=unix://"+s.sock, "--node-id=quota-node", "--local-root="+s.root, "--v=2")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	testbin.WaitForSocket(ctx, t, s.sock)
	conn, err := grpc.NewClient("unix://"+s.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	s.conn, s.ctl, s.node = conn, csi.NewControllerClient(conn), csi.NewNodeClient(conn)
}

func (s *quotaServer) restart(t *testing.T) {
	t.Helper()
	s.conn.Close()
	if err := s.p.Stop(); err != nil {
		t.Fatalf("stop monocsi: %v", err)
	}
	s.start(t)
}

func (s *quotaServer) create(t *testing.T, name string, size int64, src *csi.VolumeContentSource) {
	t.Helper()
	_, err := s.ctl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
		Name: name, VolumeCapabilities: []*csi.VolumeCapability{rwoMount},
		CapacityRange: &csi.CapacityRange{RequiredBytes: size}, Parameters: map[string]string{"enforceSize": "true"},
		VolumeContentSource: src,
	})
	if err != nil {
		t.Fatalf("CreateVolume %s: %v", name, err)
	}
}

func (s *quotaServer) publish(t *testing.T, id string) string {
	t.Helper()
	target := filepath.Join(t.TempDir(), "target-"+id)
	if _, err := s.node.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{VolumeId: id, TargetPath: target, VolumeCapability: rwoMount}); err != nil {
		t.Fatalf("publish %s: %v", id, err)
	}
	t.Cleanup(func() {
		s.node.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
	})
	return target
}

func (s *quotaServer) expand(t *testing.T, id string, size int64) {
	t.Helper()
	resp, err := s.ctl.ControllerExpandVolume(context.Background(), &csi.ControllerExpandVolumeRequest{VolumeId: id, CapacityRange: &csi.CapacityRange{RequiredBytes: size}})
	if err != nil || resp.GetCapacityBytes() != size {
		t.Fatalf("expand %s to %d: %v %v", id, size, resp, err)
	}
}

func (s *quotaServer) stats(t *testing.T, id, path string) (bytes, inodes *csi.VolumeUsage) {
	t.Helper()
	resp, err := s.node.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: path})
	if err != nil {
		t.Fatalf("stats of %s: %v", id, err)
	}
	for _, u := range resp.GetUsage() {
		if u.GetUnit() == csi.VolumeUsage_BYTES {
			bytes = u
		} else {
			inodes = u
		}
	}
	return bytes, inodes
}

// projectOf is what the volume's record says and what its directory has.
func (s *quotaServer) projectOf(t *testing.T, id string) uint32 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.root, ".monocsi", id+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		ProjectID uint32 `json:"projectID"`
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	got, inherit := dirProject(t, filepath.Join(s.root, id))
	if rec.ProjectID == 0 || got != rec.ProjectID || !inherit {
		t.Fatalf("volume %s: record project %d, directory project %d (inherit %v)", id, rec.ProjectID, got, inherit)
	}
	return rec.ProjectID
}

// dirProject reads a directory's project ID with FS_IOC_FSGETXATTR.
func dirProject(t *testing.T, dir string) (uint32, bool) {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var x [7]uint32 // struct fsxattr: xflags, extsize, nextents, projid, cowextsize, 8 bytes of padding
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), 0x801c581f, uintptr(unsafe.Pointer(&x[0]))); e != 0 {
		t.Fatalf("FS_IOC_FSGETXATTR %s: %v", dir, e)
	}
	return x[3], x[0]&0x200 != 0
}

// kernelQuota reads a project's usage and block hard limit (bytes) from
// the kernel with quotactl(2) on the filesystem's device and Q_XGETQUOTA
// (which ext4 answers too): another path than the driver's own
// (quotactl_fd, and Q_GETQUOTA on ext4), so a check of it.
func kernelQuota(t *testing.T, id uint32) (used, limit int64) {
	t.Helper()
	dir, _ := quotaFS(t)
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	dev := ""
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == dir {
			for i, x := range f {
				if x == "-" && i+2 < len(f) {
					dev = f[i+2]
				}
			}
		}
	}
	if dev == "" {
		t.Fatalf("no mount at %s", dir)
	}
	devp, err := unix.BytePtrFromString(dev)
	if err != nil {
		t.Fatal(err)
	}
	var d [14]uint64              // struct fs_disk_quota, 112 bytes
	const cmd = ('X'<<8|3)<<8 | 2 // QCMD(Q_XGETQUOTA, PRJQUOTA)
	_, _, e := unix.Syscall6(unix.SYS_QUOTACTL, cmd, uintptr(unsafe.Pointer(devp)), uintptr(id), uintptr(unsafe.Pointer(&d[0])), 0, 0)
	if e == unix.ENOENT { // no dquot: nothing charged, no limit
		return 0, 0
	}
	if e != 0 {
		t.Fatalf("quotactl(Q_XGETQUOTA, %s, project %d): %v", dev, id, e)
	}
	// d_blk_hardlimit at byte 8, d_bcount at byte 40, in 512-byte blocks.
	return int64(d[5]) << 9, int64(d[1]) << 9
}

// fill writes 256 KiB chunks into a new file until the write fails or max
// bytes are written, and returns what was written and the error. The
// writes come from a thread whose user is nobody, as a pod's would be
// without CAP_SYS_RESOURCE: root with it may exceed ext4's quota limits.
func fill(t *testing.T, file string, max int64) (int64, error) {
	t.Helper()
	f, err := os.Create(file)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	type result struct {
		n   int64
		err error
	}
	done := make(chan result)
	go func() {
		runtime.LockOSThread() // not unlocked when the user cannot be put back: the thread ends with the goroutine
		// setresuid(2) on this thread alone (Go's Setresuid changes every
		// thread); the saved user stays root, so it can come back.
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, 65534, 65534, ^uintptr(0)); e != 0 {
			done <- result{err: fmt.Errorf("setresuid: %v", e)}
			return
		}
		chunk := make([]byte, 256<<10)
		for i := range chunk {
			chunk[i] = byte(i)
		}
		var r result
		for r.n < max {
			w, err := f.Write(chunk)
			r.n += int64(w)
			if err == nil {
				err = f.Sync() // delayed allocation: the quota is charged at writeback
			}
			if err != nil {
				r.err = err
				break
			}
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, 0, 0, ^uintptr(0)); e == 0 {
			runtime.UnlockOSThread()
		}
		done <- r
	}()
	r := <-done
	return r.n, r.err
}

// wantFull checks a write stopped at the quota: EDQUOT (ext4) or ENOSPC
// (XFS reports a project quota as a full filesystem), near the limit.
func wantFull(t *testing.T, what string, n, limit int64, err error) {
	t.Helper()
	_, kind := quotaFS(t)
	want := unix.EDQUOT
	if kind == "xfs" {
		want = unix.ENOSPC
	}
	if !errors.Is(err, want) {
		t.Fatalf("%s: wrote %d bytes, then %v; want %v", what, n, err, want)
	}
	if n > limit || n < limit-1<<20 {
		t.Errorf("%s: %d bytes written before %v, the limit is %d", what, n, want, limit)
	}
	t.Logf("%s: %d bytes written, then %v (limit %d)", what, n, err, limit)
}

// duBytes reports a directory's allocated bytes (du -sxB1).
func duBytes(t *testing.T, dir string) int64 {
	t.Helper()
	out, err := exec.Command("du", "-sxB1", dir).Output()
	if err != nil {
		t.Fatalf("du %s: %v", dir, err)
	}
	n, err := strconv.ParseInt(strings.Fields(string(out))[0], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestLocalQuotaEnforced: a volume's size is a project quota: writes stop
// at it, an expansion lets them go on, stats are the volume's own (as du),
// and a restart of monocsi keeps IDs and limits; a delete frees both.
func TestLocalQuotaEnforced(t *testing.T) {
	s := newQuotaServer(t)
	_, kind := quotaFS(t)
	if want := fmt.Sprintf("\"Volume sizes are enforced with project quotas\" root=%q filesystem=%q", s.root, kind); !strings.Contains(s.p.Log(), want) {
		t.Fatalf("monocsi did not log %s:\n%s", want, s.p.Log())
	}
	const size = 8 << 20
	s.create(t, "vol", size, nil)
	id := s.projectOf(t, "vol")
	if used, limit := kernelQuota(t, id); limit != size || used > 64<<10 {
		t.Fatalf("new volume: the kernel says %d used, limit %d; want limit %d", used, limit, size)
	}
	target := s.publish(t, "vol")

	// Writing past the size fails.
	n, err := fill(t, filepath.Join(target, "big"), 2*size)
	wantFull(t, "write into an 8 MiB volume", n, size, err)

	// Stats are the quota's: total the limit, available what is left.
	b, i := s.stats(t, "vol", target)
	used, _ := kernelQuota(t, id)
	if b.GetTotal() != size || b.GetUsed() != used || b.GetAvailable() != size-used {
		t.Errorf("stats %v; the kernel says %d used of %d", b, used, size)
	}
	if i.GetUsed() != 2 { // the directory and the file
		t.Errorf("inodes %v, want 2 used", i)
	}

	// An expansion lets writing continue, up to the new size.
	s.expand(t, "vol", 2*size)
	if _, limit := kernelQuota(t, id); limit != 2*size {
		t.Fatalf("after expansion: limit %d, want %d", limit, 2*size)
	}
	m, err := fill(t, filepath.Join(target, "more"), 2*size)
	wantFull(t, "write after expansion to 16 MiB", n+m, 2*size, err)
	if m < size-1<<20 {
		t.Errorf("after expansion only %d more bytes could be written", m)
	}
	if _, err := s.ctl.ControllerExpandVolume(context.Background(), &csi.ControllerExpandVolumeRequest{VolumeId: "vol", CapacityRange: &csi.CapacityRange{RequiredBytes: size}}); err == nil {
		t.Error("a shrink was accepted")
	}

	// Stats match du within a block per file, for files of many sizes.
	for k, sz := range []int{0, 1, 4095, 4097, 100 << 10, 1 << 20} {
		os.Remove(filepath.Join(target, "big"))
		if err := os.WriteFile(filepath.Join(target, "f"+strconv.Itoa(k)), make([]byte, sz), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	unix.Sync()
	files := 8
	b, _ = s.stats(t, "vol", target)
	d := duBytes(t, filepath.Join(s.root, "vol"))
	if diff := b.GetUsed() - d; diff < -int64(files)*4096 || diff > int64(files)*4096 {
		t.Errorf("stats say %d bytes used, du %d: more than a block per file apart", b.GetUsed(), d)
	}
	t.Logf("stats %d bytes used, du %d", b.GetUsed(), d)

	// A restart keeps the ID and the limit (none restored: none was lost).
	s.create(t, "other", size, nil)
	other := s.projectOf(t, "other")
	usedBefore, _ := kernelQuota(t, id)
	s.restart(t)
	if !strings.Contains(s.p.Log(), "enforcedVolumes=2 limitsRestored=0") {
		t.Errorf("after the restart monocsi did not find 2 enforced volumes with their limits:\n%s", s.p.Log())
	}
	if got := s.projectOf(t, "vol"); got != id {
		t.Errorf("after restart: project %d, was %d", got, id)
	}
	if used, limit := kernelQuota(t, id); limit != 2*size || used != usedBefore {
		t.Errorf("after restart: %d used, limit %d; was %d used, limit %d", used, limit, usedBefore, 2*size)
	}
	n, err = fill(t, filepath.Join(target, "after-restart"), 4*size)
	wantFull(t, "write after restart", n+usedBefore, 2*size, err)
	s.create(t, "third", size, nil)
	if third := s.projectOf(t, "third"); third == id || third == other {
		t.Errorf("a volume made after the restart got project %d, in use", third)
	}

	// A clone is charged to its own project, and fits its size or fails.
	s.create(t, "clone", 3*size, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: "vol"}}})
	cid := s.projectOf(t, "clone")
	cu, climit := kernelQuota(t, cid)
	if vu, _ := kernelQuota(t, id); climit != 3*size || cu < vu-256<<10 || cu > vu+256<<10 {
		t.Errorf("clone: %d used of %d, the source uses %d", cu, climit, vu)
	}

	// Delete frees the ID: its limit goes.
	s.node.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: "vol", TargetPath: target})
	if _, err := s.ctl.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: "vol"}); err != nil {
		t.Fatal(err)
	}
	// XFS inactivates deleted inodes in the background (and gives their
	// blocks back to the quota then): sync, and give it a few seconds.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		unix.Sync()
		used, limit := kernelQuota(t, id)
		if used == 0 && limit == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("10 s after delete: project %d has %d used, limit %d", id, used, limit)
		}
	}
	s.create(t, "reuse", size, nil)
	if got := s.projectOf(t, "reuse"); got != id {
		t.Errorf("the freed project %d was not reused (got %d)", id, got)
	}
}

// TestLocalQuotaParallelCreates: 50 creates at once over gRPC, each volume
// its own project ID on the real filesystem.
func TestLocalQuotaParallelCreates(t *testing.T) {
	s := newQuotaServer(t)
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			name := fmt.Sprintf("p%02d", i)
			_, err := s.ctl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
				Name: name, VolumeCapabilities: []*csi.VolumeCapability{rwoMount},
				CapacityRange: &csi.CapacityRange{RequiredBytes: int64(i+1) << 20},
			})
			if err != nil {
				t.Errorf("create %s: %v", name, err)
			}
		})
	}
	wg.Wait()
	seen := map[uint32]string{}
	for i := range 50 {
		name := fmt.Sprintf("p%02d", i)
		id := s.projectOf(t, name)
		if other, ok := seen[id]; ok {
			t.Errorf("%s and %s share project %d", name, other, id)
		}
		seen[id] = name
		if _, limit := kernelQuota(t, id); limit != int64(i+1)<<20 {
			t.Errorf("%s: limit %d, want %d", name, limit, int64(i+1)<<20)
		}
	}
	t.Logf("50 parallel creates: %d distinct project IDs", len(seen))
}

// TestSanityLocalQuota: csi-sanity for local on the quota filesystem.
func TestSanityLocalQuota(t *testing.T) {
	requireRoot(t)
	dir, _ := quotaFS(t)
	if ownProcess(t) {
		return
	}
	root, err := os.MkdirTemp(dir, "sanity-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(root)
	sock := filepath.Join(t.TempDir(), "csi.sock")
	p := testbin.Start(t, "serve", "--driver=local", "--endpoint=unix://"+sock, "--node-id=sanity-node", "--local-root="+root, "--v=2")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	testbin.WaitForSocket(ctx, t, sock)
	if !strings.Contains(p.Log(), "Volume sizes are enforced with project quotas") {
		t.Fatalf("monocsi does not enforce sizes on %s:\n%s", root, p.Log())
	}
	work := t.TempDir()
	cfg := sanity.NewTestConfig()
	cfg.Address = "unix://" + sock
	cfg.TargetPath = filepath.Join(work, "mount")
	cfg.StagingPath = filepath.Join(work, "stage")
	cfg.TestVolumeSize = 64 << 20
	cfg.IdempotentCount = 10
	sanity.Test(t, cfg)
	assertNoMountsUnder(t, work, root)
}
