// Package treecopy copies a directory tree through a tar stream: to a
// compressed archive (snapshots), from one (restores), or straight into
// another directory (clones). Both ends are os.Roots and every file is named
// relative to them, so a symlink planted in a volume — or swapped in for a
// directory while it is read — can neither pull files from outside into an
// archive nor make an extraction write outside its target. The forms taking
// host paths open their directories once, for callers whose paths are their
// own; callers holding an os.Root (a share) use the Root and At forms.
package treecopy

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/monocsi/monocsi/internal/atomicfile"
)

// Write writes the tree below dir to w as a tar stream; see WriteRoot.
func Write(w io.Writer, dir string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	return WriteRoot(w, root)
}

// WriteRoot writes the tree of src to w as a tar stream. Regular files,
// directories and symlinks are kept with their mode, owner and times; other
// file types (sockets, devices, fifos) are skipped: they carry no data.
func WriteRoot(w io.Writer, src *os.Root) error {
	tw := tar.NewWriter(w)
	if err := writeDir(tw, src, ""); err != nil {
		return fmt.Errorf("archive %s: %w", src.Name(), err)
	}
	return tw.Close()
}

// writeDir writes the entries of dir, in name order, as prefix/<name>. Each
// is looked at relative to dir's own descriptor, and a subdirectory is
// entered only through a descriptor checked to be the directory Lstat saw:
// a directory swapped for a symlink meanwhile (even one staying inside the
// tree) is never followed.
func writeDir(tw *tar.Writer, dir *os.Root, prefix string) error {
	f, err := dir.Open(".")
	if err != nil {
		return vanished(prefix, err)
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return vanished(prefix, err)
	}
	slices.Sort(names)
	for _, n := range names {
		if err := writeEntry(tw, dir, n, path.Join(prefix, n)); err != nil {
			return err
		}
	}
	return nil
}

// writeEntry writes the entry n of dir as name.
func writeEntry(tw *tar.Writer, dir *os.Root, n, name string) error {
	fi, err := dir.Lstat(n)
	if err != nil {
		return vanished(name, err)
	}
	link := ""
	var f *os.File
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		if link, err = dir.Readlink(n); err != nil {
			return vanished(name, err)
		}
	case fi.Mode().IsRegular():
		if f, fi, err = openSame(dir, n, fi); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		defer f.Close()
	case fi.IsDir():
	default:
		return nil
	}
	hdr, err := tar.FileInfoHeader(fi, link)
	if err != nil {
		return err
	}
	hdr.Name = name
	if fi.IsDir() {
		hdr.Name += "/"
	}
	hdr.Uname, hdr.Gname = "", ""
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	if f != nil {
		// The file may have changed size since its stat: copy exactly hdr.Size.
		n, err := io.Copy(tw, io.LimitReader(f, hdr.Size))
		if err == nil && n < hdr.Size {
			_, err = io.CopyN(tw, zeros{}, hdr.Size-n)
		}
		return err
	}
	if !fi.IsDir() {
		return nil
	}
	sub, err := dir.OpenRoot(n)
	if err != nil {
		return fmt.Errorf("%s: %w (%v)", name, ErrChanged, err)
	}
	defer sub.Close()
	if now, err := sub.Stat("."); err != nil || !os.SameFile(fi, now) {
		return fmt.Errorf("%s: %w (replaced)", name, ErrChanged)
	}
	return writeDir(tw, sub, name)
}

var (
	// ErrChanged is a file that changed type or identity while being
	// copied: the copy is not a consistent one, and may be tried again.
	ErrChanged = errors.New("changed while being copied")
	// ErrNotRegular is a file to read that is not a regular file.
	ErrNotRegular = errors.New("not a regular file")
)

// vanished makes an entry that was listed but is gone ErrChanged.
func vanished(name string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %w (gone)", name, ErrChanged)
	}
	return fmt.Errorf("%s: %w", name, err)
}

// openSame opens the regular file name, which Lstat saw as fi, and returns
// it with its fstat. The file must still be that file, or a regular file
// that replaced it (an application's atomic rename): a symlink swapped in
// for it would otherwise have its target's content archived under its name.
func openSame(root *os.Root, name string, fi fs.FileInfo) (*os.File, fs.FileInfo, error) {
	f, ofi, err := OpenRegular(root, name)
	if errors.Is(err, ErrNotRegular) || errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("%w (%w)", ErrChanged, err)
	} else if err != nil {
		return nil, nil, err
	}
	if !os.SameFile(fi, ofi) {
		if now, err := root.Lstat(name); err != nil || !now.Mode().IsRegular() || !os.SameFile(now, ofi) {
			f.Close()
			return nil, nil, fmt.Errorf("%w (replaced)", ErrChanged)
		}
	}
	return f, ofi, nil
}

// LeaseWait bounds how long OpenRegular waits for a lease to be broken.
const LeaseWait = 2 * time.Minute

