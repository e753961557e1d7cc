package driver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Target and staging paths come from the CO and name places on the node's
// filesystem where a driver creates, mounts, unmounts and removes. None of
// that may be redirected: every component of such a path is opened one by
// one from "/" with O_NOFOLLOW, relative to the directory before it, so a
// symlink anywhere in it (not only the last component) is refused, and a
// directory is created or removed relative to an open descriptor of its
// verified parent, never by re-resolving the path.

// maxHostPath bounds a host path (PATH_MAX counts the terminating NUL).
const maxHostPath = unix.PathMax - 1

// Reserved is a directory a driver keeps its own data in (the local
// driver's root, a FlexVolume directory): no target or staging path may lie
// in it, be it, or be above it. A mount inside it would land in another
// volume's data or the driver's records, and unpublishing would remove
// them; a mount on it or above it would hide them all.
type Reserved struct {
	why      string // names the directory in errors
	path     string // symlinks resolved
	dev, ino uint64
}

// Reserve describes dir, which must exist; why names it in errors ("the
// local driver's root: volumes' data and the driver's records").
func Reserve(why, dir string) (Reserved, error) {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return Reserved{}, err
	}
	fd, err := unix.Open(real, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return Reserved{}, &os.PathError{Op: "open", Path: real, Err: err}
	}
	defer unix.Close(fd)
	st, err := statFD(fd)
	if err != nil {
		return Reserved{}, &os.PathError{Op: "stat", Path: real, Err: err}
	}
	if st.mode&unix.S_IFMT != unix.S_IFDIR {
		return Reserved{}, fmt.Errorf("%s is not a directory", real)
	}
	return Reserved{why: why, path: real, dev: st.dev, ino: st.ino}, nil
}

// fdStat is what the checks need of a file: its type and identity.
type fdStat struct {
	mode     uint32
	dev, ino uint64
}

// statFD stats an open file with statx(AT_STATX_DONT_SYNC): the type and
// identity of an inode never change, so what the kernel has cached is
// right, and a mount of a dead NFS server (a target being unpublished) is
// not asked, which would hang.
func statFD(fd int) (fdStat, error) {
	var stx unix.Statx_t
	err := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_DONT_SYNC, unix.STATX_TYPE|unix.STATX_INO, &stx)
	if err != nil {
		return fdStat{}, err
	}
	return fdStat{mode: uint32(stx.Mode), dev: unix.Mkdev(stx.Dev_major, stx.Dev_minor), ino: stx.Ino}, nil
}

// Path is the reserved directory, symlinks resolved.
func (r Reserved) Path() string { return r.path }

// CheckHostPath validates a path the CO hands to the node (target, staging
// or volume path): absolute, already clean, no NUL, not "/", no symlink in
// any component, every existing component but the last a directory, and
// the path itself, when it exists, a directory (block volumes' targets are
// files: see CheckHostFile). It must not be in, on or
// above any of the reserved directories. A path that does not exist yet is
// fine. Every refusal is INVALID_ARGUMENT naming the cause.
func CheckHostPath(what, p string, reserved ...Reserved) error {
	w, err := walkHostPath(what, p, reserved, nil, leafDir)
	if err != nil {
		return err
	}
	w.close()
	return nil
}

// CheckHostFile is CheckHostPath for the target of a block volume: the
// path itself, when it exists, is a regular file or a block device (the
// device bind-mounted on the file), never a directory.
func CheckHostFile(what, p string, reserved ...Reserved) error {
	w, err := walkHostPath(what, p, reserved, nil, leafFile)
	if err != nil {
		return err
	}
	w.close()
	return nil
}

// CheckHostTarget is CheckHostPath accepting both kinds of target: a
// directory, or a file or block device (unpublishing a volume whose kind
// is no longer known).
func CheckHostTarget(what, p string, reserved ...Reserved) error {
	w, err := walkHostPath(what, p, reserved, nil, leafAny)
	if err != nil {
		return err
	}
	w.close()
	return nil
}

