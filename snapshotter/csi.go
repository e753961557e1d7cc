package snapshotter

import (
	"context"
	"fmt"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/monocsi/monocsi/driver"
	"github.com/monocsi/monocsi/internal/capability"
	"github.com/monocsi/monocsi/internal/opmetrics"
)

// csiCalls is external-snapshotter's pkg/snapshotter.Snapshotter for one
// driver of this process: the calls go to the driver value, not over a
// socket, each timed in csi_sidecar_operations_seconds.
type csiCalls struct {
	name string
	d    driver.Driver
	caps *capability.Cache
}

// capable reports the driver's CREATE_DELETE_SNAPSHOT and LIST_SNAPSHOTS.
func (c *csiCalls) capable(ctx context.Context) (create, list bool, err error) {
	s, err := c.caps.Get(ctx, c.name, c.d)
	if err != nil {
		return false, false, status.Error(codes.Unavailable, err.Error())
	}
	return s.Controller(csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT),
		s.Controller(csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS), nil
}

// CreateSnapshot: a driver without CREATE_DELETE_SNAPSHOT gets a clear
// error (csi-snapshotter refuses to start for such a driver; here the
// VolumeSnapshot says why it never becomes ready).
func (c *csiCalls) CreateSnapshot(ctx context.Context, name, volumeHandle string, params, secrets map[string]string) (string, string, time.Time, int64, bool, error) {
	create, _, err := c.capable(ctx)
	if err != nil {
		return "", "", time.Time{}, 0, false, err
	}
	if !create {
		return "", "", time.Time{}, 0, false, status.Errorf(codes.FailedPrecondition,
			"driver %s cannot take snapshots (it has no CREATE_DELETE_SNAPSHOT capability)", c.name)
	}
	start := time.Now()
	rsp, err := c.d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{SourceVolumeId: volumeHandle, Name: name, Parameters: params, Secrets: secrets})
	opmetrics.Observe(c.name, "CreateSnapshot", start, err)
	if err != nil {
		return "", "", time.Time{}, 0, false, err
	}
	s := rsp.GetSnapshot()
	if s.GetSnapshotId() == "" {
		return "", "", time.Time{}, 0, false, fmt.Errorf("driver %s returned no snapshot ID for %s", c.name, name)
	}
	return c.name, s.GetSnapshotId(), s.GetCreationTime().AsTime(), s.GetSizeBytes(), s.GetReadyToUse(), nil
}

func (c *csiCalls) DeleteSnapshot(ctx context.Context, id string, secrets map[string]string) error {
	if create, _, err := c.capable(ctx); err != nil {
		return err
	} else if !create {
		return status.Errorf(codes.FailedPrecondition, "driver %s cannot delete snapshots (it has no CREATE_DELETE_SNAPSHOT capability)", c.name)
	}
	start := time.Now()
	_, err := c.d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id, Secrets: secrets})
	opmetrics.Observe(c.name, "DeleteSnapshot", start, err)
	return err
}

// GetSnapshotStatus is csi-snapshotter's: ListSnapshots by ID, or, for a
// driver that cannot list, the snapshot taken as ready now.
func (c *csiCalls) GetSnapshotStatus(ctx context.Context, id string, secrets map[string]string) (bool, time.Time, int64, string, error) {
	_, list, err := c.capable(ctx)
	if err != nil {
		return false, time.Time{}, 0, "", err
	}
	if !list {
		return true, time.Now(), 0, "", nil
	}
	start := time.Now()
	rsp, err := c.d.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: id, Secrets: secrets})
	opmetrics.Observe(c.name, "ListSnapshots", start, err)
	if err != nil {
		return false, time.Time{}, 0, "", err
	}
	if len(rsp.GetEntries()) == 0 {
		return false, time.Time{}, 0, "", fmt.Errorf("can not find snapshot for snapshotID %s", id)
	}
	s := rsp.GetEntries()[0].GetSnapshot()
	return s.GetReadyToUse(), s.GetCreationTime().AsTime(), s.GetSizeBytes(), s.GetGroupSnapshotId(), nil
}
