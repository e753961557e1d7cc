// Package images builds the test cluster's container images (pause, busybox
// and monocsi) as `docker save` tarballs without a Docker engine, so that
// `ctr -n k8s.io images import X.tar` can load them into the node's
// containerd. Each image has a single layer whose content depends only on
// its input, so rebuilding an unchanged image gives the same digest.
package images

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

// File is one entry of an image's root filesystem. Exactly one of Data,
// Link and Src is used; with none of them and os.ModeDir in Mode it is a
// directory, otherwise an (empty) regular file.
type File struct {
	Path string      // absolute path in the image
	Mode os.FileMode // permissions (with os.ModeDir for a directory); 0 means 0644, 0755 for a directory, or the host file's mode for Src
	Data []byte      // content of a regular file
	Link string      // if set, the entry is a symlink to Link
	Src  string      // if set, the content is copied from this host file
}

// PATH is the search path set in the images' environment.
const PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// epoch is every entry's mtime: a fixed time keeps the layer reproducible.
var epoch = time.Unix(0, 0).UTC()

// imageConfig is the subset of the OCI/Docker image config that we set.
type imageConfig struct {
	Entrypoint []string `json:"Entrypoint,omitempty"`
	Cmd        []string `json:"Cmd,omitempty"`
	Env        []string `json:"Env,omitempty"`
}

// Write writes a single-layer image tagged tag, with the given entrypoint,
// environment and root filesystem, to out as a `docker save` tarball. Parent
// directories of files are added as needed. The file appears atomically: a
// failed write leaves any previous out in place.
func Write(out, tag string, entrypoint, env []string, files []File) error {
	return write(out, tag, imageConfig{Entrypoint: entrypoint, Env: env}, files)
}

func write(out, tag string, cfg imageConfig, files []File) (err error) {
	entries, err := tree(files)
	if err != nil {
		return fmt.Errorf("image %s: %w", tag, err)
	}
	dir := filepath.Dir(out)
	tmp, err := os.CreateTemp(dir, ".image-*.tar")
	if err != nil {
		return err
	}
	// The layer is staged in a second temp file because the outer tar
	// needs its size, and config.json its digest, before its content.
	layer, err := os.CreateTemp(dir, ".layer-*.tar")
	if err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	defer func() {
		layer.Close()
		os.Remove(layer.Name())
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
			err = fmt.Errorf("image %s: %w", tag, err)
		}
	}()

	h := sha256.New()
	if err := writeLayer(io.MultiWriter(layer, h), entries); err != nil {
		return err
	}
	size, err := layer.Seek(0, io.SeekCurrent)
	if err != nil {
		return err
	}
	if _, err := layer.Seek(0, io.SeekStart); err != nil {
		return err
	}

	config, err := json.Marshal(struct {
		Architecture string      `json:"architecture"`
		OS           string      `json:"os"`
		Config       imageConfig `json:"config"`
		RootFS       struct {
			Type    string   `json:"type"`
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}{
		Architecture: runtime.GOARCH,
		OS:           "linux",
		Config:       cfg,
		RootFS: struct {
			Type    string   `json:"type"`
			DiffIDs []string `json:"diff_ids"`
		}{"layers", []string{"sha256:" + hex.EncodeToString(h.Sum(nil))}},
	})
	if err != nil {
		return err
	}
	manifest, err := json.Marshal([]struct {
		Config   string
		RepoTags []string
		Layers   []string
	}{{"config.json", []string{tag}, []string{"layer.tar"}}})
	if err != nil {
		return err
	}

	// Same order as docker save: layers, config, then manifest.
	tw := tar.NewWriter(tmp)
	if err := tw.WriteHeader(regular("layer.tar", 0o644, size)); err != nil {
		return err
	}
	if _, err := io.CopyN(tw, layer, size); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
	}{{"config.json", config}, {"manifest.json", manifest}} {
		if err := tw.WriteHeader(regular(f.name, 0o644, int64(len(f.data)))); err != nil {
			return err
		}
		if _, err := tw.Write(f.data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), out)
}