// CreateHostFile creates the empty regular file p (mode perm) for a block
// device to be bind-mounted on, after the checks of CheckHostFile,
// relative to an open descriptor of its verified parent, which must exist
// (FAILED_PRECONDITION otherwise: the CO creates it). created reports
// whether p was made (false: it was there already, a file or device).
func CreateHostFile(what, p string, perm os.FileMode, reserved ...Reserved) (created bool, err error) {
	w, err := walkHostPath(what, p, reserved, nil, leafFile)
	if err != nil {
		return false, err
	}
	defer w.close()
	if w.leaf >= 0 {
		return false, nil
	}
	if w.parent < 0 {
		return false, status.Errorf(codes.FailedPrecondition, "%s %s: its parent directory %s does not exist", what, p, filepath.Dir(p))
	}
	fd, err := unix.Openat(w.parent, w.base, unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_RDONLY|unix.O_CLOEXEC, uint32(perm.Perm()))
	if err != nil {
		return false, hostPathErr(what, p, p, "create", err)
	}
	unix.Close(fd)
	return true, nil
}

// RemoveHostFile removes p when it is an empty regular file (a block
// volume's target that is no longer a mount point), relative to an open
// descriptor of its verified parent. A missing p is fine; a directory is
// removed as RemoveHostDir does. Anything else (a file with data, a device
// node) is FAILED_PRECONDITION: not the driver's to delete.
func RemoveHostFile(what, p string) error {
	w, err := walkHostPath(what, p, nil, nil, leafAny)
	if err != nil {
		return err
	}
	defer w.close()
	if w.leaf < 0 {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(w.leaf, &st); err != nil {
		return status.Errorf(codes.Internal, "stat %s: %v", p, err)
	}
	switch {
	case st.Mode&unix.S_IFMT == unix.S_IFDIR:
		return removeLeafDir(w, what, p)
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return status.Errorf(codes.FailedPrecondition, "%s %s is %s and not a mount point: refusing to delete it", what, p, fileKind(st.Mode))
	case st.Size != 0:
		return status.Errorf(codes.FailedPrecondition, "%s %s is not a mount point and holds %d bytes: refusing to delete it", what, p, st.Size)
	}
	err = unix.Unlinkat(w.parent, w.base, 0)
	switch {
	case err == nil, errors.Is(err, unix.ENOENT):
		return nil
	case errors.Is(err, unix.EBUSY):
		return status.Errorf(codes.FailedPrecondition, "%s %s is still a mount point (or in use): cannot remove it", what, p)
	}
	return status.Errorf(codes.Internal, "remove %s %s: %v", what, p, err)
}

// MkdirHostPath creates the directory p after the checks of CheckHostPath,
// relative to an open descriptor of its verified parent, so a symlink put
// in its way is never followed. The parent must exist, unless parents is
// set: then missing parents are created the same way. created reports
// whether p itself was made (false: it was already a directory). A missing
// parent is FAILED_PRECONDITION (the CO creates it).
func MkdirHostPath(what, p string, perm os.FileMode, parents bool, reserved ...Reserved) (created bool, err error) {
	w, err := walkHostPath(what, p, reserved, &mkdirs{perm: uint32(perm.Perm()), parents: parents}, leafDir)
	if err != nil {
		return false, err
	}
	defer w.close()
	return w.created, nil
}

// mkdirs is what walkHostPath creates: the last component with perm, and
// the missing ones before it when parents is set.
type mkdirs struct {
	perm    uint32
	parents bool
}

// RemoveHostDir removes the empty directory p (a target that is no longer
// a mount point), relative to an open descriptor of its verified parent. A
// missing p is fine. A directory that is not empty, or still a mount
// point, is FAILED_PRECONDITION: its contents are not the driver's to
// delete.
func RemoveHostDir(what, p string) error {
	w, err := walkHostPath(what, p, nil, nil, leafDir)
	if err != nil {
		return err
	}
	defer w.close()
	if w.leaf < 0 {
		return nil
	}
	return removeLeafDir(w, what, p)
}

func removeLeafDir(w *hostWalk, what, p string) error {
	err := unix.Unlinkat(w.parent, w.base, unix.AT_REMOVEDIR)
	switch {
	case err == nil, errors.Is(err, unix.ENOENT):
		return nil
	case errors.Is(err, unix.ENOTEMPTY), errors.Is(err, unix.EEXIST):
		return status.Errorf(codes.FailedPrecondition,
			"%s %s is not a mount point and is not empty: refusing to delete what is in it", what, p)
	case errors.Is(err, unix.EBUSY):
		return status.Errorf(codes.FailedPrecondition, "%s %s is still a mount point (or in use): cannot remove it", what, p)
	}
	return status.Errorf(codes.Internal, "remove %s %s: %v", what, p, err)
}

// StatfsHostPath is statfs(2) of the directory p, reached without
// following a symlink; NOT_FOUND when it does not exist.
func StatfsHostPath(what, p string) (unix.Statfs_t, error) {
	var st unix.Statfs_t
	w, err := walkHostPath(what, p, nil, nil, leafDir)
	if err != nil {
		return st, err
	}
	defer w.close()
	if w.leaf < 0 {
		return st, status.Errorf(codes.NotFound, "%s %s does not exist", what, p)
	}
	if err := unix.Fstatfs(w.leaf, &st); err != nil {
		return st, status.Errorf(codes.Internal, "statfs %s: %v", p, err)
	}
	return st, nil
}

// hostWalk is a walked host path: descriptors (O_PATH) of the last
// component's parent and of the component itself, -1 when missing.
type hostWalk struct {
	parent, leaf int
	base         string
	created      bool // the walk created the last component
}

func (w *hostWalk) close() {
	if w.parent >= 0 {
		unix.Close(w.parent)
	}
	if w.leaf >= 0 {
		unix.Close(w.leaf)
	}
}

// checkHostPathSyntax is the part of CheckHostPath that needs no filesystem.
func checkHostPathSyntax(what, p string) error {
	if p == "" {
		return status.Errorf(codes.InvalidArgument, "%s is required", what)
	}
	if len(p) > maxHostPath {
		return status.Errorf(codes.InvalidArgument, "%s is %d bytes long, the limit is %d", what, len(p), maxHostPath)
	}
	if strings.ContainsRune(p, 0) || !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return status.Errorf(codes.InvalidArgument, "%s %q must be a clean absolute path", what, Printable(p))
	}
	if p == "/" {
		return status.Errorf(codes.InvalidArgument, "%s must not be /", what)
	}
	return nil
}

