// Package imagebuild builds container images without a container engine:
// a root filesystem described as a list of files becomes one reproducible
// layer, and go-containerregistry assembles the images, the multi-arch
// index and the archives (OCI for `make image`, docker-save for the test
// cluster's helper images). Nothing in the output depends on the time or
// the machine, so the same inputs give the same digests.
package imagebuild

import (
	"archive/tar"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// File is one entry of an image's root filesystem. At most one of Data,
// Link, Hardlink and Src is used; with none of them and os.ModeDir in Mode
// it is a directory, otherwise an (empty) regular file.
type File struct {
	Path     string      // absolute path in the image
	Mode     os.FileMode // permissions (with os.ModeDir for a directory); 0 means 0644, 0755 for a directory, or the source file's mode for Src
	Data     []byte      // content of a regular file
	Link     string      // if set, the entry is a symlink to Link
	Hardlink string      // if set, the entry is a hard link to this absolute image path
	Src      string      // if set, the content is copied from this file
}

// PATH is the search path set in the images' environment.
const PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Epoch is every entry's mtime and the images' creation time: a fixed time
// keeps builds reproducible.
var Epoch = time.Unix(0, 0).UTC()

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
	for p, f := range byPath {
		if f.Hardlink != "" {
			target, ok := byPath[strings.TrimPrefix(path.Clean(f.Hardlink), "/")]
			if !ok || target.Src == "" && target.Data == nil || target.Link != "" || target.Hardlink != "" {
				return nil, fmt.Errorf("/%s: hard link target %s is not a regular file of the image", p, f.Hardlink)
			}
		}
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
	// Hard links after everything else, so their targets come first.
	sort.Slice(out, func(i, j int) bool {
		if hi, hj := out[i].Hardlink != "", out[j].Hardlink != ""; hi != hj {
			return hj
		}
		return out[i].Path < out[j].Path
	})
	return out, nil
}

// writeLayer writes entries as a tar owned by root with fixed mtimes.
func writeLayer(w io.Writer, entries []File) error {
	tw := tar.NewWriter(w)
	for _, f := range entries {
		switch {
		case f.Link != "":
			hdr := header(f.Path, 0o777, 0)
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, f.Link
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
		case f.Hardlink != "":
			hdr := header(f.Path, 0o644, 0)
			hdr.Typeflag, hdr.Linkname = tar.TypeLink, strings.TrimPrefix(path.Clean(f.Hardlink), "/")
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
		case f.Mode.IsDir():
			hdr := header(f.Path+"/", tarMode(f.Mode, 0o755), 0)
			hdr.Typeflag = tar.TypeDir
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
		case f.Src != "":
			if err := copyFile(tw, f); err != nil {
				return err
			}
		default:
			if err := tw.WriteHeader(header(f.Path, tarMode(f.Mode, 0o644), int64(len(f.Data)))); err != nil {
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
		// Permissions only: a setuid bit (mount has one) means nothing in
		// a container that runs as root.
		mode = fi.Mode().Perm()
	}
	if err := tw.WriteHeader(header(f.Path, tarMode(mode, 0o644), fi.Size())); err != nil {
		return err
	}
	// CopyN so a file that grows meanwhile cannot overflow its entry.
	if _, err := io.CopyN(tw, src, fi.Size()); err != nil {
		return fmt.Errorf("%s: %w", f.Src, err)
	}
	return nil
}

func header(name string, mode, size int64) *tar.Header {
	return &tar.Header{
		Typeflag: tar.TypeReg,
		Name:     name,
		Mode:     mode,
		Size:     size,
		ModTime:  Epoch,
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

// Rootfs collects files copied from a directory tree (a host's root, or
// the packages extracted for one architecture), keyed by image path.
type Rootfs struct {
	root  string // the tree's top; "/" for the host
	files map[string]File
	inode map[[2]uint64]string // regular files already added, for hard links
}

// NewRootfs copies from the tree at root.
func NewRootfs(root string) *Rootfs {
	return &Rootfs{root: root, files: map[string]File{}, inode: map[[2]uint64]string{}}
}

// Files returns what was added.
func (r *Rootfs) Files() []File {
	out := make([]File, 0, len(r.files))
	for _, f := range r.files {
		out = append(out, f)
	}
	return out
}

// host is where image path p lies in the tree.
func (r *Rootfs) host(p string) string { return filepath.Join(r.root, p) }

// Add copies image path p from the tree as the tree has it: every symlink
// met on the way (/lib64 -> usr/lib64, libmount.so.1 -> libmount.so.1.1.0)
// becomes the same symlink in the image and is followed inside the tree,
// never out of it, and the file it ends at is copied, so every name the
// loader or a user may use resolves. It returns the image path of that
// file.
func (r *Rootfs) Add(p string) (string, error) {
	p = path.Clean("/" + p)
	for hops := 0; hops < 40; hops++ {
		link, rest, err := r.firstSymlink(p)
		if err != nil {
			return "", err
		}
		if link == "" {
			fi, err := os.Stat(r.host(p))
			if err != nil {
				return "", err
			}
			switch {
			case fi.IsDir():
				r.files[p] = File{Path: p, Mode: os.ModeDir | fi.Mode().Perm()}
			case fi.Mode().IsRegular():
				if _, done := r.files[p]; done {
					return p, nil
				}
				f := File{Path: p, Src: r.host(p)}
				if id, ok := inode(fi); ok {
					if first, seen := r.inode[id]; seen {
						f = File{Path: p, Hardlink: first}
					} else {
						r.inode[id] = p
					}
				}
				r.files[p] = f
			default:
				return "", fmt.Errorf("%s: unsupported file type %s", p, fi.Mode().Type())
			}
			return p, nil
		}
		target, err := os.Readlink(r.host(link))
		if err != nil {
			return "", err
		}
		r.files[link] = File{Path: link, Link: target}
		if !path.IsAbs(target) {
			target = path.Join(path.Dir(link), target)
		}
		p = path.Clean(path.Join(target, rest))
	}
	return "", fmt.Errorf("%s: too many levels of symbolic links", p)
}

// firstSymlink returns the first prefix of image path p that is a symlink
// in the tree, and the rest of p after it; link is "" if there is none.
func (r *Rootfs) firstSymlink(p string) (link, rest string, err error) {
	for i := 1; i <= len(p); i++ {
		if i < len(p) && p[i] != '/' {
			continue
		}
		fi, err := os.Lstat(r.host(p[:i]))
		if err != nil {
			return "", "", err
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			return p[:i], p[i:], nil
		}
	}
	return "", p, nil
}

// IsStatic reports whether the ELF binary at p runs without a dynamic
// loader.
func IsStatic(p string) (bool, error) {
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

// inode identifies a regular file, for finding hard links.
func inode(fi os.FileInfo) ([2]uint64, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Nlink < 2 {
		return [2]uint64{}, false
	}
	return [2]uint64{uint64(st.Dev), st.Ino}, true
}
