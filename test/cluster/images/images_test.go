package images

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/monocsi/monocsi/internal/imagebuild"
)

// pauseBin is the pause program, built once by TestMain. Being a small
// static Go binary, it also stands in for monocsi.
var pauseBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "images-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	pauseBin = filepath.Join(dir, "pause")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", pauseBin, "./pause")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build ./pause: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// entry is a layer entry with the digest of its content.
type entry struct {
	hdr *tar.Header
	sum string
}

// layer maps each entry's path, relative to the root, to the entry.
type layer map[string]entry

// image is a parsed docker-save tarball.
type image struct {
	tags   []string
	config struct {
		Architecture string `json:"architecture"`
		OS           string `json:"os"`
		Config       struct {
			Entrypoint []string
			Cmd        []string
			Env        []string
		} `json:"config"`
		RootFS struct {
			Type    string   `json:"type"`
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	layer layer
}

// readImage parses the tarball at p and checks that its manifest, config
// and layer agree.
func readImage(t *testing.T, p string) *image {
	t.Helper()
	mf, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(p) })
	if err != nil {
		t.Fatal(err)
	}
	if len(mf) != 1 || len(mf[0].Layers) != 1 {
		t.Fatalf("manifest.json: want one image with one layer, got %+v", mf)
	}
	img := &image{tags: mf[0].RepoTags, layer: layer{}}
	vi, err := tarball.ImageFromPath(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := vi.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &img.config); err != nil {
		t.Fatalf("config: %v", err)
	}
	c := img.config
	if c.OS != "linux" || c.Architecture == "" || c.RootFS.Type != "layers" {
		t.Errorf("config: os %q, architecture %q, rootfs type %q", c.OS, c.Architecture, c.RootFS.Type)
	}
	layers, err := vi.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d, %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if want := []string{"sha256:" + hex.EncodeToString(sum[:])}; !slices.Equal(c.RootFS.DiffIDs, want) {
		t.Errorf("diff_ids %q, layer digest %q", c.RootFS.DiffIDs, want)
	}

	lr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := lr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimSuffix(hdr.Name, "/")
		if strings.HasPrefix(name, "/") || path.Clean(name) != name {
			t.Errorf("layer entry %q is not a clean relative path", hdr.Name)
		}
		if _, dup := img.layer[name]; dup {
			t.Errorf("layer entry %q appears twice", name)
		}
		if dir := path.Dir(name); dir != "." {
			if parent, ok := img.layer[dir]; !ok || parent.hdr.Typeflag != tar.TypeDir {
				t.Errorf("layer entry %q comes before (or without) its parent directory", name)
			}
		}
		if hdr.Uid != 0 || hdr.Gid != 0 || !hdr.ModTime.Equal(imagebuild.Epoch) {
			t.Errorf("%s: uid %d gid %d mtime %v", name, hdr.Uid, hdr.Gid, hdr.ModTime)
		}
		h := sha256.New()
		if _, err := io.Copy(h, lr); err != nil {
			t.Fatal(err)
		}
		img.layer[name] = entry{hdr, hex.EncodeToString(h.Sum(nil))}
	}
	return img
}

// resolve follows symlinks in the layer, as a process in the container
// would, and returns the entry that absolute path p ends at.
func (l layer) resolve(p string) (entry, error) {
	orig := p
outer:
	for hops := 0; hops < 40; hops++ {
		parts := strings.Split(strings.TrimPrefix(path.Clean(p), "/"), "/")
		cur := ""
		for i, part := range parts {
			cur = path.Join(cur, part)
			e, ok := l[cur]
			switch {
			case !ok:
				return entry{}, fmt.Errorf("%s: /%s not in the image", orig, cur)
			case e.hdr.Typeflag == tar.TypeSymlink:
				target := e.hdr.Linkname
				if !path.IsAbs(target) {
					target = path.Join("/", path.Dir(cur), target)
				}
				p = path.Join(append([]string{target}, parts[i+1:]...)...)
				continue outer
			case i == len(parts)-1:
				return e, nil
			case e.hdr.Typeflag != tar.TypeDir:
				return entry{}, fmt.Errorf("%s: /%s is not a directory", orig, cur)
			}
		}
	}
	return entry{}, fmt.Errorf("%s: too many symlinks", orig)
}

