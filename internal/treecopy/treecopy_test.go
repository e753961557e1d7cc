package treecopy

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
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
