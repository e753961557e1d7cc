package nfs

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/monocsi/monocsi/driver"
	"github.com/monocsi/monocsi/internal/treecopy"
)

// A snapshot is csi-driver-nfs's: a gzip-compressed tar archive
// <share>/<snapshot name>/<source>.tar.gz, where source is the volume's uuid
// (or its subDir when it has none), with the handle
//
//	server#share#<snapshot name>#<snapshot name>#<source>
type snapshot struct {
	server, share, name, src string
}

func (s snapshot) id() string {
	return strings.Join([]string{strings.Trim(s.server, "/"), strings.Trim(s.share, "/"), s.name, s.name, s.src}, separator)
}

func (s snapshot) archive() string { return path.Join(s.name, s.src+".tar.gz") }

// parseSnapshot reads a snapshot handle; one this driver cannot have
// written is NOT_FOUND, as is one whose fields, written back into a handle,
// read as other fields (see parseHandle).
func parseSnapshot(id string) (snapshot, error) {
	s, err := splitSnapshot(id)
	if err != nil {
		return s, err
	}
	if back, err := splitSnapshot(s.id()); err != nil || back != s {
		return snapshot{}, status.Errorf(codes.NotFound, "snapshot ID %q is not an NFS snapshot handle: its fields, written back into a handle, read as other fields", driver.Printable(id))
	}
	return s, nil
}

func splitSnapshot(id string) (snapshot, error) {
	if err := driver.CheckText("snapshot ID", id, maxHandleLen); err != nil {
		return snapshot{}, err
	}
	p := strings.Split(id, separator)
	if len(p) != 5 || p[2] != p[3] {
		return snapshot{}, status.Errorf(codes.NotFound, "snapshot ID %q is not an NFS snapshot handle", driver.Printable(id))
	}
	s := snapshot{server: p[0], share: "/" + strings.Trim(p[1], "/"), name: p[2], src: p[4]}
	for _, err := range []error{checkServer(s.server), checkShare(s.share), driver.ValidID("snapshot name", s.name), driver.ValidID("snapshot source", s.src)} {
		if err != nil {
			return snapshot{}, status.Errorf(codes.NotFound, "snapshot ID %q is not an NFS snapshot handle: %s", driver.Printable(id), status.Convert(err).Message())
		}
	}
	return s, nil
}

// source names a volume's archive: its uuid, or its subDir (a volume name).
func (v volume) source() string {
	if v.uuid != "" {
		return v.uuid
	}
	return v.subDir
}

