package treecopy

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func archive(t *testing.T, entries ...tar.Header) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range entries {
		h.Mode = 0o644
		data := []byte("evil")
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(data))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write(data)
		}
	}
	tw.Close()
	return &buf
}

// A hostile archive must fail without writing outside the target.
func TestExtractRefusesToEscape(t *testing.T) {
	cases := map[string][]tar.Header{
		"dot-dot":         {{Name: "../outside", Typeflag: tar.TypeReg}},
		"absolute":        {{Name: "/outside", Typeflag: tar.TypeReg}},
		"through symlink": {{Name: "l", Typeflag: tar.TypeSymlink, Linkname: ".."}, {Name: "l/outside", Typeflag: tar.TypeReg}},
		"abs symlink":     {{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "/tmp"}, {Name: "l/outside", Typeflag: tar.TypeReg}},
		"device":          {{Name: "dev", Typeflag: tar.TypeChar}},
		// Hard links must not reach a file outside, which a later entry
		// or a user of the tree could then write through.
		"hard link dot-dot":      {{Name: "h", Typeflag: tar.TypeLink, Linkname: "../canary"}},
		"hard link absolute":     {{Name: "h", Typeflag: tar.TypeLink, Linkname: "/etc/passwd"}},
		"hard link via symlink":  {{Name: "l", Typeflag: tar.TypeSymlink, Linkname: ".."}, {Name: "h", Typeflag: tar.TypeLink, Linkname: "l/canary"}},
		"hard link, abs symlink": {{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "/etc"}, {Name: "h", Typeflag: tar.TypeLink, Linkname: "l/passwd"}},
	}
	for name, entries := range cases {
		t.Run(name, func(t *testing.T) {
			base := t.TempDir()
			dst := filepath.Join(base, "dst")
			os.Mkdir(dst, 0o755)
			canary := filepath.Join(base, "canary")
			if err := os.WriteFile(canary, []byte("canary"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := Extract(archive(t, entries...), dst); err == nil {
				t.Fatal("hostile archive extracted without error")
			}
			for _, f := range []string{canary, "/etc/passwd"} {
				if fi, err := os.Stat(f); err != nil || fi.Sys().(*syscall.Stat_t).Nlink != 1 {
					t.Fatalf("%s gained a hard link (or is gone): %v", f, err)
				}
			}
			if _, err := os.Lstat(filepath.Join(base, "outside")); err == nil {
				t.Fatal("a file was written outside the target")
			}
			if _, err := os.Lstat("/tmp/outside"); err == nil {
				t.Fatal("a file was written to /tmp")
			}
		})
	}
}

func TestCopyKeepsTree(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	os.MkdirAll(filepath.Join(src, "a/b"), 0o700)
	os.WriteFile(filepath.Join(src, "a/b/f"), bytes.Repeat([]byte("x"), 100_000), 0o600)
	os.Symlink("b/f", filepath.Join(src, "a/l"))
	if err := Copy(src, dst); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dst, "a/l"))
	if err != nil || len(b) != 100_000 {
		t.Fatalf("copied file through copied link: %d bytes, %v", len(b), err)
	}
	fi, _ := os.Stat(filepath.Join(dst, "a/b"))
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v", fi.Mode())
	}
}

