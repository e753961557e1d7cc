package local

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestQuotaStructsMatchTheKernel(t *testing.T) {
	for name, got := range map[string]uintptr{
		"struct fsxattr":                unsafe.Sizeof(fsxattr{}),
		"struct fs_disk_quota":          unsafe.Sizeof(fsDiskQuota{}),
		"struct if_dqblk":               unsafe.Sizeof(ifDqblk{}),
		"fs_disk_quota.d_bcount":        unsafe.Offsetof(fsDiskQuota{}.Bcount),
		"fs_disk_quota.d_rtb_hardlimit": unsafe.Offsetof(fsDiskQuota{}.RtbHardlimit),
	} {
		want := map[string]uintptr{"struct fsxattr": 28, "struct fs_disk_quota": 112, "struct if_dqblk": 72,
			"fs_disk_quota.d_bcount": 40, "fs_disk_quota.d_rtb_hardlimit": 72}[name]
		if got != want {
			t.Errorf("%s: %d bytes, the kernel's has %d", name, got, want)
		}
	}
	if qcmd(qXSetQLim, prjQuota) != 0x580402 || qcmd(qSetQuota, prjQuota) != 0x80000802 || qcmd(qGetQuota, prjQuota) != 0x80000702 {
		t.Errorf("QCMD encodings: %#x %#x %#x", qcmd(qXSetQLim, prjQuota), qcmd(qSetQuota, prjQuota), qcmd(qGetQuota, prjQuota))
	}
}

func TestRoundUpToQuotaUnits(t *testing.T) {
	for _, c := range []struct {
		n     int64
		shift uint
		want  uint64
	}{{0, 9, 0}, {-1, 9, 0}, {1, 9, 1}, {512, 9, 1}, {513, 9, 2}, {10 << 20, 10, 10 << 10}, {1025, 10, 2}} {
		if got := roundUp(c.n, c.shift); got != c.want {
			t.Errorf("roundUp(%d, %d) = %d, want %d", c.n, c.shift, got, c.want)
		}
	}
	if got := limitOf(&fakeQuota{kind: "ext4"}, 1000); got != 1024 {
		t.Errorf("ext4 limit of 1000 bytes: %d", got)
	}
	if got := limitOf(&fakeQuota{kind: "xfs"}, 1000); got != 1024 {
		t.Errorf("xfs limit of 1000 bytes: %d", got)
	}
	if got := limitOf(&fakeQuota{kind: "xfs"}, 513); got != 1024 {
		t.Errorf("xfs limit of 513 bytes: %d", got)
	}
}

const mountinfo = `22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:2 - proc proc rw
29 22 7:0 / /mnt/xfs rw,relatime shared:5 - xfs /dev/loop0 rw,attr2,inode64,logbufs=8,logbsize=32k,prjquota
30 22 7:1 / /mnt/ext\0404 rw,relatime shared:6 - ext4 /dev/loop1 rw,prjquota
31 22 7:2 / /mnt/plain rw,relatime shared:7 - ext4 /dev/loop2 rw
32 22 7:3 / /mnt/acct rw,relatime shared:8 - xfs /dev/loop3 rw,attr2,inode64,pqnoenforce
33 22 7:4 / /mnt/noquota rw,relatime shared:9 - xfs /dev/loop4 rw,attr2,inode64,noquota
34 22 0:40 / /tmp rw,nosuid,nodev shared:10 - tmpfs tmpfs rw,size=4194304k
35 29 7:0 /sub /mnt/xfs/bound rw,relatime shared:5 - xfs /dev/loop0 rw,attr2,inode64,prjquota
36 34 0:41 / /tmp/over rw - tmpfs tmpfs rw
37 36 0:42 / /tmp/over rw - tmpfs tmpfs rw
garbage line
38 22 x:y / /bad rw - ext4 /dev/x rw
`

