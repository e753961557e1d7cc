package nfs

import (
	"errors"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Everything the controller does on a share names files relative to the
// share's os.Root (or to a directory opened from it), never by host paths
// resolved again. os.Root keeps every step inside the share, but it follows
// symlinks that stay inside: a volume's path must not pass through one, or a
// symlink to a sibling volume would make CreateVolume fill, DeleteVolume
// empty and a snapshot read that sibling. So the directories on a volume's
// path are opened one component at a time, each checked to be the directory
// Lstat saw (not a symlink, not swapped in between), and what is removed is
// removed relative to its opened parent.

// pathError is a share path that is not what the driver made: a symlink or
// a non-directory where a directory must be. It is the caller's input (or
// someone else's doing on the share), never an internal error.
type pathError struct {
	name string // relative to the share
	what string // aSymlink, notADirectory or replaced
}

const (
	aSymlink      = "a symlink"
	notADirectory = "not a directory"
	replaced      = "replaced while being opened"
)

func (e *pathError) Error() string { return e.name + " on the share is " + e.what }

// openDir opens the directory name ("." or a clean relative path) inside
// dir, following no symlink on the way.
func openDir(dir *os.Root, name string) (*os.Root, error) {
	return walkDirs(dir, name, false)
}

// mkdirAll creates the missing directories of name inside dir (0777 less
// the umask, as mkdir -p) and opens name, following no symlink on the way.
func mkdirAll(dir *os.Root, name string) (*os.Root, error) {
	return walkDirs(dir, name, true)
}

func walkDirs(dir *os.Root, name string, create bool) (*os.Root, error) {
	cur, err := dir.OpenRoot(".")
	if err != nil {
		return nil, err
	}
	if name == "." {
		return cur, nil
	}
	done := ""
	for _, c := range strings.Split(name, "/") {
		done = path.Join(done, c)
		if create {
			if err := cur.Mkdir(c, 0o777); err != nil && !errors.Is(err, fs.ErrExist) {
				cur.Close()
				return nil, renamed("mkdir", done, err)
			}
		}
		next, err := openChild(cur, c, done)
		cur.Close()
		if err != nil {
			return nil, err
		}
		cur = next
	}
	return cur, nil
}

// openChild opens the directory c in dir; done names it in errors.
func openChild(dir *os.Root, c, done string) (*os.Root, error) {
	fi, err := dir.Lstat(c)
	if err != nil {
		return nil, renamed("lstat", done, err)
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return nil, &pathError{done, aSymlink}
	case !fi.IsDir():
		return nil, &pathError{done, notADirectory}
	}
	sub, err := dir.OpenRoot(c)
	if err != nil {
		return nil, &pathError{done, replaced}
	}
	if now, err := sub.Stat("."); err != nil || !os.SameFile(fi, now) {
		sub.Close()
		return nil, &pathError{done, replaced}
	}
	return sub, nil
}

// renamed is err of an os.Root call on one component, named by its path in
// the share.
func renamed(op, name string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return &fs.PathError{Op: op, Path: name, Err: err}
}

// splitDir opens the parent of name (no symlink followed) and returns it
// with name's last component.
func splitDir(root *os.Root, name string, create bool) (*os.Root, string, error) {
	parent, err := walkDirs(root, path.Dir(name), create)
	if err != nil {
		return nil, "", err
	}
	return parent, path.Base(name), nil
}

// withFd runs fn with a descriptor of the directory dir.
func withFd(dir *os.Root, fn func(fd int) error) error {
	f, err := dir.Open(".")
	if err != nil {
		return err
	}
	defer f.Close()
	return fn(int(f.Fd()))
}

// rmdir removes the empty directory name in dir and nothing else: a symlink
// or file in its place stays (rmdir fails on them).
func rmdir(dir *os.Root, name string) error {
	return withFd(dir, func(fd int) error {
		if err := unix.Unlinkat(fd, name, unix.AT_REMOVEDIR); err != nil {
			return &os.PathError{Op: "rmdir", Path: name, Err: err}
		}
		return nil
	})
}

// renameDir moves the directory from/oldName to to/newName; neither name
// is resolved through anything but its opened parent.
func renameDir(from *os.Root, oldName string, to *os.Root, newName string) error {
	return withFd(from, func(ofd int) error {
		return withFd(to, func(nfd int) error {
			if err := unix.Renameat(ofd, oldName, nfd, newName); err != nil {
				return &os.PathError{Op: "rename", Path: oldName, Err: err}
			}
			return nil
		})
	})
}

// removeDir removes the directory name in parent with everything in it.
// Only the directory's own entries are removed (os.Root never follows a
// symlink when removing), and the directory itself by rmdir: if it was
// swapped for a symlink, the symlink stays.
func removeDir(parent *os.Root, name, shown string) error {
	dir, err := openChild(parent, name, shown)
	if err != nil {
		return err
	}
	names, err := readNames(dir)
	if err == nil {
		for _, n := range names {
			if err = dir.RemoveAll(n); err != nil {
				break
			}
		}
	}
	dir.Close()
	if err != nil {
		return err
	}
	return rmdir(parent, name)
}

func readNames(dir *os.Root) ([]string, error) {
	f, err := dir.Open(".")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// fileMode turns a mode written as chmod takes it (0o1777) into an
// os.FileMode: Go keeps setuid, setgid and sticky in flag bits of its own,
// so os.FileMode(0o1777) would silently lose the sticky bit.
func fileMode(perm uint32) fs.FileMode {
	m := fs.FileMode(perm & 0o777)
	for _, s := range specialBits {
		if perm&s.bit != 0 {
			m |= s.flag
		}
	}
	return m
}

var specialBits = []struct {
	bit  uint32
	flag fs.FileMode
}{{0o4000, fs.ModeSetuid}, {0o2000, fs.ModeSetgid}, {0o1000, fs.ModeSticky}}

// modeBits is fileMode's inverse: the mode as chmod takes it.
func modeBits(m fs.FileMode) uint32 {
	bits := uint32(m.Perm())
	for _, s := range specialBits {
		if m&s.flag != 0 {
			bits |= s.bit
		}
	}
	return bits
}

// chmodExactly sets dir's mode (through its descriptor: umask plays no part
// and no path is resolved) and checks that the server kept every bit, so
// the volume context records what the directory really has. A server may
// drop setgid, for one (root squash and a group the squashed user is not in).
func chmodExactly(dir *os.Root, perm uint32, shown string) error {
	f, err := dir.Open(".")
	if err != nil {
		return shareError("open", shown, err)
	}
	defer f.Close()
	if err := f.Chmod(fileMode(perm)); err != nil {
		return shareError("chmod", shown, err)
	}
	fi, err := f.Stat()
	if err != nil {
		return shareError("inspect", shown, err)
	}
	if got := modeBits(fi.Mode()); got != perm {
		return status.Errorf(codes.FailedPrecondition, "mountPermissions 0%o: the server keeps %s at 0%o (the bits 0%o are refused)", perm, shown, got, perm&^got)
	}
	return nil
}

// shareError reports a failed operation on the share. A path that leads
// out of the share or through a symlink, a name the server refuses, or a
// file where a directory must be is the caller's input; a directory swapped
// while being opened is ABORTED (a retry sees what is there now); a full
// share is RESOURCE_EXHAUSTED; only the rest is INTERNAL.
func shareError(op, p string, err error) error {
	var pe *pathError
	switch {
	case errors.As(err, &pe) && pe.what == replaced:
		return status.Errorf(codes.Aborted, "%s %s: %s was %s; try again", op, p, pe.name, pe.what)
	case errors.As(err, &pe):
		return status.Errorf(codes.InvalidArgument, "%s %s: %s is %s; the driver does not follow or remove what it did not make", op, p, pe.name, pe.what)
	case strings.Contains(err.Error(), "escapes"), errors.Is(err, syscall.ELOOP):
		return status.Errorf(codes.InvalidArgument, "%s %s: it leads out of the share through a symlink", op, p)
	case errors.Is(err, syscall.ESTALE):
		return status.Errorf(codes.Aborted, "%s %s on the share: %v (changed on the server meanwhile); try again", op, p, err)
	case errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.ENAMETOOLONG), errors.Is(err, syscall.EINVAL):
		return status.Errorf(codes.InvalidArgument, "%s %s on the share: %v", op, p, err)
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return status.Errorf(codes.ResourceExhausted, "%s %s on the share: %v", op, p, err)
	case errors.Is(err, syscall.EROFS), errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return status.Errorf(codes.FailedPrecondition, "%s %s on the share: %v (read-only or not writable by the driver?)", op, p, err)
	case errors.Is(err, syscall.ENOTEMPTY), errors.Is(err, syscall.EEXIST), errors.Is(err, syscall.EBUSY):
		return status.Errorf(codes.FailedPrecondition, "%s %s on the share: %v", op, p, err)
	}
	return status.Errorf(codes.Internal, "%s %s on the share: %v", op, p, err)
}
