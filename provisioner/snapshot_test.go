package provisioner

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	snapfake "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned/fake"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"

	"github.com/monocsi/monocsi/driver/local"
)

// snapshotObjects are a VolumeSnapshot ns1/snap bound to content
// "content-1" of driver with handle, restoreSize 1Mi; change edits them.
func snapshotObjects(driver, handle string, change func(*snapv1.VolumeSnapshot, *snapv1.VolumeSnapshotContent)) (*snapv1.VolumeSnapshot, *snapv1.VolumeSnapshotContent) {
	s := &snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Name: "snap", Namespace: "ns1", UID: "snap-uid"},
		Status: &snapv1.VolumeSnapshotStatus{ReadyToUse: ptr.To(true), BoundVolumeSnapshotContentName: ptr.To("content-1"),
			RestoreSize: ptr.To(resource.MustParse("1Mi"))}}
	fs := corev1.PersistentVolumeFilesystem
	c := &snapv1.VolumeSnapshotContent{ObjectMeta: metav1.ObjectMeta{Name: "content-1"},
		Spec: snapv1.VolumeSnapshotContentSpec{Driver: driver, SourceVolumeMode: &fs,
			VolumeSnapshotRef: corev1.ObjectReference{Name: "snap", Namespace: "ns1", UID: "snap-uid"}},
		Status: &snapv1.VolumeSnapshotContentStatus{SnapshotHandle: ptr.To(handle), ReadyToUse: ptr.To(true)}}
	if change != nil {
		change(s, c)
	}
	return s, c
}

// snapshotAPI is a fake snapshot API holding objs.
func snapshotAPI(objs ...runtime.Object) snapclient.Interface {
	//lint:ignore SA1019 the only fake client/v8 generates (it has no apply configurations for NewClientset)
	return snapfake.NewSimpleClientset(objs...)
}

func fromSnapshot(o *corev1.PersistentVolumeClaim, name string) {
	o.Spec.DataSource = &corev1.TypedLocalObjectReference{APIGroup: ptr.To(snapv1.GroupName), Kind: "VolumeSnapshot", Name: name}
}

// A claim restored from a ready VolumeSnapshot of the local driver holds the
// snapshot's data.
func TestRestoreFromSnapshot(t *testing.T) {
	p, root := newLocal(t)
	ctx := context.Background()
	d := p.opts.Driver
	caps := []*csi.VolumeCapability{{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}}
	src, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "src", VolumeCapabilities: caps, CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, src.GetVolume().GetVolumeId(), "hello"), []byte("from the source"), 0o644); err != nil {
		t.Fatal(err)
	}
	snap, err := d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snapshot-1", SourceVolumeId: src.GetVolume().GetVolumeId()})
	if err != nil {
		t.Fatal(err)
	}
	p.opts.Snapshots = snapshotAPI(snapshotObjects(local.DefaultName, snap.GetSnapshot().GetSnapshotId(), nil))
	o := options(p, nil)
	fromSnapshot(o.PVC, "snap")
	pv, _, err := p.Provision(ctx, o)
	if err != nil {
		t.Fatalf("Provision from a snapshot: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(root, pv.Spec.CSI.VolumeHandle, "hello"))
	if err != nil || string(b) != "from the source" {
		t.Errorf("the restored volume's file: %q %v", b, err)
	}
}

// Every snapshot a claim cannot restore from is refused with a reason, as
// external-provisioner's getSnapshotSource.
func TestSnapshotSourceRefused(t *testing.T) {
	p, _ := newLocal(t)
	ctx := context.Background()
	cases := map[string]struct {
		change func(*snapv1.VolumeSnapshot, *snapv1.VolumeSnapshotContent)
		claim  func(*corev1.PersistentVolumeClaim)
		msg    string
	}{
		"missing":   {claim: func(c *corev1.PersistentVolumeClaim) { fromSnapshot(c, "nope") }, msg: "VolumeSnapshot ns1/nope not found"},
		"not ready": {change: func(s *snapv1.VolumeSnapshot, _ *snapv1.VolumeSnapshotContent) { s.Status.ReadyToUse = ptr.To(false) }, msg: "is not Ready"},
		"no status": {change: func(s *snapv1.VolumeSnapshot, _ *snapv1.VolumeSnapshotContent) { s.Status = nil }, msg: "is not Ready"},
		"being deleted": {change: func(s *snapv1.VolumeSnapshot, _ *snapv1.VolumeSnapshotContent) {
			s.DeletionTimestamp = ptr.To(metav1.Now())
			s.Finalizers = []string{"x"}
		}, msg: "being deleted"},
		"unbound": {change: func(s *snapv1.VolumeSnapshot, _ *snapv1.VolumeSnapshotContent) {
			s.Status.BoundVolumeSnapshotContentName = nil
		}, msg: "not bound"},
		"another driver":   {change: func(_ *snapv1.VolumeSnapshot, c *snapv1.VolumeSnapshotContent) { c.Spec.Driver = "other.csi" }, msg: "does not match driver name"},
		"no handle":        {change: func(_ *snapv1.VolumeSnapshot, c *snapv1.VolumeSnapshotContent) { c.Status.SnapshotHandle = nil }, msg: "not available"},
		"another snapshot": {change: func(_ *snapv1.VolumeSnapshot, c *snapv1.VolumeSnapshotContent) { c.Spec.VolumeSnapshotRef.UID = "x" }, msg: "is bound to snapshot"},
		"too small": {change: func(s *snapv1.VolumeSnapshot, _ *snapv1.VolumeSnapshotContent) {
			s.Status.RestoreSize = ptr.To(resource.MustParse("2Gi"))
		}, msg: "less than the size"},
		"volume mode": {change: func(_ *snapv1.VolumeSnapshot, c *snapv1.VolumeSnapshotContent) {
			c.Spec.SourceVolumeMode = ptr.To(corev1.PersistentVolumeBlock)
		}, msg: "allow-volume-mode-change"},
		"other namespace": {claim: func(c *corev1.PersistentVolumeClaim) {
			c.Spec.DataSourceRef = &corev1.TypedObjectReference{APIGroup: ptr.To(snapv1.GroupName), Kind: "VolumeSnapshot", Name: "snap", Namespace: ptr.To("ns2")}
		}, msg: "must be in the claim's namespace"},
	}
	for name, c := range cases {
		p.opts.Snapshots = snapshotAPI(snapshotObjects(local.DefaultName, "snapshot-1", c.change))
		o := options(p, nil)
		fromSnapshot(o.PVC, "snap")
		if c.claim != nil {
			c.claim(o.PVC)
		}
		pv, _, err := p.Provision(ctx, o)
		if pv != nil || err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: got pv=%v err=%v; want an error mentioning %q", name, pv != nil, err, c.msg)
		}
	}
	// The content may allow another volume mode.
	p.opts.Snapshots = snapshotAPI(snapshotObjects(local.DefaultName, "snapshot-1", func(_ *snapv1.VolumeSnapshot, c *snapv1.VolumeSnapshotContent) {
		c.Spec.SourceVolumeMode = ptr.To(corev1.PersistentVolumeBlock)
		c.Annotations = map[string]string{annAllowVolumeModeChange: "true"}
	}))
	o := options(p, nil)
	fromSnapshot(o.PVC, "snap")
	if _, _, err := p.Provision(ctx, o); err == nil || strings.Contains(err.Error(), "allow-volume-mode-change") {
		t.Errorf("mode change allowed by the content: %v; want only the driver's NotFound for the unknown snapshot", err)
	}
}
