package imagebuild

import (
	"archive/tar"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/monocsi/monocsi/internal/atomicfile"
	"github.com/monocsi/monocsi/internal/treecopy"
)

// Config is what an image runs.
type Config struct {
	Entrypoint []string
	Cmd        []string
	Env        []string
	Labels     map[string]string
}

// Image returns a single-layer OCI image of files for platform p. The layer
// is generated again each time it is read, so nothing is held in memory;
// the files must stay in place while the image is used.
func Image(p v1.Platform, cfg Config, files []File) (v1.Image, error) {
	entries, err := tree(files)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(writeLayer(pw, entries)) }()
		return pr, nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img, err := mutate.Append(mutate.MediaType(mutate.ConfigMediaType(empty.Image, types.OCIConfigJSON), types.OCIManifestSchema1),
		mutate.Addendum{Layer: layer, MediaType: types.OCILayer})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS, cf.Variant = p.Architecture, p.OS, p.Variant
	cf.Created = v1.Time{Time: Epoch}
	cf.Config = v1.Config{Entrypoint: cfg.Entrypoint, Cmd: cfg.Cmd, Env: cfg.Env, Labels: cfg.Labels}
	cf.History = nil
	return mutate.ConfigFile(img, cf)
}

// Platform is one architecture an image is built for, in the names of the
// OCI spec, Go and Debian.
type Platform struct {
	OCI    v1.Platform
	GOARCH string
	Debian string // dpkg architecture
	Triple string // multiarch library directory name
}

// Platforms are the architectures monocsi's image is built for.
var Platforms = []Platform{
	{OCI: v1.Platform{OS: "linux", Architecture: "amd64"}, GOARCH: "amd64", Debian: "amd64", Triple: "x86_64-linux-gnu"},
	{OCI: v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, GOARCH: "arm64", Debian: "arm64", Triple: "aarch64-linux-gnu"},
	{OCI: v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}, GOARCH: "arm", Debian: "armhf", Triple: "arm-linux-gnueabihf"},
}

// PlatformByDebian returns the platform with dpkg architecture arch.
func PlatformByDebian(arch string) (Platform, bool) {
	for _, p := range Platforms {
		if p.Debian == arch {
			return p, true
		}
	}
	return Platform{}, false
}

// PlatformByGOARCH returns the platform Go calls arch.
func PlatformByGOARCH(arch string) (Platform, bool) {
	for _, p := range Platforms {
		if p.GOARCH == arch {
			return p, true
		}
	}
	return Platform{}, false
}

// Index returns the multi-arch index of imgs, each with its platform.
func Index(imgs map[string]v1.Image) (v1.ImageIndex, error) {
	var adds []mutate.IndexAddendum
	var archs []string
	for a := range imgs {
		archs = append(archs, a)
	}
	sort.Strings(archs) // a map's order must not change the digest
	for _, a := range archs {
		img := imgs[a]
		cf, err := img.ConfigFile()
		if err != nil {
			return nil, err
		}
		p := cf.Platform()
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: p}})
	}
	return mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...), nil
}

// WriteOCIArchive writes idx as an OCI image layout in a tar archive at
// out, named ref and ref's repository @ idx's digest (for `ctr images
// import` and `k3s ctr images import`, which register each
// io.containerd.image.name of index.json: a pod that names the image by
// digest, as install.yaml does, then finds it without a registry). The
// archive appears atomically, and its bytes depend only on idx and ref.
func WriteOCIArchive(out, ref string, idx v1.ImageIndex) error {
	r, err := name.ParseReference(ref)
	if err != nil {
		return fmt.Errorf("image name %q: %w", ref, err)
	}
	tag := "latest"
	if t, ok := r.(name.Tag); ok {
		tag = t.TagStr()
	}
	d, err := idx.Digest()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp(filepath.Dir(out), ".oci-layout-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	for _, n := range []string{r.Context().Tag(tag).Name(), r.Context().Digest(d.String()).Name()} {
		if err := p.AppendIndex(idx, layout.WithAnnotations(map[string]string{
			"io.containerd.image.name":          n,
			"org.opencontainers.image.ref.name": tag,
		})); err != nil {
			return err
		}
	}
	return atomicTar(out, dir)
}

