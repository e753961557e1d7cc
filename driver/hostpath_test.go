package driver

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// hostTree builds, under a temporary directory:
//
//	real/sub/         directories
//	link -> real      a symlinked directory
//	file              a regular file
//	dangling -> nowhere
//	res/inner/        a directory to reserve
func hostTree(t *testing.T) string {
	t.Helper()
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"real/sub", "res/inner"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	must(t, os.Symlink(filepath.Join(dir, "real"), filepath.Join(dir, "link")))
	must(t, os.Symlink(filepath.Join(dir, "nowhere"), filepath.Join(dir, "dangling")))
	must(t, os.WriteFile(filepath.Join(dir, "file"), []byte("data"), 0o644))
	return dir
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func wantStatus(t *testing.T, err error, code codes.Code, says string) {
	t.Helper()
	if status.Code(err) != code {
		t.Errorf("got %v, want %s", err, code)
		return
	}
	if code != codes.OK && (status.Convert(err).Message() == "" || !strings.Contains(status.Convert(err).Message(), says)) {
		t.Errorf("message %q does not say %q", status.Convert(err).Message(), says)
	}
}

func TestCheckHostPath(t *testing.T) {
	dir := hostTree(t)
	res, err := Reserve("the test's storage", filepath.Join(dir, "res"))
	must(t, err)
	for _, tc := range []struct {
		name, path string
		code       codes.Code
		says       string
	}{
		{"existing directory", dir + "/real", codes.OK, ""},
		{"missing last component", dir + "/real/new", codes.OK, ""},
		{"missing parent", dir + "/missing/new", codes.OK, ""},
		{"symlink last component", dir + "/link", codes.InvalidArgument, "is a symlink"},
		{"symlinked parent", dir + "/link/new", codes.InvalidArgument, dir + "/link is a symlink"},
		{"symlinked grandparent", dir + "/link/sub/new", codes.InvalidArgument, dir + "/link is a symlink"},
		{"dangling symlink", dir + "/dangling", codes.InvalidArgument, "is a symlink"},
		{"under a dangling symlink", dir + "/dangling/x", codes.InvalidArgument, "is a symlink"},
		{"regular file", dir + "/file", codes.InvalidArgument, "is a regular file, not a directory"},
		{"regular file as parent", dir + "/file/x", codes.InvalidArgument, "is a regular file, not a directory"},
		{"character device", "/dev/null", codes.InvalidArgument, "character device"},
		{"magic link in /proc", "/proc/self/cwd", codes.InvalidArgument, "/proc/self is a symlink"},
		{"relative", "real/x", codes.InvalidArgument, "clean absolute path"},
		{"not clean", dir + "/real/../file", codes.InvalidArgument, "clean absolute path"},
		{"trailing slash", dir + "/real/", codes.InvalidArgument, "clean absolute path"},
		{"NUL", dir + "/re\x00al", codes.InvalidArgument, "clean absolute path"},
		{"root", "/", codes.InvalidArgument, "must not be /"},
		{"empty", "", codes.InvalidArgument, "is required"},
		{"too long", "/" + strings.Repeat("a/", 3000), codes.InvalidArgument, "the limit is"},
		{"component too long", dir + "/" + strings.Repeat("a", 300), codes.InvalidArgument, "too long"},
		{"reserved itself", dir + "/res", codes.InvalidArgument, "the test's storage"},
		{"inside reserved", dir + "/res/inner", codes.InvalidArgument, "is inside " + dir + "/res"},
		{"missing inside reserved", dir + "/res/new", codes.InvalidArgument, "is inside"},
		{"above reserved", dir, codes.InvalidArgument, "above " + dir + "/res"},
		{"sibling with a common prefix", dir + "/resx", codes.OK, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantStatus(t, CheckHostPath("target path", tc.path, res), tc.code, tc.says)
		})
	}
}

