package local

import (
	"context"
	"errors"
	"os"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"time"

	"github.com/monocsi/monocsi/driver"
	"github.com/monocsi/monocsi/internal/treecopy"
	"golang.org/x/sys/unix"
)

// Snapshots are gzip-compressed tar archives of a volume's directory, kept
// under the root on the same node (like csi-driver-nfs's tar.gz snapshots).
// They are ready as soon as CreateSnapshot returns.

func snapshotLock(id string) string { return "snapshot/" + id }

// CreateSnapshot archives the source volume. The same name for the same
// source returns the existing snapshot; for another source, ALREADY_EXISTS.
func (d *Driver) CreateSnapshot(_ context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	id, srcID := req.GetName(), req.GetSourceVolumeId()
	if err := driver.ValidID("snapshot name", id); err != nil {
		return nil, err
	}
	if err := driver.ValidID("source volume ID", srcID); err != nil {
		return nil, err
	}
	if err := driver.CheckParameters(req.GetParameters()); err != nil {
		return nil, err
	}
	unlock, err := d.locks.TryLock(snapshotLock(id))
	if err != nil {
		return nil, err
	}
	defer unlock()

	if snap, err := d.readSnapshot(id); err != nil {
		return nil, status.Errorf(codes.Internal, "snapshot %s: %v", id, err)
	} else if snap != nil {
		if snap.SourceVolume != srcID {
			return nil, status.Errorf(codes.AlreadyExists, "snapshot %s already exists for volume %s", id, snap.SourceVolume)
		}
		return &csi.CreateSnapshotResponse{Snapshot: d.snapshot(id, snap)}, nil
	}
	rec, err := d.existingRecord(srcID)
	if err != nil {
		return nil, err
	}
	if rec.Block {
		err = d.copyBlock(d.imagePath(id), func() (int, error) { fd, _, err := d.openBlockFile(srcID, unix.O_RDONLY); return fd, err }, rec.CapacityBytes)
		if err != nil {
			return nil, err
		}
	} else if _, err := treecopy.WriteFile(d.archivePath(id), d.volumeDir(srcID)); err != nil {
		return nil, status.Errorf(codes.Internal, "archive volume %s: %v", srcID, err)
	}
	snap := &snapshotRecord{SourceVolume: srcID, SizeBytes: rec.CapacityBytes, Created: time.Now().UTC(), Block: rec.Block}
	if err := writeJSON(d.snapshotPath(id), snap); err != nil {
		removeFile(d.archivePath(id))
		removeFile(d.imagePath(id))
		return nil, status.Errorf(codes.Internal, "record snapshot %s: %v", id, err)
	}
	return &csi.CreateSnapshotResponse{Snapshot: d.snapshot(id, snap)}, nil
}

func (d *Driver) snapshot(id string, s *snapshotRecord) *csi.Snapshot {
	return &csi.Snapshot{
		SnapshotId:         id,
		SourceVolumeId:     s.SourceVolume,
		SizeBytes:          s.SizeBytes,
		CreationTime:       timestamppb.New(s.Created),
		ReadyToUse:         true,
		AccessibleTopology: []*csi.Topology{d.topology()},
	}
}

// DeleteSnapshot removes the archive, then the record. Unknown IDs are fine.
func (d *Driver) DeleteSnapshot(_ context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if err := driver.ValidID("snapshot ID", id); err != nil {
		return nil, err
	}
	unlock, err := d.locks.TryLock(snapshotLock(id))
	if err != nil {
		return nil, err
	}
	defer unlock()
	for _, f := range []string{d.archivePath(id), d.imagePath(id), d.snapshotPath(id)} {
		if err := removeFile(f); err != nil {
			return nil, status.Errorf(codes.Internal, "delete snapshot %s: %v", id, err)
		}
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

// GetSnapshot returns one snapshot, or NOT_FOUND.
func (d *Driver) GetSnapshot(_ context.Context, req *csi.GetSnapshotRequest) (*csi.GetSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if err := driver.ValidID("snapshot ID", id); err != nil {
		return nil, err
	}
	snap, err := d.readSnapshot(id)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "snapshot %s: %v", id, err)
	}
	if snap == nil {
		return nil, status.Errorf(codes.NotFound, "snapshot %s does not exist", id)
	}
	return &csi.GetSnapshotResponse{Snapshot: d.snapshot(id, snap)}, nil
}

