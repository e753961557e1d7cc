package nfs

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A share with a symlink to a sibling volume and one out of the share: no
// helper follows either, and nothing but empty directories is removed.
func TestShareHelpersFollowNoSymlink(t *testing.T) {
	base := t.TempDir()
	share, outside := filepath.Join(base, "share"), filepath.Join(base, "outside")
	for _, d := range []string{share + "/sibling/data", share + "/ns/empty", outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.Symlink("sibling", filepath.Join(share, "to-sibling"))
	os.Symlink(outside, filepath.Join(share, "to-outside"))
	os.WriteFile(filepath.Join(share, "file"), nil, 0o644)
	root, err := os.OpenRoot(share)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()

	for _, name := range []string{"to-sibling", "to-sibling/data", "to-outside/x", "file/x"} {
		for what, f := range map[string]func(*os.Root, string) (*os.Root, error){"openDir": openDir, "mkdirAll": mkdirAll} {
			d, err := f(root, name)
			if err == nil {
				d.Close()
			}
			var pe *pathError
			if !errors.As(err, &pe) || status.Code(shareError("x", name, err)) != codes.InvalidArgument {
				t.Errorf("%s(%q): %v, want a pathError (InvalidArgument)", what, name, err)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(outside, "x")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("mkdirAll created through a symlink out of the share: %v", err)
	}
	if _, err := os.Stat(filepath.Join(share, "sibling", "data", "x")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("mkdirAll created inside the sibling: %v", err)
	}
	d, err := mkdirAll(root, "a/b/c")
	if err != nil {
		t.Fatalf("mkdirAll of a plain path: %v", err)
	}
	d.Close()

	// rmdir never removes a symlink or a file, and removeDir empties only
	// the directory it was given.
	for _, name := range []string{"to-sibling", "to-outside", "file"} {
		if err := rmdir(root, name); err == nil {
			t.Errorf("rmdir(%q) succeeded", name)
		}
		if _, err := os.Lstat(filepath.Join(share, name)); err != nil {
			t.Errorf("%s gone: %v", name, err)
		}
	}
	os.Symlink("../sibling", filepath.Join(share, "ns", "empty", "link"))
	if err := removeDir(root, "ns", "ns"); err != nil {
		t.Fatalf("removeDir: %v", err)
	}
	if _, err := os.Stat(filepath.Join(share, "sibling", "data")); err != nil {
		t.Errorf("removeDir reached the sibling through a symlink: %v", err)
	}
	if err := removeDir(root, "to-sibling", "to-sibling"); err == nil {
		t.Error("removeDir of a symlink succeeded")
	}
	removeEmptyParents(root, "to-sibling/data/x")
	if _, err := os.Stat(filepath.Join(share, "sibling", "data")); err != nil {
		t.Errorf("removeEmptyParents removed through a symlink: %v", err)
	}
}

// Setuid, setgid and sticky survive the trip to os.FileMode and back.
func TestModeBits(t *testing.T) {
	for _, perm := range []uint32{0o777, 0o1777, 0o2775, 0o4755, 0o7777, 0o700} {
		if got := modeBits(fileMode(perm)); got != perm {
			t.Errorf("modeBits(fileMode(0%o)) = 0%o", perm, got)
		}
	}
	dir := t.TempDir()
	root, _ := os.OpenRoot(dir)
	defer root.Close()
	defer syscall.Umask(syscall.Umask(0o077)) // chmod ignores the umask
	for _, perm := range []uint32{0o7777, 0o1777, 0o2770} {
		if err := chmodExactly(root, perm, "."); err != nil {
			t.Fatalf("chmodExactly 0%o: %v", perm, err)
		}
		if fi, _ := os.Stat(dir); modeBits(fi.Mode()) != perm {
			t.Errorf("mode 0%o after chmodExactly 0%o", modeBits(fi.Mode()), perm)
		}
	}
}