// CreateSnapshot archives the source volume's directory on the share (or on
// the server and share the parameters name), ready at once.
func (d *Driver) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if err := driver.ValidID("snapshot name", req.GetName()); err != nil {
		return nil, err
	}
	if req.GetSourceVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "source volume ID is required")
	}
	v, err := parseHandle(req.GetSourceVolumeId())
	if err != nil {
		return nil, err
	}
	s := snapshot{server: v.server, share: v.share, name: req.GetName(), src: v.source()}
	for k, val := range req.GetParameters() {
		switch key, _ := knownKey(k); key {
		case paramServer:
			s.server = val
		case paramShare:
			s.share = val
		default:
			return nil, status.Errorf(codes.InvalidArgument, "unknown snapshot parameter %q (known: server, share)", driver.Printable(k))
		}
	}
	if err := checkServer(s.server); err != nil {
		return nil, err
	}
	if err := checkShare(s.share); err != nil {
		return nil, err
	}
	s.share = "/" + strings.Trim(s.share, "/")
	if err := driver.ValidID("snapshot source", s.src); err != nil {
		return nil, err
	}
	if back, err := parseSnapshot(s.id()); err != nil || back != s {
		return nil, status.Errorf(codes.InvalidArgument, "server %q and share %q do not make a snapshot handle that reads back the same", driver.Printable(s.server), driver.Printable(s.share))
	}
	lk, err := d.locks.Acquire("snapshot:" + s.name)
	if err != nil {
		return nil, err
	}
	defer lk.Release()
	var size int64
	var created *timestamppb.Timestamp
	name := path.Base(s.archive())
	err = d.withShare(ctx, lk, s.server, s.share, nil, func(dst *os.Root) error {
		dir, err := mkdirAll(dst, s.name)
		if err != nil {
			return shareError("create", s.name, err)
		}
		defer dir.Close()
		entries, err := readNames(dir)
		if err != nil {
			return shareError("list", s.name, err)
		}
		for _, e := range entries {
			if strings.HasPrefix(e, "."+name+".") && strings.HasSuffix(e, ".tmp") {
				dir.Remove(e) // an archive an interrupted call left half-written
				continue
			}
			if e != name && !strings.HasPrefix(e, ".") { // .nfs* files are the NFS client's
				return status.Errorf(codes.AlreadyExists, "snapshot %s already exists for another volume (%s)", s.name, e)
			}
		}
		if fi, err := dir.Lstat(name); err == nil { // taken before: idempotent
			if !fi.Mode().IsRegular() {
				return status.Errorf(codes.AlreadyExists, "snapshot %s: %s on the share is not an archive this driver wrote", s.name, s.archive())
			}
			size, created = fi.Size(), timestamppb.New(fi.ModTime())
			return nil
		}
		err = d.withShare(ctx, lk, v.server, v.share, nil, func(src *os.Root) error {
			vdir, err := volumeDir(src, v.subDir, req.GetSourceVolumeId())
			if err != nil {
				return err
			}
			defer vdir.Close()
			if size, err = treecopy.WriteFileAt(dir, name, vdir); err != nil {
				return copyError("archive", v.subDir, err, codes.Internal)
			}
			created = timestamppb.Now()
			return nil
		})
		if err != nil && len(entries) == 0 {
			rmdir(dst, s.name) // no snapshot: no directory of one (it is removed only if empty)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return &csi.CreateSnapshotResponse{Snapshot: &csi.Snapshot{SnapshotId: s.id(), SourceVolumeId: req.GetSourceVolumeId(),
		SizeBytes: size, CreationTime: created, ReadyToUse: true}}, nil
}