// ListSnapshots pages through the snapshots, optionally filtered by ID or source.
func (d *Driver) ListSnapshots(_ context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	var ids []string
	var err error
	if one := req.GetSnapshotId(); one != "" {
		if driver.ValidID("snapshot ID", one) == nil {
			ids = []string{one}
		}
	} else if ids, err = listIDs(d.snapshotDir()); err != nil {
		return nil, status.Errorf(codes.Internal, "list snapshots: %v", err)
	}
	resp := &csi.ListSnapshotsResponse{}
	resp.NextToken, err = page(ids, req.GetStartingToken(), req.GetMaxEntries(), func(id string) bool {
		snap, err := d.readSnapshot(id)
		if err != nil || snap == nil || req.GetSourceVolumeId() != "" && snap.SourceVolume != req.GetSourceVolumeId() {
			return false
		}
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: d.snapshot(id, snap)})
		return true
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// contentSource checks a CreateVolume content source and returns its
// recorded name ("snapshot/<id>", "volume/<id>", or "") and the smallest
// size a volume made from it may have. A block volume is made only from a
// block volume or its snapshot, a directory only from a directory's.
func (d *Driver) contentSource(src *csi.VolumeContentSource, block bool) (string, int64, error) {
	kindErr := func(what string, srcBlock bool) error {
		return status.Errorf(codes.InvalidArgument, "%s %s volume: it cannot fill a %s volume", what, volumeKind(srcBlock), volumeKind(block))
	}
	switch {
	case src == nil:
		return "", 0, nil
	case src.GetSnapshot() != nil:
		id := src.GetSnapshot().GetSnapshotId()
		if err := driver.ValidID("source snapshot ID", id); err != nil {
			return "", 0, err
		}
		snap, err := d.readSnapshot(id)
		if err != nil {
			return "", 0, status.Errorf(codes.Internal, "snapshot %s: %v", id, err)
		}
		if snap == nil {
			return "", 0, status.Errorf(codes.NotFound, "source snapshot %s does not exist on node %s", id, d.nodeID)
		}
		if snap.Block != block {
			return "", 0, kindErr("snapshot "+id+" is of a", snap.Block)
		}
		return "snapshot/" + id, snap.SizeBytes, nil
	case src.GetVolume() != nil:
		id := src.GetVolume().GetVolumeId()
		if err := driver.ValidID("source volume ID", id); err != nil {
			return "", 0, err
		}
		rec, err := d.existingRecord(id)
		if err != nil {
			return "", 0, err
		}
		if rec.Block != block {
			return "", 0, kindErr("volume "+id+" is a", rec.Block)
		}
		return "volume/" + id, rec.CapacityBytes, nil
	}
	return "", 0, status.Error(codes.InvalidArgument, "unsupported volume content source")
}

// populate fills a new volume's directory from its content source. The copy
// is made in a scratch directory and renamed into place, so an interrupted
// call never leaves a half-filled volume. With a project ID, the scratch
// directory has it before the copy starts, so every copied file is charged
// to the volume's quota (and the copy fails when it does not fit).
func (d *Driver) populate(dir, id string, src *csi.VolumeContentSource, projID uint32) error {
	tmp := filepath.Join(d.newDir(), id)
	if err := os.RemoveAll(tmp); err != nil {
		return status.Errorf(codes.Internal, "clear %s: %v", tmp, err)
	}
	if err := os.Mkdir(tmp, 0o777); err != nil {
		return status.Errorf(codes.Internal, "create %s: %v", tmp, err)
	}
	if projID != 0 {
		if err := d.quota.SetProject(tmp, projID); err != nil {
			os.RemoveAll(tmp)
			return status.Errorf(codes.Internal, "set project %d on %s: %v", projID, tmp, err)
		}
	}
	var err error
	if s := src.GetSnapshot(); s != nil {
		err = treecopy.ExtractFile(d.archivePath(s.GetSnapshotId()), tmp)
	} else {
		err = treecopy.Copy(d.volumeDir(src.GetVolume().GetVolumeId()), tmp)
	}
	if err == nil {
		// An empty directory left by an interrupted plain create may be in the way.
		if rerr := os.Remove(dir); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = rerr
		}
	}
	if err == nil {
		err = os.Rename(tmp, dir)
	}
	if err != nil {
		os.RemoveAll(tmp)
		return status.Errorf(codes.Internal, "fill volume %s from its source: %v", id, err)
	}
	return nil
}

