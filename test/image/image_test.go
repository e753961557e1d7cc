// Package image checks the image archive `make image` wrote: what is in it
// for each architecture, that its amd64 tools run, that a second build
// gives the same digest, and that it pushes to a registry.
// `make image-test` passes the archive and its inputs in the environment.
package image

import (
	"debug/elf"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/monocsi/monocsi/internal/imagebuild"
)

func env(t *testing.T, k string) string {
	t.Helper()
	v := os.Getenv(k)
	if v == "" {
		t.Fatalf("$%s is not set: run these tests with `make image-test`", k)
	}
	return v
}

// repoRoot is the checkout: go test runs in test/image.
func repoRoot() string { return filepath.Join("..", "..") }

var machines = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64, "arm": elf.EM_ARM}

// must is what every architecture's image must hold.
var must = []string{"/monocsi", "/sbin/mount.nfs", "/sbin/mount.nfs4", "/sbin/umount.nfs", "/bin/mount", "/bin/umount",
	"/bin/findmnt", "/sbin/losetup", "/sbin/blkid", "/usr/bin/nsenter", "/sbin/mkfs.ext4", "/sbin/mkfs.xfs", "/etc/netconfig", "/etc/protocols", "/etc/services", "/etc/rpc"}

func TestContents(t *testing.T) {
	archive := env(t, "MONOCSI_IMAGE_ARCHIVE")
	for _, arch := range strings.Fields(env(t, "MONOCSI_IMAGE_ARCHES")) {
		t.Run(arch, func(t *testing.T) {
			dir := t.TempDir()
			if err := imagebuild.Unpack(archive, "linux/"+arch, dir); err != nil {
				t.Fatal(err)
			}
			for _, p := range must {
				if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
					t.Errorf("%s image: %v", arch, err)
				}
			}
			// Every ELF file is for this architecture and finds its
			// interpreter and libraries inside the image.
			n := 0
			err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
				if err != nil || !fi.Mode().IsRegular() {
					return err
				}
				f, err := elf.Open(p)
				if err != nil {
					return nil
				}
				defer f.Close()
				n++
				rel := strings.TrimPrefix(p, dir)
				if f.Machine != machines[arch] {
					t.Errorf("%s: machine %v in the %s image", rel, f.Machine, arch)
				}
				libs, _ := f.ImportedLibraries()
				for _, lib := range libs {
					if !inImage(dir, lib) {
						t.Errorf("%s: needs %s, missing from the %s image", rel, lib, arch)
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %d ELF files, all with their libraries", arch, n)
		})
	}
}

func inImage(dir, lib string) bool {
	for _, d := range []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
		"/lib/arm-linux-gnueabihf", "/usr/lib/arm-linux-gnueabihf", "/lib", "/usr/lib"} {
		if _, err := os.Stat(filepath.Join(dir, path.Join(d, lib))); err == nil {
			return true
		}
	}
	return false
}

// TestToolsRun runs each tool of the amd64 image inside its root
// filesystem: the libraries the loader picks are the image's own.
func TestToolsRun(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Fatalf("this test runs the amd64 image's tools; the machine is %s", runtime.GOARCH)
	}
	dir := t.TempDir()
	if err := imagebuild.Unpack(env(t, "MONOCSI_IMAGE_ARCHIVE"), "linux/amd64", dir); err != nil {
		t.Fatal(err)
	}
	for cmd, want := range map[string]string{
		"/monocsi version":           "",
		"/sbin/mount.nfs -V":         "nfs-utils",
		"/bin/mount --version":       "util-linux",
		"/usr/bin/nsenter --version": "util-linux",
		"/bin/findmnt --version":     "util-linux",
		"/sbin/losetup --version":    "util-linux",
		"/sbin/mkfs.ext4 -V":         "mke2fs",
		"/sbin/mkfs.xfs -V":          "mkfs.xfs",
		"/usr/sbin/xfs_growfs -V":    "xfs_growfs",
	} {
		out, err := exec.Command("chroot", append([]string{dir}, strings.Fields(cmd)...)...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), want) {
			t.Errorf("chroot image %s: %v: %s", cmd, err, out)
		}
	}
}

// TestReproducible builds the archive again from the same inputs: the
// digest must be the same.
func TestReproducible(t *testing.T) {
	archive := env(t, "MONOCSI_IMAGE_ARCHIVE")
	want, err := os.ReadFile(archive + ".digest")
	if err != nil {
		t.Fatal(err)
	}
	again := filepath.Join(t.TempDir(), "again.tar")
	cmd := exec.Command("go", "run", "./hack/mkimage", "-out", again, "-name", env(t, "MONOCSI_IMAGE"),
		"-version", env(t, "MONOCSI_IMAGE_VERSION"), "-bins", env(t, "MONOCSI_IMAGE_BINS"))
	cmd.Dir = repoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("second build: %v\n%s", err, out)
	}
	got, err := os.ReadFile(again + ".digest")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatalf("second build of the same inputs: digest %s, first %s", got, want)
	}
	a, _ := os.ReadFile(archive)
	b, _ := os.ReadFile(again)
	if string(a) != string(b) {
		t.Errorf("the two archives differ byte for byte, though their digests agree")
	}
	t.Logf("both builds: %s", strings.TrimSpace(string(got)))
}

// TestPush pushes the archive with `make image-push`'s command to a real
// registry implementation (go-containerregistry's, on loopback) and reads
// the index back by its digest.
func TestPush(t *testing.T) {
	archive := env(t, "MONOCSI_IMAGE_ARCHIVE")
	want, err := os.ReadFile(archive + ".digest")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(registry.New())
	defer func() {
		// The pushing process is gone, but the client's kept-alive
		// connections would hold Close forever.
		srv.CloseClientConnections()
		srv.Close()
	}()
	u, _ := url.Parse(srv.URL)
	ref := u.Host + "/monocsi:test"
	cmd := exec.Command("go", "run", "./hack/mkimage", "-out", archive, "-push", ref)
	cmd.Dir = repoRoot()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("push: %v\n%s", err, out)
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := remote.Index(r)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := idx.Digest()
	if d.String() != strings.TrimSpace(string(want)) {
		t.Fatalf("registry serves %s, archive is %s", d, want)
	}
	im, _ := idx.IndexManifest()
	for _, m := range im.Manifests {
		img, err := idx.Image(m.Digest)
		if err != nil {
			t.Fatal(err)
		}
		layers, err := img.Layers()
		if err != nil || len(layers) != 1 {
			t.Fatalf("%v: %d layers, %v", m.Platform, len(layers), err)
		}
		if _, err := layers[0].Compressed(); err != nil {
			t.Fatalf("%v: layer: %v", m.Platform, err)
		}
	}
	t.Logf("%s", strings.TrimSpace(string(out)))
}