// walkHostPath opens p from "/" one component at a time (see CheckHostPath
// for what it refuses), creating the directories mk names (nil: none).
// Without them, the walk stops at the first missing component and reports
// the path as missing (leaf -1, and parent -1 when the parent is missing
// too).
func walkHostPath(what, p string, reserved []Reserved, mk *mkdirs, kind leafKind) (*hostWalk, error) {
	if err := checkHostPathSyntax(what, p); err != nil {
		return nil, err
	}
	for _, r := range reserved {
		if r.path == p || strings.HasPrefix(r.path, p+"/") {
			return nil, status.Errorf(codes.InvalidArgument,
				"%s %s is %s, %s: a mount there would hide it", what, p, aboveOrOn(r.path, p), r.why)
		}
	}
	fd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "open /: %v", err)
	}
	w := &hostWalk{parent: -1, leaf: fd}
	fail := func(err error) (*hostWalk, error) { w.close(); return nil, err }
	comps := strings.Split(p[1:], "/")
	for i, c := range comps {
		last := i == len(comps)-1
		cur := "/" + strings.Join(comps[:i+1], "/")
		if w.parent >= 0 {
			unix.Close(w.parent)
		}
		w.parent, w.leaf, w.base = w.leaf, -1, c
		nfd, err := unix.Openat(w.parent, c, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) && mk != nil && (last || mk.parents) {
			err = unix.Mkdirat(w.parent, c, mk.perm)
			switch {
			case err == nil:
				w.created = last
			case errors.Is(err, unix.ENOENT):
				return fail(status.Errorf(codes.Internal, "create %s: %v", cur, err))
			case !errors.Is(err, unix.EEXIST):
				return fail(hostPathErr(what, p, cur, "create", err))
			}
			nfd, err = unix.Openat(w.parent, c, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		}
		if errors.Is(err, unix.ENOENT) {
			if last {
				return w, nil // p does not exist; its parent does
			}
			if mk != nil {
				return fail(status.Errorf(codes.FailedPrecondition,
					"%s %s: its parent directory %s does not exist", what, p, filepath.Dir(p)))
			}
			unix.Close(w.parent)
			w.parent = -1
			return w, nil
		}
		if err != nil {
			return fail(hostPathErr(what, p, cur, "open", err))
		}
		w.leaf = nfd
		st, err := statFD(nfd)
		if err != nil {
			return fail(status.Errorf(codes.Internal, "stat %s: %v", cur, err))
		}
		switch {
		case st.mode&unix.S_IFMT == unix.S_IFLNK:
			return fail(status.Errorf(codes.InvalidArgument, "%s %s: %s is a symlink; refusing to follow it", what, p, cur))
		case last && !kind.accepts(st.mode):
			return fail(status.Errorf(codes.InvalidArgument, "%s %s exists and is %s, %s", what, p, fileKind(st.mode), kind.why()))
		case last && st.mode&unix.S_IFMT != unix.S_IFDIR:
			// a file or device: not a directory anything is inside
		case st.mode&unix.S_IFMT != unix.S_IFDIR:
			return fail(status.Errorf(codes.InvalidArgument, "%s %s: %s is %s, not a directory", what, p, cur, fileKind(st.mode)))
		}
		for _, r := range reserved {
			if st.dev == r.dev && st.ino == r.ino {
				return fail(status.Errorf(codes.InvalidArgument,
					"%s %s is inside %s, %s: refusing to mount or remove anything there", what, p, r.path, r.why))
			}
		}
	}
	return w, nil
}

