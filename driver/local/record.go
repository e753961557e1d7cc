package local

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/monocsi/monocsi/internal/atomicfile"
)

// record is what the driver remembers of a volume besides its directory.
type record struct {
	CapacityBytes int64     `json:"capacityBytes"`
	Created       time.Time `json:"created"`
	// Source is "snapshot/<id>" or "volume/<id>" for a restored or cloned
	// volume, so a repeated CreateVolume can tell whether it asks for the same.
	Source string `json:"source,omitempty"`
	// ProjectID is the volume's project ID when its size is enforced by a
	// project quota (limit: CapacityBytes); 0 when it is not.
	ProjectID uint32 `json:"projectID,omitempty"`
	// Block marks a block volume: <root>/<id> is a file, not a directory.
	Block bool `json:"block,omitempty"`
}

// snapshotRecord describes a snapshot: a compressed archive of a volume.
type snapshotRecord struct {
	SourceVolume string    `json:"sourceVolume"`
	SizeBytes    int64     `json:"sizeBytes"` // the source's capacity: the smallest volume it restores into
	Created      time.Time `json:"created"`
	// Block marks a block volume's snapshot: a sparse copy of its file
	// (<id>.img), not an archive.
	Block bool `json:"block,omitempty"`
}

func (d *Driver) recordDir() string   { return filepath.Join(d.root, metaDirName) }
func (d *Driver) snapshotDir() string { return filepath.Join(d.recordDir(), "snapshots") }
func (d *Driver) rootLock() string    { return filepath.Join(d.recordDir(), "lock") }
func (d *Driver) newDir() string      { return filepath.Join(d.recordDir(), "new") }

func (d *Driver) recordPath(id string) string   { return filepath.Join(d.recordDir(), id+".json") }
func (d *Driver) snapshotPath(id string) string { return filepath.Join(d.snapshotDir(), id+".json") }
func (d *Driver) archivePath(id string) string  { return filepath.Join(d.snapshotDir(), id+".tar.gz") }
func (d *Driver) imagePath(id string) string    { return filepath.Join(d.snapshotDir(), id+".img") }

func (d *Driver) readRecord(id string) (*record, error) {
	var r record
	ok, err := readJSON(d.recordPath(id), &r)
	if !ok || err != nil || r.CapacityBytes < 0 {
		return nil, err
	}
	return &r, nil
}

// existingRecord returns the volume's record, or NOT_FOUND.
func (d *Driver) existingRecord(id string) (*record, error) {
	rec, err := d.readRecord(id)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "volume %s: %v", id, err)
	}
	if rec == nil {
		return nil, status.Errorf(codes.NotFound, "volume %s does not exist on node %s", id, d.nodeID)
	}
	return rec, nil
}

// lockedRecord takes the volume's lock (ABORTED while another call holds
// it) and reads its record; the caller releases the lock.
func (d *Driver) lockedRecord(id string) (*record, func(), error) {
	unlock, err := d.locks.TryLock(id)
	if err != nil {
		return nil, nil, err
	}
	rec, err := d.existingRecord(id)
	if err != nil {
		unlock()
		return nil, nil, err
	}
	return rec, unlock, nil
}

func (d *Driver) readSnapshot(id string) (*snapshotRecord, error) {
	var r snapshotRecord
	ok, err := readJSON(d.snapshotPath(id), &r)
	if !ok || err != nil {
		return nil, err
	}
	return &r, nil
}

// readJSON decodes file into v; (false, nil) when the file does not exist.
func readJSON(file string, v any) (bool, error) {
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("record %s is damaged: %v", file, err)
	}
	return true, nil
}

// writeJSON writes v to file atomically.
func writeJSON(file string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = atomicfile.Write(file, func(w io.Writer) error { _, err := w.Write(b); return err })
	return err
}

// removeFile removes file; a missing file is fine.
func removeFile(file string) error {
	if err := os.Remove(file); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// listIDs returns the IDs of the *.json records in dir, sorted.
func listIDs(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if ok && e.Type().IsRegular() && !strings.HasPrefix(id, ".") {
			ids = append(ids, id)
		}
	}
	return ids, nil
}