// ControllerExpandVolume raises the volume's quota limit (when its size is
// enforced) and records the new size, after checking free space; a smaller
// size is OUT_OF_RANGE. A directory needs no node-side resize, so this is
// online: a pod writing into the volume may write more at once. A block
// volume's file grows (to whole sectors) and its loop devices then need
// NodeExpandVolume.
func (d *Driver) ControllerExpandVolume(_ context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	id := req.GetVolumeId()
	if err := driver.ValidID("volume ID", id); err != nil {
		return nil, err
	}
	if req.GetCapacityRange() == nil {
		return nil, status.Error(codes.InvalidArgument, "capacity range is required")
	}
	size, err := requestedSize(req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	rec, unlock, err := d.lockedRecord(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if size > 0 && size < rec.CapacityBytes || req.GetCapacityRange().GetLimitBytes() > 0 && req.GetCapacityRange().GetLimitBytes() < rec.CapacityBytes {
		return nil, status.Errorf(codes.OutOfRange, "volume %s has %d bytes and cannot shrink (requested %d, limit %d)",
			id, rec.CapacityBytes, req.GetCapacityRange().GetRequiredBytes(), req.GetCapacityRange().GetLimitBytes())
	}
	if rec.Block && size > rec.CapacityBytes {
		if size, err = blockSize(size, req.GetCapacityRange().GetLimitBytes()); err != nil {
			return nil, err
		}
	}
	if size > rec.CapacityBytes {
		if err := d.checkFree(size - rec.CapacityBytes); err != nil {
			return nil, err
		}
		// The file first: a record is never larger than its file.
		if rec.Block {
			if err := d.growBlockFile(id, size); err != nil {
				return nil, err
			}
		}
		if rec.ProjectID != 0 {
			// The limit first: a record is never larger than its limit.
			if d.quota == nil {
				return nil, status.Errorf(codes.FailedPrecondition,
					"volume %s's size is enforced by project %d, but its root can no longer enforce sizes: %s", id, rec.ProjectID, d.noQuota)
			}
			if err := d.quota.SetLimit(rec.ProjectID, size); err != nil {
				return nil, status.Errorf(codes.Internal, "raise the %s project quota of volume %s (project %d) to %d bytes: %v", d.quota.Kind(), id, rec.ProjectID, size, err)
			}
		}
		rec.CapacityBytes = size
		if err := writeJSON(d.recordPath(id), rec); err != nil {
			return nil, status.Errorf(codes.Internal, "record volume %s: %v", id, err)
		}
	}
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: rec.CapacityBytes, NodeExpansionRequired: rec.Block}, nil
}

// checkFree fails with RESOURCE_EXHAUSTED when the root's filesystem has less
// than n bytes free, which lets the scheduler try another node.
func (d *Driver) checkFree(n int64) error {
	free, err := d.freeBytes()
	if err != nil {
		return status.Errorf(codes.Internal, "read free space of %s: %v", d.root, err)
	}
	if n > free {
		return status.Errorf(codes.ResourceExhausted, "node %s has %d bytes free under %s, the volume needs %d", d.nodeID, free, d.root, n)
	}
	return nil
}