// leafKind is what the last component of a walked path may be.
type leafKind int

const (
	leafDir  leafKind = iota // a directory: a filesystem volume's target
	leafFile                 // a regular file or block device: a block volume's target
	leafAny                  // either
)

func (k leafKind) accepts(mode uint32) bool {
	t := mode & unix.S_IFMT
	dir, file := t == unix.S_IFDIR, t == unix.S_IFREG || t == unix.S_IFBLK
	return k == leafDir && dir || k == leafFile && file || k == leafAny && (dir || file)
}

func (k leafKind) why() string {
	switch k {
	case leafFile:
		return "not a file: a block volume is bind-mounted on a file"
	case leafAny:
		return "neither a directory nor a file"
	}
	return "not a directory: a volume is mounted on a directory"
}

func aboveOrOn(reserved, p string) string {
	if reserved == p {
		return "the directory " + reserved
	}
	return "above " + reserved
}

// hostPathErr turns an error of opening or creating component cur of p
// into a status: what the caller got wrong is INVALID_ARGUMENT.
func hostPathErr(what, p, cur, op string, err error) error {
	switch {
	case errors.Is(err, unix.ENAMETOOLONG):
		return status.Errorf(codes.InvalidArgument, "%s %q: a component is too long", what, Printable(p))
	case errors.Is(err, unix.ENOTDIR):
		return status.Errorf(codes.InvalidArgument, "%s %s: a component of %s is not a directory", what, p, cur)
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM), errors.Is(err, unix.EROFS):
		return status.Errorf(codes.FailedPrecondition, "%s %s: %s %s: %v", what, p, op, cur, err)
	}
	return status.Errorf(codes.Internal, "%s %s: %s %s: %v", what, p, op, cur, err)
}

func fileKind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFREG:
		return "a regular file"
	case unix.S_IFLNK:
		return "a symlink"
	case unix.S_IFBLK:
		return "a block device"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFIFO:
		return "a FIFO"
	case unix.S_IFSOCK:
		return "a socket"
	}
	return "not a directory"
}

// Same reports whether r and o are the same directory (device and inode).
func (r Reserved) Same(o Reserved) bool { return r.dev == o.dev && r.ino == o.ino }
