// Package atomicfile writes files so that readers see the old content or the
// whole new content, never a part: a temporary file in the same directory is
// filled, synced and renamed into place.
package atomicfile

import (
	"io"
	"os"
	"path/filepath"
)

// Write fills file through fill and returns the size written. On any error
// the temporary file is removed and file is untouched.
func Write(file string, fill func(w io.Writer) error) (int64, error) {
	f, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*.tmp")
	if err != nil {
		return 0, err
	}
	tmp := f.Name()
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
		err = os.Rename(tmp, file)
	}
	if err != nil {
		os.Remove(tmp)
		return 0, err
	}
	return size, nil
}