// mustBeFile checks that p resolves to a regular file in the layer with the
// content of host file src (if set).
func (l layer) mustBeFile(t *testing.T, p, src string) {
	t.Helper()
	e, err := l.resolve(p)
	if err != nil {
		t.Error(err)
		return
	}
	if e.hdr.Typeflag != tar.TypeReg {
		t.Errorf("%s: type %c, want a regular file", p, e.hdr.Typeflag)
		return
	}
	if src != "" {
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(data); e.sum != hex.EncodeToString(sum[:]) {
			t.Errorf("%s: content differs from host %s", p, src)
		}
	}
}

func (l layer) mustBeLink(t *testing.T, p, target string) {
	t.Helper()
	e, ok := l[strings.TrimPrefix(p, "/")]
	if !ok || e.hdr.Typeflag != tar.TypeSymlink || e.hdr.Linkname != target {
		t.Errorf("%s: want a symlink to %s, got %+v", p, target, e.hdr)
	}
}

func (l layer) mustBeDir(t *testing.T, p string, mode int64) {
	t.Helper()
	e, ok := l[strings.TrimPrefix(p, "/")]
	if !ok || e.hdr.Typeflag != tar.TypeDir || e.hdr.Mode != mode {
		t.Errorf("%s: want a directory with mode %o, got %+v", p, mode, e.hdr)
	}
}

// writeTwice calls build for two files and checks they are byte-identical.
func writeTwice(t *testing.T, build func(out string) error) string {
	t.Helper()
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.tar"), filepath.Join(dir, "b.tar")
	if err := build(a); err != nil {
		t.Fatal(err)
	}
	if err := build(b); err != nil {
		t.Fatal(err)
	}
	da, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	db, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(da, db) {
		t.Error("two writes of the same image differ")
	}
	return a
}

func TestWrite(t *testing.T) {
	files := []File{
		{Path: "/usr/share/doc/hello", Data: []byte("hi\n")},
		{Path: "/usr/bin/tool", Mode: 0o755, Data: []byte("#!/bin/sh\n")},
		{Path: "/usr/bin/alias", Link: "tool"},
		{Path: "/tmp", Mode: os.ModeDir | os.ModeSticky | 0o777},
	}
	out := writeTwice(t, func(out string) error {
		return Write(out, "localhost/test:1", []string{"/usr/bin/tool"}, []string{"A=b"}, files)
	})
	img := readImage(t, out)
	if !slices.Equal(img.tags, []string{"localhost/test:1"}) {
		t.Errorf("tags %q", img.tags)
	}
	if c := img.config.Config; !slices.Equal(c.Entrypoint, []string{"/usr/bin/tool"}) || !slices.Equal(c.Env, []string{"A=b"}) || c.Cmd != nil {
		t.Errorf("config %+v", c)
	}
	img.layer.mustBeDir(t, "/usr", 0o755)
	img.layer.mustBeDir(t, "/usr/share/doc", 0o755)
	img.layer.mustBeDir(t, "/tmp", 0o1777)
	img.layer.mustBeLink(t, "/usr/bin/alias", "tool")
	img.layer.mustBeFile(t, "/usr/bin/alias", "")
	if h := img.layer["usr/bin/tool"].hdr; h == nil || h.Mode != 0o755 {
		t.Errorf("/usr/bin/tool: %+v", h)
	}
	if h := img.layer["usr/share/doc/hello"].hdr; h == nil || h.Mode != 0o644 || h.Size != 3 {
		t.Errorf("/usr/share/doc/hello: %+v", h)
	}
	if f, err := os.Stat(out); err != nil || f.Mode().Perm() != 0o644 {
		t.Errorf("stat %s: %v, %v", out, f, err)
	}
}