// A directory reserved and bind-mounted elsewhere is recognised through
// the other path too: by device and inode, not by name.
func TestReservedThroughBindMount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root for a bind mount: run the tests as root")
	}
	dir := hostTree(t)
	res, err := Reserve("the test's storage", filepath.Join(dir, "res"))
	must(t, err)
	alias := filepath.Join(dir, "alias")
	must(t, os.Mkdir(alias, 0o755))
	must(t, unix.Mount(filepath.Join(dir, "res"), alias, "", unix.MS_BIND, ""))
	defer unix.Unmount(alias, unix.MNT_DETACH)
	wantStatus(t, CheckHostPath("target path", alias+"/inner", res), codes.InvalidArgument, "is inside")
	wantStatus(t, CheckHostPath("target path", alias, res), codes.InvalidArgument, "is inside")
	// Reserve notices the mount over the directory.
	if now, err := Reserve("", filepath.Join(dir, "res")); err != nil || !now.Same(res) {
		t.Errorf("the same directory: %v, %v", now, err)
	}
	must(t, unix.Mount("tmpfs", filepath.Join(dir, "res"), "tmpfs", 0, "size=1m"))
	defer unix.Unmount(filepath.Join(dir, "res"), unix.MNT_DETACH)
	if now, err := Reserve("", filepath.Join(dir, "res")); err != nil || now.Same(res) {
		t.Errorf("a tmpfs mounted over the reserved directory went unnoticed: %v", err)
	}
}

func TestMkdirHostPath(t *testing.T) {
	dir := hostTree(t)
	created, err := MkdirHostPath("target path", dir+"/real/new", 0o750, false)
	if err != nil || !created {
		t.Fatalf("created %v, %v", created, err)
	}
	if fi, err := os.Lstat(dir + "/real/new"); err != nil || !fi.IsDir() {
		t.Fatalf("not created: %v", err)
	}
	if created, err := MkdirHostPath("target path", dir+"/real/new", 0o750, false); err != nil || created {
		t.Errorf("existing directory: created %v, %v", created, err)
	}
	_, err = MkdirHostPath("target path", dir+"/missing/new", 0o750, false)
	wantStatus(t, err, codes.FailedPrecondition, "parent directory")
	if _, err := os.Lstat(dir + "/missing"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a missing parent was created: %v", err)
	}
	if created, err := MkdirHostPath("staging path", dir+"/a/b/c", 0o750, true); err != nil || !created {
		t.Errorf("with parents: created %v, %v", created, err)
	}
	if fi, err := os.Lstat(dir + "/a/b/c"); err != nil || !fi.IsDir() {
		t.Errorf("with parents: %v", err)
	}
	_, err = MkdirHostPath("target path", dir+"/link/new", 0o750, true)
	wantStatus(t, err, codes.InvalidArgument, "is a symlink")
	_, err = MkdirHostPath("target path", dir+"/dangling", 0o750, false)
	wantStatus(t, err, codes.InvalidArgument, "is a symlink")
	if _, err := os.Lstat(dir + "/real/new2"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("created through a symlink")
	}
	if _, err := os.Lstat(dir + "/nowhere"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("created at a dangling symlink's destination")
	}
	_, err = MkdirHostPath("target path", dir+"/file", 0o750, false)
	wantStatus(t, err, codes.InvalidArgument, "regular file")
	res, err := Reserve("the test's storage", dir+"/res")
	must(t, err)
	_, err = MkdirHostPath("target path", dir+"/res/x/y", 0o750, true, res)
	wantStatus(t, err, codes.InvalidArgument, "is inside")
	if _, err := os.Lstat(dir + "/res/x"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("created inside a reserved directory")
	}
}

