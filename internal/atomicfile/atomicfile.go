// Package atomicfile writes files so that readers see the old content or the
// whole new content, never a part: a temporary file in the same directory is
// filled, synced and renamed into place.
package atomicfile

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
)

// Write fills file through fill and returns the size written. On any error
// the temporary file is removed and file is untouched. file's directory is
// resolved once; see WriteAt.
func Write(file string, fill func(w io.Writer) error) (int64, error) {
	dir, err := os.OpenRoot(filepath.Dir(file))
	if err != nil {
		return 0, err
	}
	defer dir.Close()
	return WriteAt(dir, filepath.Base(file), fill)
}

// WriteAt is Write of the file name inside dir. Every step (create, rename,
// remove) names the file relative to dir, so a directory swapped for a
// symlink on the way cannot send the data, or the clean-up, out of it.
func WriteAt(dir *os.Root, name string, fill func(w io.Writer) error) (int64, error) {
	f, tmp, err := createTemp(dir, name)
	if err != nil {
		return 0, err
	}
	err = fill(f)
	if err == nil {
		err = f.Sync()
	}
	var size int64
	if fi, serr := f.Stat(); err == nil && serr == nil {
		size = fi.Size()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = dir.Rename(tmp, name)
	}
	if err != nil {
		dir.Remove(tmp)
		return 0, err
	}
	return size, nil
}

// createTemp creates a new hidden file next to name: .<base>.<random>.tmp.
func createTemp(dir *os.Root, name string) (*os.File, string, error) {
	for range 10 {
		b := make([]byte, 8)
		rand.Read(b)
		tmp := path.Join(path.Dir(name), "."+path.Base(name)+"."+hex.EncodeToString(b)+".tmp")
		f, err := dir.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if !errors.Is(err, fs.ErrExist) {
			return f, tmp, err
		}
	}
	return nil, "", errors.New("atomicfile: no unused temporary name")
}
