package snapshotter

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/monocsi/monocsi/driver"
	"github.com/monocsi/monocsi/driver/local"
	"github.com/monocsi/monocsi/internal/capability"
	"github.com/monocsi/monocsi/internal/opmetrics"
)

// The snapshotter's calls reach a real local driver: the archive appears,
// its status is read back through ListSnapshots, deleting removes it, and
// each call is timed in csi_sidecar_operations_seconds.
func TestCallsReachTheDriver(t *testing.T) {
	root := filepath.Join(t.TempDir(), "root")
	d, err := local.New(local.Config{NodeID: "node-a", Root: root})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	caps := []*csi.VolumeCapability{{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}}
	vol, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "vol", VolumeCapabilities: caps, CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	c := &csiCalls{name: local.DefaultName, d: d, caps: &capability.Cache{}}
	before := testutil.CollectAndCount(opmetrics.Operations)
	drv, id, created, size, ready, err := c.CreateSnapshot(ctx, "snapshot-uid", vol.GetVolume().GetVolumeId(), nil, nil)
	if err != nil || drv != local.DefaultName || id == "" || created.IsZero() || size != 1<<20 || !ready {
		t.Fatalf("CreateSnapshot: %q %q %v %d %v %v", drv, id, created, size, ready, err)
	}
	archive := filepath.Join(root, ".monocsi", "snapshots", id+".tar.gz")
	if _, err := os.Stat(archive); err != nil {
		t.Errorf("the archive: %v", err)
	}
	ready, when, size, _, err := c.GetSnapshotStatus(ctx, id, nil)
	if err != nil || !ready || !when.Equal(created) || size != 1<<20 {
		t.Errorf("GetSnapshotStatus: %v %v %d %v; want ready, %v, 1 MiB", ready, when, size, err, created)
	}
	if err := c.DeleteSnapshot(ctx, id, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(archive); !os.IsNotExist(err) {
		t.Errorf("the archive after DeleteSnapshot: %v", err)
	}
	for _, m := range []string{"CreateSnapshot", "ListSnapshots", "DeleteSnapshot"} {
		if n := testutil.CollectAndCount(opmetrics.Operations.MustCurryWith(map[string]string{"method_name": "/csi.v1.Controller/" + m})); n == 0 {
			t.Errorf("no csi_sidecar_operations_seconds series for %s", m)
		}
	}
	if after := testutil.CollectAndCount(opmetrics.Operations); after <= before {
		t.Errorf("csi_sidecar_operations_seconds: %d series before, %d after", before, after)
	}
}

// noSnapshots is a local driver without CREATE_DELETE_SNAPSHOT.
type noSnapshots struct{ driver.Driver }

func (noSnapshots) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	return driver.ControllerCapabilities(csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME), nil
}

func (noSnapshots) CreateSnapshot(context.Context, *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	panic("CreateSnapshot called on a driver that cannot snapshot")
}

// A driver that cannot snapshot is not called: the error says why, and is
// final (FailedPrecondition), so csi-snapshotter records it on the content.
func TestDriverWithoutSnapshots(t *testing.T) {
	d, err := local.New(local.Config{NodeID: "node-a", Root: filepath.Join(t.TempDir(), "root")})
	if err != nil {
		t.Fatal(err)
	}
	c := &csiCalls{name: "flex.example", d: noSnapshots{d}, caps: &capability.Cache{}}
	_, _, _, _, _, err = c.CreateSnapshot(context.Background(), "snapshot-uid", "vol", nil, nil)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "flex.example cannot take snapshots") {
		t.Errorf("CreateSnapshot: %v; want FailedPrecondition naming the driver", err)
	}
}
