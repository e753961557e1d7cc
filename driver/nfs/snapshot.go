package nfs

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

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
// written is NOT_FOUND.
func parseSnapshot(id string) (snapshot, error) {
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
	if err := driver.ValidID("snapshot source", s.src); err != nil {
		return nil, err
	}
	unlock, err := d.locks.TryLock("snapshot:" + s.name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	var size int64
	var created *timestamppb.Timestamp
	err = d.withShare(ctx, s.server, s.share, nil, func(dst *os.Root) error {
		if err := dst.MkdirAll(s.name, 0o755); err != nil {
			return shareError("create", s.name, err)
		}
		entries, err := readDir(dst, s.name)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if strings.HasPrefix(e, ".") {
				dst.Remove(path.Join(s.name, e)) // an archive an interrupted call left half-written
				continue
			}
			if e != path.Base(s.archive()) {
				return status.Errorf(codes.AlreadyExists, "snapshot %s already exists for another volume (%s)", s.name, e)
			}
		}
		if fi, err := dst.Stat(s.archive()); err == nil { // taken before: idempotent
			size, created = fi.Size(), timestamppb.New(fi.ModTime())
			return nil
		}
		return d.withShare(ctx, v.server, v.share, nil, func(src *os.Root) error {
			dir, err := volumeDir(src, v.subDir, req.GetSourceVolumeId())
			if err != nil {
				return err
			}
			if size, err = treecopy.WriteFile(filepath.Join(dst.Name(), s.archive()), dir); err != nil {
				return internal("archive %s: %v", v.subDir, err)
			}
			created = timestamppb.Now()
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return &csi.CreateSnapshotResponse{Snapshot: &csi.Snapshot{SnapshotId: s.id(), SourceVolumeId: req.GetSourceVolumeId(),
		SizeBytes: size, CreationTime: created, ReadyToUse: true}}, nil
}

// DeleteSnapshot removes the snapshot's directory; a handle this driver
// cannot have written is an already deleted snapshot.
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
	unlock, err := d.locks.TryLock("snapshot:" + s.name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	err = d.withShare(ctx, s.server, s.share, nil, func(root *os.Root) error {
		// Only the archive and the then empty directory: a directory of that
		// name holding anything else is not this snapshot's to delete.
		if err := root.Remove(s.archive()); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return shareError("remove", s.archive(), err)
		}
		if err := root.Remove(s.name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return status.Errorf(codes.FailedPrecondition, "snapshot directory %s holds more than the snapshot's archive; left alone: %v", s.name, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

// volumeDir is the host path of a volume's directory inside a mounted share,
// NOT_FOUND when it is missing. os.Root has checked that the path stays in
// the share.
func volumeDir(root *os.Root, subDir, id string) (string, error) {
	fi, err := root.Stat(subDir)
	if errors.Is(err, fs.ErrNotExist) {
		return "", status.Errorf(codes.NotFound, "volume %s: %s does not exist on the share", driver.Printable(id), subDir)
	}
	if err != nil {
		return "", shareError("inspect", subDir, err)
	}
	if !fi.IsDir() {
		return "", status.Errorf(codes.NotFound, "volume %s: %s on the share is not a directory", driver.Printable(id), subDir)
	}
	return filepath.Join(root.Name(), subDir), nil
}

func readDir(root *os.Root, dir string) ([]string, error) {
	f, err := root.Open(dir)
	if err != nil {
		return nil, shareError("open", dir, err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, shareError("list", dir, err)
	}
	return names, nil
}

// populate fills the new volume directory subDir (not yet existing) from a
// snapshot or another volume: into a hidden sibling first, renamed into
// place when complete, so a failure or a restart never leaves a half-filled
// volume that a retry would take as done.
func (d *Driver) populate(ctx context.Context, root *os.Root, subDir string, src *csi.VolumeContentSource) error {
	tmp := path.Join(path.Dir(subDir), ".monocsi-new-"+path.Base(subDir))
	if err := root.RemoveAll(tmp); err != nil {
		return shareError("clear", tmp, err)
	}
	if err := root.MkdirAll(tmp, 0o777); err != nil {
		return shareError("create", tmp, err)
	}
	tmpPath := filepath.Join(root.Name(), tmp)
	var err error
	switch {
	case src.GetSnapshot() != nil:
		var s snapshot
		if s, err = parseSnapshot(src.GetSnapshot().GetSnapshotId()); err == nil {
			err = d.withShare(ctx, s.server, s.share, nil, func(sr *os.Root) error {
				if _, err := sr.Stat(s.archive()); err != nil {
					return status.Errorf(codes.NotFound, "snapshot %s: its archive %s is not on the share: %v", s.name, s.archive(), err)
				}
				if err := treecopy.ExtractFile(filepath.Join(sr.Name(), s.archive()), tmpPath); err != nil {
					return internal("restore snapshot %s: %v", s.name, err)
				}
				return nil
			})
		}
	case src.GetVolume() != nil:
		var v volume
		if v, err = parseHandle(src.GetVolume().GetVolumeId()); err == nil {
			err = d.withShare(ctx, v.server, v.share, nil, func(vr *os.Root) error {
				dir, err := volumeDir(vr, v.subDir, src.GetVolume().GetVolumeId())
				if err != nil {
					return err
				}
				if err := treecopy.Copy(dir, tmpPath); err != nil {
					return internal("clone %s: %v", v.subDir, err)
				}
				return nil
			})
		}
	default:
		err = status.Error(codes.InvalidArgument, "unknown volume content source")
	}
	if err == nil {
		if err = root.Rename(tmp, subDir); err != nil {
			err = shareError("rename into place", subDir, err)
		}
	}
	if err != nil {
		root.RemoveAll(tmp)
	}
	return err
}