// A directory swapped for a symlink to a canary tree outside, over and over
// while trees are archived, copied and restored, never brings the canary's
// content in and never changes the canary.
func TestSymlinkSwapDuringCopy(t *testing.T) {
	base := t.TempDir()
	canary := filepath.Join(base, "canary")
	for _, f := range []string{"secret", "d0/secret", "sub/secret"} {
		os.MkdirAll(filepath.Dir(filepath.Join(canary, f)), 0o755)
		if err := os.WriteFile(filepath.Join(canary, f), []byte("CANARY"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	before := snapshotTree(t, canary)
	src := filepath.Join(base, "src")
	for i := range 10 {
		d := filepath.Join(src, "d", fmt.Sprintf("d%d", i))
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "f"), []byte("data"), 0o644)
	}
	out, dsts := filepath.Join(base, "out"), filepath.Join(base, "dst")
	os.Mkdir(out, 0o755)
	os.Mkdir(dsts, 0o755)
	if _, err := WriteFile(filepath.Join(out, "good.tar.gz"), src); err != nil {
		t.Fatal(err)
	}
	outRoot, _ := os.OpenRoot(out)
	defer outRoot.Close()
	srcRoot, _ := os.OpenRoot(src)
	defer srcRoot.Close()

	// swap puts a symlink to the canary (absolute, then relative) in
	// place of name in root and back, until stopped. It works through the
	// root so that it never follows the other swapper's symlink itself
	// (nested swaps would otherwise write into the canary).
	swap := func(root *os.Root, name string, stop <-chan struct{}, done *sync.WaitGroup) {
		defer done.Done()
		rel, _ := filepath.Rel(filepath.Dir(filepath.Join(root.Name(), name)), canary)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if root.Rename(name, name+".real") != nil {
				runtime.Gosched()
				continue
			}
			to := canary
			if i%2 == 1 {
				to = rel
			}
			root.Symlink(to, name)
			runtime.Gosched()
			root.Remove(name)
			root.Rename(name+".real", name)
		}
	}
	stop := make(chan struct{})
	var swappers sync.WaitGroup
	swappers.Add(2)
	go swap(srcRoot, "d", stop, &swappers)
	go swap(srcRoot, "d/d3", stop, &swappers)
	var failed int
	for i := range 30 {
		if _, err := WriteFileAt(outRoot, "a.tar.gz", srcRoot); err != nil {
			failed++
		} else {
			checkArchive(t, filepath.Join(out, "a.tar.gz"))
		}
		dst := filepath.Join(dsts, fmt.Sprintf("copy%d", i))
		os.Mkdir(dst, 0o755)
		dstRoot, _ := os.OpenRoot(dst)
		if CopyRoot(srcRoot, dstRoot) != nil {
			failed++
		}
		dstRoot.Close()
		checkTree(t, dst)

		// Restore into a tree whose directory is swapped meanwhile.
		dst = filepath.Join(dsts, fmt.Sprintf("restore%d", i))
		os.MkdirAll(filepath.Join(dst, "d"), 0o755)
		dstRoot, _ = os.OpenRoot(dst)
		rstop := make(chan struct{})
		var rs sync.WaitGroup
		rs.Add(1)
		go swap(dstRoot, "d", rstop, &rs)
		if ExtractFileAt(outRoot, "good.tar.gz", dstRoot) != nil {
			failed++
		}
		close(rstop)
		rs.Wait()
		dstRoot.Close()
		checkTree(t, dst)
	}
	close(stop)
	swappers.Wait()
	t.Logf("%d operations of 90 failed on a swapped directory (allowed); none reached the canary", failed)
	if after := snapshotTree(t, canary); after != before {
		t.Fatalf("the canary changed:\nbefore %s\nafter  %s", before, after)
	}
}

// snapshotTree lists a tree's entries with their content.
func snapshotTree(t *testing.T, dir string) string {
	var b strings.Builder
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		data, _ := os.ReadFile(p)
		fmt.Fprintf(&b, "%s %v %q\n", p, d.Type(), data)
		return nil
	})
	return b.String()
}

// checkTree fails when a regular file of the tree (symlinks not followed)
// holds the canary's content.
func checkTree(t *testing.T, dir string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if b, _ := os.ReadFile(p); string(b) == "CANARY" {
				t.Errorf("%s holds the canary's content", p)
			}
		}
		return nil
	})
}

func checkArchive(t *testing.T, file string) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	for {
		hdr, err := tr.Next()
		if err != nil {
			return
		}
		if b, _ := io.ReadAll(tr); string(b) == "CANARY" {
			t.Errorf("archive entry %s holds the canary's content", hdr.Name)
		}
	}
}

// A FIFO never blocks a copy: in a tree it is skipped, and an archive that
// is one is refused at once (opening it to read would wait for a writer for
// ever, with the caller's lock held).
func TestFIFONeverBlocks(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644)
	root, _ := os.OpenRoot(dir)
	defer root.Close()
	done := make(chan error, 2)
	go func() { done <- WriteRoot(io.Discard, root) }()
	go func() {
		dst, _ := os.OpenRoot(t.TempDir())
		defer dst.Close()
		done <- ExtractFileAt(root, "fifo", dst)
	}()
	for range 2 {
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, ErrNotRegular) {
				t.Errorf("got %v; want success (tree) or ErrNotRegular (archive)", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a FIFO blocked the copy")
		}
	}
	if _, _, err := OpenRegular(root, "fifo"); !errors.Is(err, ErrNotRegular) {
		t.Errorf("OpenRegular(fifo): %v", err)
	}
}