// tree validates files, adds their missing parent directories and returns
// them sorted by path (so parents come before their children), each Path
// made relative to the root as tar entries are.
func tree(files []File) ([]File, error) {
	byPath := map[string]File{}
	for _, f := range files {
		if !path.IsAbs(f.Path) {
			return nil, fmt.Errorf("%q: path is not absolute", f.Path)
		}
		p := strings.TrimPrefix(path.Clean(f.Path), "/")
		if p == "" {
			return nil, errors.New("the root directory cannot be an entry")
		}
		if _, dup := byPath[p]; dup {
			return nil, fmt.Errorf("%s: duplicate path", f.Path)
		}
		f.Path = p
		byPath[p] = f
	}
	for p := range byPath {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			parent, ok := byPath[d]
			if !ok {
				byPath[d] = File{Path: d, Mode: os.ModeDir | 0o755}
				continue
			}
			// A symlinked parent would make the runtime write through
			// the link: put such files at the link's target instead.
			if !parent.Mode.IsDir() || parent.Link != "" {
				return nil, fmt.Errorf("/%s: parent /%s is not a directory", p, d)
			}
		}
	}
	out := make([]File, 0, len(byPath))
	for _, f := range byPath {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// writeLayer writes entries as a tar owned by root with fixed mtimes.
func writeLayer(w io.Writer, entries []File) error {
	tw := tar.NewWriter(w)
	for _, f := range entries {
		switch {
		case f.Link != "":
			hdr := regular(f.Path, 0o777, 0)
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, f.Link
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
		case f.Mode.IsDir():
			hdr := regular(f.Path+"/", tarMode(f.Mode, 0o755), 0)
			hdr.Typeflag = tar.TypeDir
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
		case f.Src != "":
			if err := copyFile(tw, f); err != nil {
				return err
			}
		default:
			if err := tw.WriteHeader(regular(f.Path, tarMode(f.Mode, 0o644), int64(len(f.Data)))); err != nil {
				return err
			}
			if _, err := tw.Write(f.Data); err != nil {
				return err
			}
		}
	}
	return tw.Close()
}

func copyFile(tw *tar.Writer, f File) error {
	src, err := os.Open(f.Src)
	if err != nil {
		return err
	}
	defer src.Close()
	fi, err := src.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", f.Src)
	}
	mode := f.Mode
	if mode.Perm() == 0 {
		// Host permissions only: a setuid bit (mount has one) means
		// nothing in a container that runs as root.
		mode = fi.Mode().Perm()
	}
	if err := tw.WriteHeader(regular(f.Path, tarMode(mode, 0o644), fi.Size())); err != nil {
		return err
	}
	// CopyN so a file that grows meanwhile cannot overflow its entry.
	if _, err := io.CopyN(tw, src, fi.Size()); err != nil {
		return fmt.Errorf("%s: %w", f.Src, err)
	}
	return nil
}

func regular(name string, mode, size int64) *tar.Header {
	return &tar.Header{
		Typeflag: tar.TypeReg,
		Name:     name,
		Mode:     mode,
		Size:     size,
		ModTime:  epoch,
		Format:   tar.FormatPAX, // long library paths fit, and no atime/ctime is recorded
	}
}

// tarMode converts m's permission and special bits to tar's, using def
// when m has no permission bits.
func tarMode(m os.FileMode, def int64) int64 {
	mode := int64(m.Perm())
	if mode == 0 {
		mode = def
	}
	for bit, t := range map[os.FileMode]int64{os.ModeSetuid: 0o4000, os.ModeSetgid: 0o2000, os.ModeSticky: 0o1000} {
		if m&bit != 0 {
			mode |= t
		}
	}
	return mode
}

// Pause writes the pod sandbox image localhost/pause:local running the
// static binary pauseBin (built from ./pause) as /pause.
func Pause(out, pauseBin string) error {
	return Write(out, "localhost/pause:local", []string{"/pause"}, nil, []File{
		{Path: "/pause", Mode: 0o755, Src: pauseBin},
	})
}

