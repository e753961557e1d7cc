// Package treecopy copies a directory tree through a tar stream: to a
// compressed archive (snapshots), from one (restores), or straight into
// another directory (clones). Both ends go through os.Root, so a symlink
// planted in a volume — or swapped in while it is read — can neither pull
// host files into an archive nor make an extraction write outside its target.
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
	"strings"
	"time"

	"github.com/monocsi/monocsi/internal/atomicfile"
)

// Write writes the tree below dir to w as a tar stream. Regular files,
// directories and symlinks are kept with their mode, owner and times; other
// file types (sockets, devices, fifos) are skipped: they carry no data.
func Write(w io.Writer, dir string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	tw := tar.NewWriter(w)
	err = fs.WalkDir(root.FS(), ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if name == "." {
			return nil
		}
		fi, err := root.Lstat(name)
		if err != nil {
			return err
		}
		link := ""
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			if link, err = root.Readlink(name); err != nil {
				return err
			}
		case fi.IsDir(), fi.Mode().IsRegular():
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
		if !fi.Mode().IsRegular() {
			return nil
		}
		f, err := root.Open(name)
		if err != nil {
			return err
		}
		defer f.Close()
		// The file may have changed size since Lstat: copy exactly hdr.Size.
		n, err := io.Copy(tw, io.LimitReader(f, hdr.Size))
		if err == nil && n < hdr.Size {
			_, err = io.CopyN(tw, zeros{}, hdr.Size-n)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("archive %s: %w", dir, err)
	}
	return tw.Close()
}

type zeros struct{}

func (zeros) Read(b []byte) (int, error) { clear(b); return len(b), nil }

// Extract unpacks a tar stream into dir, which must exist. Entry names must
// be relative and stay inside dir; anything else fails the whole extraction.
func Extract(r io.Reader, dir string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
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
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(Write(pw, src)) }()
	err := Extract(pr, dst)
	pr.CloseWithError(errors.New("extraction stopped"))
	return err
}

// WriteFile writes a gzip-compressed archive of dir to file, atomically,
// and returns the archive's size.
func WriteFile(file, dir string) (int64, error) {
	return atomicfile.Write(file, func(w io.Writer) error {
		zw := gzip.NewWriter(w)
		if err := Write(zw, dir); err != nil {
			return err
		}
		return zw.Close()
	})
}

// ExtractFile unpacks a gzip-compressed archive written by WriteFile into dir.
func ExtractFile(file, dir string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return fmt.Errorf("read %s: %w", file, err)
	}
	return Extract(zr, dir)
}