// OpenRegular opens the regular file name in root for reading. The open
// never blocks: a FIFO or device swapped in for the file would otherwise
// hang the caller for ever, and the volume's lock with it. A lease held on
// the file (Samba's oplocks, a tool on the NFS server) makes such an open
// fail with EWOULDBLOCK while the kernel breaks the lease, which it does
// within fs.lease-break-time (45 s by default): that is waited for, polling,
// up to LeaseWait.
func OpenRegular(root *os.Root, name string) (*os.File, fs.FileInfo, error) {
	give := time.Now().Add(LeaseWait)
	for {
		f, err := root.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
		if errors.Is(err, syscall.EWOULDBLOCK) && time.Now().Before(give) {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		fi, err := f.Stat()
		if err == nil && !fi.Mode().IsRegular() {
			err = fmt.Errorf("%s (%v): %w", name, fi.Mode().Type(), ErrNotRegular)
		}
		if err != nil {
			f.Close()
			return nil, nil, err
		}
		return f, fi, nil
	}
}

type zeros struct{}

func (zeros) Read(b []byte) (int, error) { clear(b); return len(b), nil }

// Extract unpacks a tar stream into dir, which must exist; see ExtractRoot.
func Extract(r io.Reader, dir string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	return ExtractRoot(r, root)
}

// ExtractRoot unpacks a tar stream into root. Entry names must be relative
// and stay inside it; anything else fails the whole extraction.
func ExtractRoot(r io.Reader, root *os.Root) error {
	tr := tar.NewReader(r)
	type dirTimes struct {
		name string
		mod  time.Time
	}
	var dirs []dirTimes
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read archive: %w", err)
		}
		name := path.Clean(strings.TrimSuffix(hdr.Name, "/"))
		if name == "." || path.IsAbs(name) || name == ".." || strings.HasPrefix(name, "../") {
			return fmt.Errorf("archive entry %q points outside the target", hdr.Name)
		}
		mode := fs.FileMode(hdr.Mode).Perm() | fs.FileMode(hdr.Mode)&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o700); err != nil {
				return err
			}
			dirs = append(dirs, dirTimes{name, hdr.ModTime})
		case tar.TypeReg:
			f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("write %s: %w", name, err)
			}
			if err := root.Chtimes(name, hdr.AccessTime, hdr.ModTime); err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := root.Symlink(hdr.Linkname, name); err != nil {
				return err
			}
		case tar.TypeLink:
			// A hard link's target is another entry, inside dir too.
			target := path.Clean(hdr.Linkname)
			if target == "." || path.IsAbs(target) || target == ".." || strings.HasPrefix(target, "../") {
				return fmt.Errorf("archive entry %q links outside the target", hdr.Name)
			}
			if err := root.Link(target, name); err != nil {
				return err
			}
		default:
			return fmt.Errorf("archive entry %q has unsupported type %q", hdr.Name, hdr.Typeflag)
		}
		if err := root.Lchown(name, hdr.Uid, hdr.Gid); err != nil {
			return err
		}
		if hdr.Typeflag != tar.TypeSymlink {
			// After chown, which clears setuid/setgid bits.
			if err := root.Chmod(name, mode); err != nil {
				return err
			}
		}
	}
	// Directory times last: creating entries inside changes them.
	for i := len(dirs) - 1; i >= 0; i-- {
		_ = root.Chtimes(dirs[i].name, time.Time{}, dirs[i].mod)
	}
	return nil
}

// Copy copies the tree below src into dst, which must exist.
func Copy(src, dst string) error {
	return withRoots(src, dst, CopyRoot)
}

// CopyRoot copies the tree of src into dst.
func CopyRoot(src, dst *os.Root) error {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(WriteRoot(pw, src)) }()
	err := ExtractRoot(pr, dst)
	pr.CloseWithError(errors.New("extraction stopped"))
	return err
}

// WriteFile writes a gzip-compressed archive of dir to file, atomically,
// and returns the archive's size.
func WriteFile(file, dir string) (int64, error) {
	var size int64
	err := withRoots(filepath.Dir(file), dir, func(out, src *os.Root) (err error) {
		size, err = WriteFileAt(out, filepath.Base(file), src)
		return err
	})
	return size, err
}

// WriteFileAt writes a gzip-compressed archive of src to name in dir,
// atomically, and returns the archive's size.
func WriteFileAt(dir *os.Root, name string, src *os.Root) (int64, error) {
	return atomicfile.WriteAt(dir, name, func(w io.Writer) error {
		zw := gzip.NewWriter(w)
		if err := WriteRoot(zw, src); err != nil {
			return err
		}
		return zw.Close()
	})
}

// ExtractFile unpacks a gzip-compressed archive written by WriteFile into dir.
func ExtractFile(file, dir string) error {
	return withRoots(filepath.Dir(file), dir, func(in, dst *os.Root) error {
		return ExtractFileAt(in, filepath.Base(file), dst)
	})
}

// ExtractFileAt unpacks the gzip-compressed archive name in dir into dst.
func ExtractFileAt(dir *os.Root, name string, dst *os.Root) error {
	f, _, err := OpenRegular(dir, name)
	if err != nil {
		return err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	return ExtractRoot(zr, dst)
}

// withRoots opens two directories as roots for fn.
func withRoots(a, b string, fn func(a, b *os.Root) error) error {
	ra, err := os.OpenRoot(a)
	if err != nil {
		return err
	}
	defer ra.Close()
	rb, err := os.OpenRoot(b)
	if err != nil {
		return err
	}
	defer rb.Close()
	return fn(ra, rb)
}