func TestRemoveHostDir(t *testing.T) {
	dir := hostTree(t)
	must(t, RemoveHostDir("target path", dir+"/real/sub"))
	if _, err := os.Lstat(dir + "/real/sub"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("not removed: %v", err)
	}
	must(t, RemoveHostDir("target path", dir+"/real/sub"))       // gone already
	must(t, RemoveHostDir("target path", dir+"/missing/target")) // parent gone too
	wantStatus(t, RemoveHostDir("target path", dir+"/res"), codes.FailedPrecondition, "not empty")
	if _, err := os.Stat(dir + "/res/inner"); err != nil {
		t.Errorf("a non-empty directory lost its contents: %v", err)
	}
	must(t, os.Mkdir(dir+"/real/x", 0o755))
	wantStatus(t, RemoveHostDir("target path", dir+"/link/x"), codes.InvalidArgument, "is a symlink")
	if _, err := os.Stat(dir + "/real/x"); err != nil {
		t.Errorf("removed through a symlink: %v", err)
	}
	wantStatus(t, RemoveHostDir("target path", dir+"/link"), codes.InvalidArgument, "is a symlink")
	wantStatus(t, RemoveHostDir("target path", dir+"/file"), codes.InvalidArgument, "regular file")
	if b, err := os.ReadFile(dir + "/file"); err != nil || string(b) != "data" {
		t.Errorf("the file was touched: %q, %v", b, err)
	}
}

func TestStatfsHostPath(t *testing.T) {
	dir := hostTree(t)
	var want unix.Statfs_t
	must(t, unix.Statfs(dir, &want))
	st, err := StatfsHostPath("volume path", dir+"/real")
	if err != nil || st.Type != want.Type || st.Blocks != want.Blocks {
		t.Errorf("statfs: %+v, %v", st, err)
	}
	_, err = StatfsHostPath("volume path", dir+"/missing")
	wantStatus(t, err, codes.NotFound, "does not exist")
	_, err = StatfsHostPath("volume path", dir+"/link/sub")
	wantStatus(t, err, codes.InvalidArgument, "is a symlink")
}

func TestMountsAtOrUnder(t *testing.T) {
	const table = `22 1 0:21 / /proc rw - proc proc rw
30 22 8:1 / /var/lib/x rw - ext4 /dev/sda1 rw
31 30 8:1 /other /var/lib/x/vol rw - ext4 /dev/sda1 rw
32 30 0:40 / /var/lib/x/vol/deep rw - tmpfs tmpfs rw
33 1 0:41 / /var/lib/x/volume2 rw - tmpfs tmpfs rw
34 1 0:42 / /var/lib/x/with\040space rw - tmpfs tmpfs rw
`
	got, err := mountsAtOrUnder(strings.NewReader(table), "/var/lib/x/vol")
	if want := []string{"/var/lib/x/vol", "/var/lib/x/vol/deep"}; err != nil || !slices.Equal(got, want) {
		t.Errorf("got %q, %v; want %q", got, err, want)
	}
	got, err = mountsAtOrUnder(strings.NewReader(table), "/var/lib/x/with space")
	if want := []string{"/var/lib/x/with space"}; err != nil || !slices.Equal(got, want) {
		t.Errorf("escaped path: got %q, %v; want %q", got, err, want)
	}
	if got, err := mountsAtOrUnder(strings.NewReader(table), "/srv"); err != nil || len(got) != 0 {
		t.Errorf("nothing under /srv: %q, %v", got, err)
	}
	if _, err := mountsAtOrUnder(strings.NewReader("garbage\n"), "/"); err == nil {
		t.Error("a damaged table was accepted")
	}
	// The real table: / is always there.
	if got, err := MountsAtOrUnder("/"); err != nil || !slices.Contains(got, "/") {
		t.Errorf("MountsAtOrUnder(/): %q, %v", got, err)
	}
}

func TestUnescapeMountPath(t *testing.T) {
	for in, want := range map[string]string{
		`/a\040b`:    "/a b",
		`/tab\011x`:  "/tab\tx",
		`/nl\012`:    "/nl\n",
		`/bs\134x`:   `/bs\x`,
		`/plain`:     "/plain",
		`/short\04`:  `/short\04`,
		`/notoct\09`: `/notoct\09`,
	} {
		if got := unescapeMountPath(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}
