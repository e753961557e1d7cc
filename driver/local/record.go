package local

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// record is what the driver remembers of a volume besides its directory.
type record struct {
	CapacityBytes int64     `json:"capacityBytes"`
	Created       time.Time `json:"created"`
}

func (d *Driver) recordDir() string { return filepath.Join(d.root, metaDirName) }

func (d *Driver) recordPath(id string) string { return filepath.Join(d.recordDir(), id+".json") }

// readRecord returns the volume's record, or (nil, nil) when it does not exist.
func (d *Driver) readRecord(id string) (*record, error) {
	b, err := os.ReadFile(d.recordPath(id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil || r.CapacityBytes < 0 {
		return nil, fmt.Errorf("record %s is damaged: %v", d.recordPath(id), err)
	}
	return &r, nil
}

// writeRecord writes the record atomically (temporary file, fsync, rename).
func (d *Driver) writeRecord(id string, r record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	final := d.recordPath(id)
	f, err := os.CreateTemp(filepath.Dir(final), "."+id+".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, final)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

func (d *Driver) removeRecord(id string) error {
	err := os.Remove(d.recordPath(id))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// listRecords returns the IDs of all volumes, sorted.
func (d *Driver) listRecords() ([]string, error) {
	entries, err := os.ReadDir(d.recordDir())
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