func TestMountInfoAndQuotaSupport(t *testing.T) {
	entries := parseMountInfo([]byte(mountinfo))
	if len(entries) != 11 {
		t.Fatalf("parsed %d entries, want 11: %+v", len(entries), entries)
	}
	if e := entries[3]; e.MountPoint != "/mnt/ext 4" || e.FSType != "ext4" || e.Source != "/dev/loop1" || e.Major != 7 || e.Minor != 1 {
		t.Errorf("escaped entry: %+v", e)
	}
	for _, c := range []struct {
		path         string
		major, minor uint32
		mountPoint   string
		kind         string
		why          []string // words the reason must hold
	}{
		{"/mnt/xfs/root", 7, 0, "/mnt/xfs", "xfs", nil},
		{"/mnt/xfs", 7, 0, "/mnt/xfs", "xfs", nil},
		{"/mnt/xfs/bound/x", 7, 0, "/mnt/xfs/bound", "xfs", nil},
		{"/mnt/ext 4/volumes", 7, 1, "/mnt/ext 4", "ext4", nil},
		{"/mnt/plain/r", 7, 2, "/mnt/plain", "", []string{"ext4", "/dev/loop2", "prjquota", "-O quota,project"}},
		{"/mnt/acct/r", 7, 3, "/mnt/acct", "", []string{"xfs", "pqnoenforce", "-o prjquota"}},
		{"/mnt/noquota/r", 7, 4, "/mnt/noquota", "", []string{"xfs", "/dev/loop4", "not mounted with prjquota"}},
		{"/var/lib/monocsi", 254, 0, "/", "", []string{"ext4", "/dev/vda", "prjquota"}},
		{"/tmp/x", 0, 40, "/tmp", "", []string{"tmpfs", "no project quotas", "XFS", "ext4"}},
		{"/tmp/over/x", 0, 42, "/tmp/over", "", []string{"tmpfs"}},
		{"/mnt/xfsother", 7, 0, "", "", nil},             // a prefix of the name is not a parent
		{"/btrfs/sub", 0, 99, "/", "", []string{"ext4"}}, // no entry of its device: the longest parent
	} {
		e, ok := mountOf(entries, c.path, c.major, c.minor)
		if c.mountPoint == "" {
			if ok && e.MountPoint == "/mnt/xfs" {
				t.Errorf("%s: matched %s", c.path, e.MountPoint)
			}
			continue
		}
		if !ok || e.MountPoint != c.mountPoint {
			t.Errorf("%s: mount %q (found %v), want %q", c.path, e.MountPoint, ok, c.mountPoint)
			continue
		}
		if c.path == "/tmp/over/x" && e.Minor != 42 {
			t.Errorf("%s: got the hidden mount %+v, want the visible one", c.path, e)
		}
		kind, why := quotaSupport(e)
		if kind != c.kind {
			t.Errorf("%s: kind %q (%s), want %q", c.path, kind, why, c.kind)
		}
		for _, w := range c.why {
			if !strings.Contains(why, w) {
				t.Errorf("%s: reason %q does not say %q", c.path, why, w)
			}
		}
	}
}

func TestProjectIDsNeverShared(t *testing.T) {
	p := newProjectIDs(100, 1000)
	foreign := map[uint32]bool{101: true, 103: true}
	var mu sync.Mutex
	got := map[uint32]string{}
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			vol := fmt.Sprintf("vol-%d", i)
			id, err := p.allocate(vol, func(id uint32) (bool, error) { return foreign[id], nil })
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if other, ok := got[id]; ok {
				t.Errorf("ID %d given to %s and %s", id, other, vol)
			}
			got[id] = vol
		})
	}
	wg.Wait()
	if len(got) != 50 {
		t.Fatalf("%d IDs for 50 volumes", len(got))
	}
	for id := range got {
		if foreign[id] || id < 100 || id > 151 {
			t.Errorf("ID %d: foreign or not among the lowest free", id)
		}
	}
	// Released IDs are reused; a release by a volume that does not hold it is ignored.
	p.release(100, "not-the-owner")
	p.release(102, got[102])
	if id, _ := p.allocate("again", func(id uint32) (bool, error) { return foreign[id], nil }); id != 102 {
		t.Errorf("after release of 102: allocated %d", id)
	}
	if err := p.add(104, "someone-else"); err == nil {
		t.Error("an ID recorded for two volumes was accepted")
	}
	small := newProjectIDs(1, 2)
	small.allocate("a", func(uint32) (bool, error) { return false, nil })
	small.allocate("b", func(uint32) (bool, error) { return false, nil })
	if _, err := small.allocate("c", func(uint32) (bool, error) { return false, nil }); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("exhausted range: %v, want ResourceExhausted", err)
	}
	if _, err := newProjectIDs(1, 9).allocate("c", func(uint32) (bool, error) { return false, fmt.Errorf("EIO") }); status.Code(err) != codes.Internal {
		t.Errorf("quota read error: %v", err)
	}
	top := newProjectIDs(1<<32-2, 1<<32-1) // no wrap-around past the top
	for range 3 {
		top.allocate("x", func(uint32) (bool, error) { return false, nil })
	}
	if _, ok := top.used[0]; ok {
		t.Error("allocation wrapped around to ID 0")
	}
}

