package local

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// du runs du(1) -sx on dir: bytes (allocated, as blocks) and inodes.
func du(t *testing.T, dir string) (int64, int64) {
	t.Helper()
	var out [2]int64
	for i, args := range [][]string{{"-sxB1"}, {"-sx", "--inodes"}} {
		b, err := exec.Command("du", append(args, dir)...).Output()
		if err != nil {
			t.Fatalf("du %v: %v", args, err)
		}
		out[i], err = strconv.ParseInt(strings.Fields(string(b))[0], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
	}
	return out[0], out[1]
}

// fillTree writes a tree with files of several sizes, a sparse file, hard
// links, an empty directory, and symlinks that lead out of the tree to a
// large file and to a directory of many files (never to be counted).
func fillTree(t *testing.T, dir, outside string) {
	t.Helper()
	write := func(p string, n int) {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(strings.Repeat("x", n)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(dir, "a"), 1)
	write(filepath.Join(dir, "b"), 5000)
	write(filepath.Join(dir, "sub/c"), 1<<20)
	write(filepath.Join(dir, "sub/deeper/d"), 70000)
	if err := os.Mkdir(filepath.Join(dir, "empty"), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("end"), 100<<20)
	f.Close()
	if err := os.Link(filepath.Join(dir, "sub/c"), filepath.Join(dir, "hardlink")); err != nil {
		t.Fatal(err)
	}
	write(filepath.Join(outside, "big"), 4<<20)
	for i := range 20 {
		write(filepath.Join(outside, "many", strconv.Itoa(i)), 10000)
	}
	for name, to := range map[string]string{"tofile": filepath.Join(outside, "big"), "todir": filepath.Join(outside, "many"), "sub/up": ".."} {
		if err := os.Symlink(to, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestWalkMatchesDu(t *testing.T) {
	dir, outside := filepath.Join(t.TempDir(), "vol"), t.TempDir()
	fillTree(t, dir, outside)
	u, err := walkUsage(dir, time.Now().Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	b, i := du(t, dir)
	if !u.Complete || u.Bytes != b || u.Inodes != i {
		t.Errorf("walk: %d bytes, %d inodes, complete %v; du: %d bytes, %d inodes", u.Bytes, u.Inodes, u.Complete, b, i)
	}
	if u.Bytes >= 4<<20+1<<20 {
		t.Errorf("%d bytes: a symlink out of the tree was followed", u.Bytes)
	}
	// A walk out of time stops and says so.
	if u, _ := walkUsage(dir, time.Now().Add(-time.Second)); u.Complete && u.Inodes > 64 {
		t.Errorf("a walk past its deadline: %+v", u)
	}
	if _, err := walkUsage(filepath.Join(dir, "tofile"), time.Now().Add(time.Minute)); err == nil {
		t.Error("a walk started on a symlink")
	}
}

func TestWalkStopsAtItsDeadline(t *testing.T) {
	dir := t.TempDir()
	for i := range 300 { // more than one deadline check (every 64 entries)
		if err := os.WriteFile(filepath.Join(dir, strconv.Itoa(i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	u, err := walkUsage(dir, time.Now())
	if err != nil || u.Complete || u.Inodes > 100 {
		t.Errorf("walk with no time: %+v %v", u, err)
	}
	u, err = walkUsage(dir, time.Now().Add(time.Minute))
	if err != nil || !u.Complete || u.Inodes != 301 {
		t.Errorf("walk with time: %+v %v", u, err)
	}
}

// TestWalksAreBoundedAndCached: many volumes asked at once never run more
// walks than the bound; a second ask within the TTL walks nothing.
func TestWalksAreBoundedAndCached(t *testing.T) {
	base := t.TempDir()
	w := newWalker(10*time.Second, time.Hour, 2)
	var wg sync.WaitGroup
	for v := range 8 {
		dir := filepath.Join(base, strconv.Itoa(v))
		for i := range 100 {
			if err := os.MkdirAll(filepath.Join(dir, strconv.Itoa(i)), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		for range 3 { // concurrent asks for one volume share its walk
			wg.Go(func() {
				u, ok := w.get(ctx, strconv.Itoa(v), dir)
				if !ok || !u.Complete || u.Inodes != 101 {
					t.Errorf("volume %d: %+v %v", v, u, ok)
				}
			})
		}
	}
	wg.Wait()
	if w.maxRunning > 2 || w.maxRunning == 0 {
		t.Errorf("%d walks ran at once, the bound is 2", w.maxRunning)
	}
	// Cached: a volume's new files show only after the TTL.
	os.Mkdir(filepath.Join(base, "0", "new"), 0o755)
	if u, _ := w.get(ctx, "0", filepath.Join(base, "0")); u.Inodes != 101 {
		t.Errorf("within the TTL: %d inodes, want the cached 101", u.Inodes)
	}
	w.forget("0")
	if u, _ := w.get(ctx, "0", filepath.Join(base, "0")); u.Inodes != 102 {
		t.Errorf("after forget: %d inodes, want 102", u.Inodes)
	}
}

// TestStatsWithoutQuotaAreTheVolumes: on a root without project quotas,
// NodeGetVolumeStats reports the volume's own usage (a walk, as du), its
// size as total, and not the filesystem's.
func TestStatsWithoutQuotaAreTheVolumes(t *testing.T) {
	d, root := newDriver(t)
	if d.quota != nil {
		t.Skip("project quotas here")
	}
	create(t, d, "v", 64<<20)
	fillTree(t, filepath.Join(root, "v"), t.TempDir())
	target := filepath.Join(t.TempDir(), "target")
	publish(t, d, "v", target, false)
	defer unpublish(t, d, "v", target)
	resp, err := d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "v", VolumePath: target})
	if err != nil {
		t.Fatal(err)
	}
	b, i := du(t, filepath.Join(root, "v"))
	ub, ui := resp.GetUsage()[0], resp.GetUsage()[1]
	if ub.GetUnit() != csi.VolumeUsage_BYTES || ub.GetUsed() != b || ub.GetTotal() != 64<<20 || ub.GetAvailable() != 64<<20-b {
		t.Errorf("bytes %v; du says %d used of 64 MiB", ub, b)
	}
	if ui.GetUsed() != i || ui.GetTotal() != ui.GetUsed()+ui.GetAvailable() {
		t.Errorf("inodes %v; du says %d", ui, i)
	}
	t.Logf("stats: %v %v", ub, ui)
}