func TestWriteErrors(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "x.tar")
	if err := os.WriteFile(out, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, files := range map[string][]File{
		"relative":  {{Path: "etc/x"}},
		"root":      {{Path: "/", Mode: os.ModeDir}},
		"duplicate": {{Path: "/a"}, {Path: "/a/"}},
		"file dir":  {{Path: "/a"}, {Path: "/a/b"}},
		"link dir":  {{Path: "/bin", Link: "usr/bin"}, {Path: "/bin/sh"}},
		"no src":    {{Path: "/a", Src: filepath.Join(dir, "missing")}},
	} {
		if err := Write(out, "localhost/x:1", nil, nil, files); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	// Failed writes leave the old file and no temporary files behind.
	if data, err := os.ReadFile(out); err != nil || string(data) != "old" {
		t.Errorf("%s: %q, %v", out, data, err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("leftover files: %v", ents)
	}
}

func TestPause(t *testing.T) {
	out := writeTwice(t, func(out string) error { return Pause(out, pauseBin) })
	img := readImage(t, out)
	if !slices.Equal(img.tags, []string{"localhost/pause:local"}) || !slices.Equal(img.config.Config.Entrypoint, []string{"/pause"}) {
		t.Errorf("tags %q, config %+v", img.tags, img.config.Config)
	}
	img.layer.mustBeFile(t, "/pause", pauseBin)
	if h := img.layer["pause"].hdr; h == nil || h.Mode != 0o755 {
		t.Errorf("/pause: %+v", h)
	}
	if static, err := imagebuild.IsStatic(pauseBin); err != nil || !static {
		t.Errorf("pause is not static: %v", err)
	}
}

// TestPauseProgram checks that pause idles, reaps nothing it need not, and
// exits 0 on SIGTERM.
func TestPauseProgram(t *testing.T) {
	cmd := exec.Command(pauseBin)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	time.Sleep(200 * time.Millisecond)
	// A SIGCHLD with no children must not make it spin (wait4 gives ECHILD).
	if err := cmd.Process.Signal(syscall.SIGCHLD); err != nil {
		t.Fatal(err)
	}
	time.Sleep(800 * time.Millisecond)
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	// utime and stime, in clock ticks, follow the ")" ending the command name.
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	utime, _ := strconv.Atoi(fields[11])
	stime, _ := strconv.Atoi(fields[12])
	if utime+stime > 20 {
		t.Errorf("pause used %d clock ticks of CPU in 1s", utime+stime)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("pause after SIGTERM: %v", err)
	}
}

func TestBusybox(t *testing.T) {
	if _, err := os.Stat(busyboxBin); err != nil {
		err := Busybox(filepath.Join(t.TempDir(), "busybox.tar"))
		if err == nil || !strings.Contains(err.Error(), "busybox-static") {
			t.Errorf("without %s: error %v, want one naming busybox-static", busyboxBin, err)
		}
		t.Skipf("%s missing (apt-get install busybox-static)", busyboxBin)
	}
	out := writeTwice(t, Busybox)
	img := readImage(t, out)
	if c := img.config.Config; !slices.Equal(img.tags, []string{"localhost/busybox:local"}) || !slices.Equal(c.Env, []string{PATH}) || !slices.Equal(c.Cmd, []string{"sh"}) {
		t.Errorf("tags %q, config %+v", img.tags, c)
	}
	img.layer.mustBeFile(t, "/bin/busybox", busyboxBin)
	for _, applet := range []string{"sh", "ls", "sleep", "cat", "mount"} {
		img.layer.mustBeLink(t, "/bin/"+applet, "busybox")
	}
	img.layer.mustBeDir(t, "/tmp", 0o1777)
}