// DeleteSnapshot removes the snapshot's archive and its then empty
// directory, nothing else: a directory holding more, or a symlink in its
// place, is not this snapshot's. A handle this driver cannot have written is
// an already deleted snapshot.
func (d *Driver) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot ID is required")
	}
	s, err := parseSnapshot(req.GetSnapshotId())
	if status.Code(err) == codes.NotFound {
		return &csi.DeleteSnapshotResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	lk, err := d.locks.Acquire("snapshot:" + s.name)
	if err != nil {
		return nil, err
	}
	defer lk.Release()
	err = d.withShare(ctx, lk, s.server, s.share, nil, func(root *os.Root) error {
		dir, err := openDir(root, s.name)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		} else if err != nil {
			return shareError("delete snapshot", s.name, err)
		}
		name := path.Base(s.archive())
		fi, err := dir.Lstat(name)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			dir.Close()
			return shareError("inspect", s.archive(), err)
		case !fi.Mode().IsRegular():
			dir.Close()
			return status.Errorf(codes.FailedPrecondition, "%s on the share is not an archive this driver wrote; left alone", s.archive())
		default:
			if err := dir.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
				dir.Close()
				return shareError("remove", s.archive(), err)
			}
		}
		dir.Close()
		if err := rmdir(root, s.name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			if errors.Is(err, syscall.ENOTDIR) {
				return status.Errorf(codes.InvalidArgument, "%s on the share is no longer a directory (a symlink?): left alone", s.name)
			}
			return status.Errorf(codes.FailedPrecondition, "snapshot directory %s holds more than the snapshot's archive; left alone: %v", s.name, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

// volumeDir opens a volume's directory on a mounted share, following no
// symlink; NOT_FOUND when it is missing or not a directory.
func volumeDir(root *os.Root, subDir, id string) (*os.Root, error) {
	dir, err := openDir(root, subDir)
	var pe *pathError
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, status.Errorf(codes.NotFound, "volume %s: %s does not exist on the share", driver.Printable(id), subDir)
	case errors.As(err, &pe) && pe.what == notADirectory:
		return nil, status.Errorf(codes.NotFound, "volume %s: %s on the share is not a directory", driver.Printable(id), subDir)
	case err != nil:
		return nil, shareError("open", subDir, err)
	}
	return dir, nil
}

// copyError reports a failed copy or restore: a file changing under it is
// ABORTED (a retry may succeed), the share's errors are as shareError says,
// and anything else (an archive that is not one of ours) gets the code other.
func copyError(op, p string, err error, other codes.Code) error {
	var errno syscall.Errno
	switch {
	case errors.Is(err, treecopy.ErrChanged):
		return status.Errorf(codes.Aborted, "%s %s: %v; try again", op, p, err)
	case errors.As(err, &errno):
		return shareError(op, p, err)
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Errorf(other, "%s %s: %v", op, p, err)
}

// populate fills the new volume directory base of parent (subDir on the
// share, not yet existing) from a snapshot or another volume: into a hidden
// sibling first, renamed into place when complete, so a failure or a
// restart never leaves a half-filled volume that a retry would take as done.
func (d *Driver) populate(ctx context.Context, lk *driver.Lock, parent *os.Root, base, subDir string, src *csi.VolumeContentSource) error {
	tmp := ".monocsi-new-" + base
	shown := path.Join(path.Dir(subDir), tmp)
	if err := parent.RemoveAll(tmp); err != nil {
		return shareError("clear", shown, err)
	}
	if err := parent.Mkdir(tmp, 0o777); err != nil {
		return shareError("create", shown, err)
	}
	dst, err := openChild(parent, tmp, shown)
	if err != nil {
		parent.RemoveAll(tmp)
		return shareError("open", shown, err)
	}
	switch {
	case src.GetSnapshot() != nil:
		var s snapshot
		if s, err = parseSnapshot(src.GetSnapshot().GetSnapshotId()); err == nil {
			err = d.withShare(ctx, lk, s.server, s.share, nil, func(sr *os.Root) error {
				dir, err := openDir(sr, s.name)
				if err == nil {
					defer dir.Close()
					_, err = dir.Lstat(path.Base(s.archive()))
				}
				if errors.Is(err, fs.ErrNotExist) {
					return status.Errorf(codes.NotFound, "snapshot %s: its archive %s is not on the share", s.name, s.archive())
				} else if err != nil {
					return shareError("open", s.archive(), err)
				}
				if err := treecopy.ExtractFileAt(dir, path.Base(s.archive()), dst); err != nil {
					return copyError("restore snapshot "+s.name+" from", s.archive(), err, codes.FailedPrecondition)
				}
				return nil
			})
		}
	case src.GetVolume() != nil:
		var v volume
		if v, err = parseHandle(src.GetVolume().GetVolumeId()); err == nil {
			err = d.withShare(ctx, lk, v.server, v.share, nil, func(vr *os.Root) error {
				dir, err := volumeDir(vr, v.subDir, src.GetVolume().GetVolumeId())
				if err != nil {
					return err
				}
				defer dir.Close()
				if err := treecopy.CopyRoot(dir, dst); err != nil {
					return copyError("clone", v.subDir, err, codes.Internal)
				}
				return nil
			})
		}
	default:
		err = status.Error(codes.InvalidArgument, "unknown volume content source")
	}
	dst.Close()
	if err == nil {
		if err = parent.Rename(tmp, base); err != nil {
			err = shareError("rename into place", subDir, err)
		}
	}
	if err != nil {
		parent.RemoveAll(tmp)
	}
	return err
}