// busyboxBin is where Debian's busybox-static package installs busybox.
const busyboxBin = "/usr/bin/busybox"

// Busybox writes localhost/busybox:local from the host's static busybox:
// /bin/busybox with a symlink per applet (so /bin/sh works), and /tmp. Like
// the upstream busybox image it runs sh unless the pod sets a command.
func Busybox(out string) error {
	if _, err := os.Stat(busyboxBin); err != nil {
		return fmt.Errorf("busybox image: %w (install the Debian package busybox-static)", err)
	}
	// Debian's plain busybox package installs a dynamic binary at the same
	// path, which would not run without libraries in the image.
	if static, err := isStatic(busyboxBin); err != nil {
		return fmt.Errorf("busybox image: %w", err)
	} else if !static {
		return fmt.Errorf("busybox image: %s is dynamically linked (install the Debian package busybox-static)", busyboxBin)
	}
	list, err := exec.Command(busyboxBin, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox image: %s --list: %w", busyboxBin, err)
	}
	files := []File{
		{Path: "/bin/busybox", Mode: 0o755, Src: busyboxBin},
		{Path: "/tmp", Mode: os.ModeDir | os.ModeSticky | 0o777},
	}
	for _, name := range strings.Fields(string(list)) {
		if name != "busybox" && !strings.Contains(name, "/") {
			files = append(files, File{Path: "/bin/" + name, Link: "busybox"})
		}
	}
	return write(out, "localhost/busybox:local", imageConfig{Cmd: []string{"sh"}, Env: []string{PATH}}, files)
}

// Tools the driver runs through k8s.io/mount-utils. Required ones must be
// on the host; the others are copied when present.
var (
	requiredTools = []string{"mount", "umount"}
	optionalTools = []string{"findmnt", "blkid", "mkfs.ext4", "fsck.ext4", "e2fsck", "losetup"}
	// toolDirs are searched in order, rather than $PATH, which often lacks
	// the sbin directories for tests run as a user.
	toolDirs = []string{"/usr/sbin", "/usr/bin", "/sbin", "/bin"}
)

// Monocsi writes the driver image tagged tag: monocsiBin as /monocsi (the
// entrypoint) plus the host's mount tools and every shared library they
// load, at the host's paths.
func Monocsi(out, tag, monocsiBin string) error {
	r := rootfs{}
	// Mirror the host's top-level links (on a merged-/usr system /bin is
	// usr/bin, and so on) so both /bin/mount and /usr/bin/mount work.
	for _, d := range []string{"/bin", "/sbin", "/lib", "/lib64"} {
		if _, err := os.Lstat(d); err == nil {
			if err := r.addHost(d); err != nil {
				return fmt.Errorf("image %s: %w", tag, err)
			}
		}
	}
	bins := []string{}
	for _, name := range append(requiredTools, optionalTools...) {
		p, ok := findTool(name)
		if !ok {
			if isRequired(name) {
				return fmt.Errorf("image %s: %s not found in %s (install the Debian package mount)", tag, name, strings.Join(toolDirs, ", "))
			}
			continue
		}
		bins = append(bins, p)
	}
	for _, p := range bins {
		if err := r.addHost(p); err != nil {
			return fmt.Errorf("image %s: %w", tag, err)
		}
	}
	// A CGO_ENABLED=0 monocsi needs no libraries, but one built with cgo
	// still works.
	for _, p := range append(bins, monocsiBin) {
		libs, err := sharedLibs(p)
		if err != nil {
			return fmt.Errorf("image %s: %w", tag, err)
		}
		for _, lib := range libs {
			if err := r.addHost(lib); err != nil {
				return fmt.Errorf("image %s: %w", tag, err)
			}
		}
	}
	// mke2fs reads its defaults (features, inode size) from here.
	if _, err := os.Stat("/etc/mke2fs.conf"); err == nil {
		if err := r.addHost("/etc/mke2fs.conf"); err != nil {
			return fmt.Errorf("image %s: %w", tag, err)
		}
	}
	files := []File{
		{Path: "/monocsi", Mode: 0o755, Src: monocsiBin},
		// mount and findmnt read the mount table from /etc/mtab.
		{Path: "/etc/mtab", Link: "/proc/self/mounts"},
		{Path: "/tmp", Mode: os.ModeDir | os.ModeSticky | 0o777},
	}
	for _, d := range []string{"/proc", "/sys", "/dev", "/run"} {
		files = append(files, File{Path: d, Mode: os.ModeDir | 0o755})
	}
	for _, f := range r {
		files = append(files, f)
	}
	return Write(out, tag, []string{"/monocsi"}, []string{PATH}, files)
}