func TestRecordFormat(t *testing.T) {
	b, err := json.Marshal(record{CapacityBytes: 10 << 20, ProjectID: 524288})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"projectID":524288`) || !strings.Contains(string(b), `"capacityBytes":10485760`) {
		t.Errorf("record: %s", b)
	}
	b, _ = json.Marshal(record{CapacityBytes: 1})
	if strings.Contains(string(b), "projectID") {
		t.Errorf("a record without a project names one: %s", b)
	}
	var old record // written before project quotas: no ID, not enforced
	if err := json.Unmarshal([]byte(`{"capacityBytes":5,"created":"2026-01-02T03:04:05Z"}`), &old); err != nil || old.ProjectID != 0 || old.CapacityBytes != 5 {
		t.Errorf("old record: %+v %v", old, err)
	}
}

// fakeQuota is quotaFS in memory: what the driver sets is what it reads.
type fakeQuota struct {
	kind     string
	mu       sync.Mutex
	limits   map[uint32]int64
	projects map[string]uint32
	inodes   map[uint32]int64 // usage per project
	bytes    map[uint32]int64
	fail     error // returned by SetLimit when set
}

func newFakeQuota() *fakeQuota {
	return &fakeQuota{kind: "xfs", limits: map[uint32]int64{}, projects: map[string]uint32{}, inodes: map[uint32]int64{}, bytes: map[uint32]int64{}}
}

func (f *fakeQuota) Kind() string { return f.kind }
func (f *fakeQuota) SetLimit(id uint32, n int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	f.limits[id] = n
	return nil
}
func (f *fakeQuota) Usage(id uint32) (quotaUsage, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return quotaUsage{Bytes: f.bytes[id], Inodes: f.inodes[id], LimitBytes: limitOf(f, f.limits[id])}, nil
}
func (f *fakeQuota) SetProject(dir string, id uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.projects[filepath.Base(dir)] = id
	f.inodes[id]++
	return nil
}
func (f *fakeQuota) Project(dir string) (uint32, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.projects[filepath.Base(dir)], true, nil
}

func newQuotaDriver(t *testing.T, root string, q quotaFS) *Driver {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("needs root for real bind mounts: run `make test` as root")
	}
	d, err := New(Config{NodeID: "node-a", Root: root, quota: q})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

// TestParallelCreatesGetTheirOwnProjectIDs: 50 creates at once never share
// an ID; the IDs survive a restart, and a delete frees its ID and limit.
func TestParallelCreatesGetTheirOwnProjectIDs(t *testing.T) {
	root := filepath.Join(t.TempDir(), "root")
	q := newFakeQuota()
	q.inodes[firstProjectID+1] = 3 // someone else's project
	d := newQuotaDriver(t, root, q)
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			_, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{
				Name: fmt.Sprintf("vol-%02d", i), VolumeCapabilities: []*csi.VolumeCapability{rwo},
				CapacityRange: &csi.CapacityRange{RequiredBytes: int64(i+1) << 20},
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	recorded := func(d *Driver) map[uint32]string {
		ids := map[uint32]string{}
		for i := range 50 {
			vol := fmt.Sprintf("vol-%02d", i)
			rec, err := d.readRecord(vol)
			if err != nil || rec == nil {
				t.Fatalf("record of %s: %v", vol, err)
			}
			if other, ok := ids[rec.ProjectID]; ok || rec.ProjectID == 0 {
				t.Errorf("%s has project %d (also %s)", vol, rec.ProjectID, other)
			}
			ids[rec.ProjectID] = vol
			if q.projects[vol] != rec.ProjectID {
				t.Errorf("%s: directory has project %d, record %d", vol, q.projects[vol], rec.ProjectID)
			}
			if q.limits[rec.ProjectID] != int64(i+1)<<20 {
				t.Errorf("%s: limit %d, want %d", vol, q.limits[rec.ProjectID], int64(i+1)<<20)
			}
		}
		return ids
	}
	before := recorded(d)
	if _, ok := before[firstProjectID+1]; ok {
		t.Error("a project that owns files nobody recorded was given to a volume")
	}

	// A restart keeps every ID; a new volume gets a fresh one.
	q.limits[firstProjectID] = 0 // someone cleared a limit while the driver was down
	d.Close()
	d = newQuotaDriver(t, root, q)
	after := recorded(d)
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Errorf("IDs changed across a restart:\nbefore %v\nafter  %v", before, after)
	}
	v := create(t, d, "vol-new", 1<<20)
	rec, _ := d.readRecord(v.GetVolumeId())
	if _, ok := before[rec.ProjectID]; ok || rec.ProjectID == firstProjectID+1 {
		t.Errorf("new volume got project %d, already used", rec.ProjectID)
	}

	// Delete frees the ID (and clears its limit); the next volume reuses it.
	freed := mustRecord(t, d, "vol-07").ProjectID
	if _, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "vol-07"}); err != nil {
		t.Fatal(err)
	}
	if q.limits[freed] != 0 {
		t.Errorf("limit of deleted volume's project %d: %d", freed, q.limits[freed])
	}
	q.inodes[freed] = 0 // the directory is gone
	create(t, d, "vol-reuse", 1<<20)
	if got := mustRecord(t, d, "vol-reuse").ProjectID; got != freed {
		t.Errorf("after deleting project %d, the next volume got %d", freed, got)
	}
}

func mustRecord(t *testing.T, d *Driver, id string) *record {
	t.Helper()
	rec, err := d.readRecord(id)
	if err != nil || rec == nil {
		t.Fatalf("record of %s: %v", id, err)
	}
	return rec
}

func TestExpandRaisesTheLimitAndRefusesShrinks(t *testing.T) {
	q := newFakeQuota()
	d := newQuotaDriver(t, filepath.Join(t.TempDir(), "root"), q)
	create(t, d, "v", 10<<20)
	id := mustRecord(t, d, "v").ProjectID
	expand := func(req, lim int64) (*csi.ControllerExpandVolumeResponse, error) {
		return d.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: "v", CapacityRange: &csi.CapacityRange{RequiredBytes: req, LimitBytes: lim}})
	}
	resp, err := expand(20<<20, 0)
	if err != nil || resp.GetCapacityBytes() != 20<<20 || resp.GetNodeExpansionRequired() {
		t.Fatalf("expand: %v %v", resp, err)
	}
	if q.limits[id] != 20<<20 || mustRecord(t, d, "v").CapacityBytes != 20<<20 {
		t.Errorf("after expand: limit %d, record %d", q.limits[id], mustRecord(t, d, "v").CapacityBytes)
	}
	if _, err := expand(20<<20, 0); err != nil { // a retry
		t.Errorf("same size again: %v", err)
	}
	_, err = expand(5<<20, 0)
	wantCode(t, err, codes.OutOfRange, "shrink")
	_, err = expand(0, 15<<20)
	wantCode(t, err, codes.OutOfRange, "limit below the size")
	q.fail = fmt.Errorf("EIO")
	_, err = expand(30<<20, 0)
	wantCode(t, err, codes.Internal, "quota failure")
	q.fail = nil
	if rec := mustRecord(t, d, "v"); rec.CapacityBytes != 20<<20 {
		t.Errorf("a failed expand recorded %d bytes", rec.CapacityBytes)
	}

	// A failed create gives its ID back.
	q.fail = fmt.Errorf("EIO")
	_, err = d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "w", VolumeCapabilities: []*csi.VolumeCapability{rwo}})
	wantCode(t, err, codes.Internal, "create with a failing quota")
	q.fail = nil
	create(t, d, "w", 1<<20)
	if got := mustRecord(t, d, "w").ProjectID; got != id+1 {
		t.Errorf("after a failed create: project %d, want %d", got, id+1)
	}
}

func TestEnforceSizeParameter(t *testing.T) {
	mk := func(d *Driver, name, v string) error {
		_, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{
			Name: name, VolumeCapabilities: []*csi.VolumeCapability{rwo},
			CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}, Parameters: map[string]string{ParamEnforceSize: v},
		})
		return err
	}
	// This machine's filesystems have no project quotas.
	plain, root := newDriver(t)
	if plain.quota != nil {
		t.Skipf("%s has project quotas here; the test wants a root without", root)
	}
	err := mk(plain, "a", "true")
	wantCode(t, err, codes.ResourceExhausted, "enforceSize=true without quotas")
	msg := status.Convert(err).Message()
	for _, w := range []string{"prjquota", root, "enforceSize"} {
		if !strings.Contains(msg, w) {
			t.Errorf("message %q does not name %q", msg, w)
		}
	}
	if _, err := os.Lstat(filepath.Join(root, "a")); !os.IsNotExist(err) {
		t.Errorf("a refused create left %s", filepath.Join(root, "a"))
	}
	wantCode(t, mk(plain, "b", "yes"), codes.InvalidArgument, "enforceSize=yes")
	if err := mk(plain, "c", "false"); err != nil {
		t.Errorf("enforceSize=false: %v", err)
	}
	if err := mk(plain, "d", "x\x00"); status.Code(err) != codes.InvalidArgument {
		t.Errorf("enforceSize with a NUL: %v", err)
	}

	q := newFakeQuota()
	d := newQuotaDriver(t, filepath.Join(t.TempDir(), "root"), q)
	if err := mk(d, "enforced", "true"); err != nil || mustRecord(t, d, "enforced").ProjectID == 0 {
		t.Errorf("enforceSize=true with quotas: %v", err)
	}
	if err := mk(d, "free", "false"); err != nil || mustRecord(t, d, "free").ProjectID != 0 {
		t.Errorf("enforceSize=false with quotas: %v, project %d", err, mustRecord(t, d, "free").ProjectID)
	}
	wantCode(t, mk(d, "free", "true"), codes.AlreadyExists, "the same name, now enforced")
	if err := mk(d, "enforced", "true"); err != nil {
		t.Errorf("repeated create: %v", err)
	}
}

func TestStatsFromQuota(t *testing.T) {
	q := newFakeQuota()
	d := newQuotaDriver(t, filepath.Join(t.TempDir(), "root"), q)
	create(t, d, "v", 10<<20)
	id := mustRecord(t, d, "v").ProjectID
	q.bytes[id], q.inodes[id] = 3<<20, 7
	resp, err := d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "v", VolumePath: d.volumeDir("v")})
	if err != nil {
		t.Fatal(err)
	}
	b, i := resp.GetUsage()[0], resp.GetUsage()[1]
	if b.GetTotal() != 10<<20 || b.GetUsed() != 3<<20 || b.GetAvailable() != 7<<20 {
		t.Errorf("bytes: %v", b)
	}
	if i.GetUsed() != 7 || i.GetTotal() != i.GetUsed()+i.GetAvailable() {
		t.Errorf("inodes: %v", i)
	}
	q.bytes[id] = 11 << 20 // over the limit (written before a limit was set)
	resp, _ = d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "v", VolumePath: d.volumeDir("v")})
	if b := resp.GetUsage()[0]; b.GetAvailable() != 0 {
		t.Errorf("over the limit: %v", b)
	}
}

func TestDetectQuotaHere(t *testing.T) {
	q, why := detectQuota(t.TempDir())
	if q != nil {
		t.Skipf("this machine's temp dir has project quotas (%s)", q.Kind())
	}
	if !strings.Contains(why, "prjquota") {
		t.Errorf("reason %q does not say what to mount with", why)
	}
}