// atomicTar writes the files under dir, sorted, owned by root and dated
// Epoch, as a tar at out.
func atomicTar(out, dir string) error {
	var names []string
	if err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if p != dir {
			names = append(names, p)
		}
		return nil
	}); err != nil {
		return err
	}
	sort.Strings(names)
	_, err := atomicfile.Write(out, func(w io.Writer) error {
		tw := tar.NewWriter(w)
		for _, p := range names {
			fi, err := os.Lstat(p)
			if err != nil {
				return err
			}
			rel := strings.TrimPrefix(p, dir+"/")
			if fi.IsDir() {
				hdr := header(rel+"/", 0o755, 0)
				hdr.Typeflag = tar.TypeDir
				err = tw.WriteHeader(hdr)
			} else {
				err = copyFile(tw, File{Path: rel, Src: p, Mode: 0o644})
			}
			if err != nil {
				return err
			}
		}
		return tw.Close()
	})
	if err != nil {
		return err
	}
	return os.Chmod(out, 0o644)
}

// WithOCIArchive calls use with the image index of an archive written by
// WriteOCIArchive, unpacked into a scratch directory that is removed
// afterwards.
func WithOCIArchive(archive string, use func(v1.ImageIndex) error) error {
	dir, err := os.MkdirTemp("", "oci-archive-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	f, err := os.Open(archive)
	if err != nil {
		return err
	}
	err = treecopy.Extract(f, dir)
	f.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", archive, err)
	}
	top, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return err
	}
	im, err := top.IndexManifest()
	if err != nil {
		return err
	}
	if len(im.Manifests) == 0 {
		return fmt.Errorf("%s: no image in index.json", archive)
	}
	for _, m := range im.Manifests[1:] {
		if m.Digest != im.Manifests[0].Digest {
			return fmt.Errorf("%s: index.json names more than one image", archive)
		}
	}
	idx, err := top.ImageIndex(im.Manifests[0].Digest)
	if err != nil {
		return err
	}
	return use(idx)
}

// WriteDockerArchive writes img as a `docker save` tarball tagged tag (what
// the test cluster imports for its helper images).
func WriteDockerArchive(out, tag string, img v1.Image) error {
	t, err := name.NewTag(tag)
	if err != nil {
		return err
	}
	if _, err := atomicfile.Write(out, func(w io.Writer) error { return tarball.Write(t, img, w) }); err != nil {
		return err
	}
	return os.Chmod(out, 0o644)
}

// Unpack writes the root filesystem of the image for platform (such as
// linux/amd64) in the archive at archive into dir, which must be empty or
// missing. Entries are created through an os.Root, so no name in the
// image can reach outside dir.
func Unpack(archive, platform, dir string) error {
	want, err := v1.ParsePlatform(platform)
	if err != nil {
		return err
	}
	return WithOCIArchive(archive, func(idx v1.ImageIndex) error {
		im, err := idx.IndexManifest()
		if err != nil {
			return err
		}
		for _, m := range im.Manifests {
			if m.Platform == nil || m.Platform.OS != want.OS || m.Platform.Architecture != want.Architecture {
				continue
			}
			img, err := idx.Image(m.Digest)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			rc := mutate.Extract(img)
			defer rc.Close()
			return treecopy.Extract(rc, dir)
		}
		return fmt.Errorf("%s: no image for %s", archive, platform)
	})
}

// ArchiveSizeTable is SizeTable of the image in an OCI archive.
func ArchiveSizeTable(archive string) (string, error) {
	var t string
	err := WithOCIArchive(archive, func(idx v1.ImageIndex) (err error) {
		t, err = SizeTable(idx)
		return err
	})
	return t, err
}

// SizeTable returns, for each platform of idx, the size of the monocsi
// binary and of the image (its compressed layer, as pulled, and
// uncompressed, as unpacked on a node), as a Markdown table.
func SizeTable(idx v1.ImageIndex) (string, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return "", err
	}
	mb := func(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }
	var b strings.Builder
	b.WriteString("| platform | monocsi binary | image, compressed | image, uncompressed |\n| --- | --- | --- | --- |\n")
	for _, m := range im.Manifests {
		img, err := idx.Image(m.Digest)
		if err != nil {
			return "", err
		}
		layers, err := img.Layers()
		if err != nil {
			return "", err
		}
		var compressed, files, bin int64
		for _, l := range layers {
			n, err := l.Size()
			if err != nil {
				return "", err
			}
			compressed += n
			rc, err := l.Uncompressed()
			if err != nil {
				return "", err
			}
			tr := tar.NewReader(rc)
			for {
				hdr, err := tr.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					rc.Close()
					return "", err
				}
				files += hdr.Size
				if hdr.Name == "monocsi" {
					bin = hdr.Size
				}
			}
			rc.Close()
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", m.Platform, mb(bin), mb(compressed), mb(files))
	}
	return b.String(), nil
}