func isRequired(name string) bool {
	for _, r := range requiredTools {
		if r == name {
			return true
		}
	}
	return false
}

func findTool(name string) (string, bool) {
	for _, d := range toolDirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return p, true
		}
	}
	return "", false
}

// rootfs collects host paths to copy, keyed by image path.
type rootfs map[string]File

// addHost copies host path p into the image as the host has it: every
// symlink met on the way (/lib64 -> usr/lib64, libmount.so.1 ->
// libmount.so.1.1.0) becomes the same symlink in the image, and the file it
// ends at is copied, so every name the loader or a user may use resolves.
func (r rootfs) addHost(p string) error {
	for hops := 0; hops < 40; hops++ {
		link, rest, err := firstSymlink(p)
		if err != nil {
			return err
		}
		if link == "" {
			fi, err := os.Stat(p)
			if err != nil {
				return err
			}
			switch {
			case fi.IsDir():
				r[p] = File{Path: p, Mode: os.ModeDir | fi.Mode().Perm()}
			case fi.Mode().IsRegular():
				r[p] = File{Path: p, Src: p}
			default:
				return fmt.Errorf("%s: unsupported file type %s", p, fi.Mode().Type())
			}
			return nil
		}
		target, err := os.Readlink(link)
		if err != nil {
			return err
		}
		r[link] = File{Path: link, Link: target}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(link), target)
		}
		p = filepath.Join(target, rest)
	}
	return fmt.Errorf("%s: too many levels of symbolic links", p)
}

// firstSymlink returns the first prefix of absolute path p that is a
// symlink, and the rest of p after it; link is "" if there is none.
func firstSymlink(p string) (link, rest string, err error) {
	p = filepath.Clean(p)
	for i := 1; i <= len(p); i++ {
		if i < len(p) && p[i] != '/' {
			continue
		}
		fi, err := os.Lstat(p[:i])
		if err != nil {
			return "", "", err
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			return p[:i], p[i:], nil
		}
	}
	return "", p, nil
}

// isStatic reports whether the ELF binary at p runs without a dynamic
// loader.
func isStatic(p string) (bool, error) {
	f, err := elf.Open(p)
	if err != nil {
		return false, err
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return false, nil
		}
	}
	return true, nil
}

// sharedLibs returns the paths of the dynamic loader and every shared
// library, direct or indirect, that the binary at p loads, as ldd lists
// them.
func sharedLibs(p string) ([]string, error) {
	if static, err := isStatic(p); err != nil || static {
		return nil, err
	}
	var stderr bytes.Buffer
	cmd := exec.Command("ldd", p)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w: %s", p, err, stderr.Bytes())
	}
	return parseLdd(p, out)
}

// parseLdd parses lines like
//
//	libmount.so.1 => /lib/x86_64-linux-gnu/libmount.so.1 (0x...)
//	/lib64/ld-linux-x86-64.so.2 (0x...)
//	linux-vdso.so.1 (0x...)
//
// skipping the vDSO, which the kernel provides.
func parseLdd(p string, out []byte) ([]string, error) {
	var libs []string
	for _, line := range strings.Split(string(out), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if name, target, ok := strings.Cut(line, "=>"); ok {
			line = strings.TrimSpace(target)
			if strings.HasPrefix(line, "not found") {
				return nil, fmt.Errorf("ldd %s: %s not found", p, strings.TrimSpace(name))
			}
		}
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], "/") {
			libs = append(libs, f[0])
		}
	}
	return libs, nil
}
