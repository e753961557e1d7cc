package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/monocsi/monocsi/test/flexsamples"
)

// snapshotClass creates a VolumeSnapshotClass of driver (deletionPolicy Delete).
func snapshotClass(t *testing.T, name, driver string) {
	t.Helper()
	ctx := context.Background()
	c := &snapv1.VolumeSnapshotClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Driver: driver, DeletionPolicy: snapv1.VolumeSnapshotContentDelete}
	if _, err := snaps.SnapshotV1().VolumeSnapshotClasses().Create(ctx, c, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = snaps.SnapshotV1().VolumeSnapshotClasses().Delete(ctx, name, metav1.DeleteOptions{}) })
}

// volumeSnapshot takes a snapshot of claim; cleanup deletes it and waits
// until it and its content are gone.
func volumeSnapshot(t *testing.T, name, class, claim string) {
	t.Helper()
	ctx := context.Background()
	s := &snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: snapv1.VolumeSnapshotSpec{VolumeSnapshotClassName: &class, Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: &claim}}}
	if _, err := snaps.SnapshotV1().VolumeSnapshots(ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteSnapshot(t, name) })
}

// deleteSnapshot deletes a VolumeSnapshot and waits until it is gone with
// its content (deletionPolicy Delete).
func deleteSnapshot(t *testing.T, name string) {
	t.Helper()
	ctx := context.Background()
	content := ""
	if s, err := snaps.SnapshotV1().VolumeSnapshots(ns).Get(ctx, name, metav1.GetOptions{}); err == nil && s.Status != nil && s.Status.BoundVolumeSnapshotContentName != nil {
		content = *s.Status.BoundVolumeSnapshotContentName
	}
	if err := snaps.SnapshotV1().VolumeSnapshots(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	eventually(t, 2*time.Minute, "VolumeSnapshot "+name+" and its content gone", func() error {
		if _, err := snaps.SnapshotV1().VolumeSnapshots(ns).Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("VolumeSnapshot still there (%v)", err)
		}
		if content == "" {
			return nil
		}
		if c, err := snaps.SnapshotV1().VolumeSnapshotContents().Get(ctx, content, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("VolumeSnapshotContent %s still there (%v): %+v", content, err, c)
		}
		return nil
	})
}

// readySnapshot waits until the VolumeSnapshot is ready and checks what
// csi-snapshotter writes: the content's handle, creation time and restore
// size, and its finalizer and the snapshot-controller's.
func readySnapshot(t *testing.T, name, driver string) (*snapv1.VolumeSnapshot, *snapv1.VolumeSnapshotContent) {
	t.Helper()
	ctx := context.Background()
	var s *snapv1.VolumeSnapshot
	eventually(t, 2*time.Minute, "VolumeSnapshot "+name+" ready", func() error {
		var err error
		if s, err = snaps.SnapshotV1().VolumeSnapshots(ns).Get(ctx, name, metav1.GetOptions{}); err != nil {
			return err
		}
		if s.Status == nil || s.Status.ReadyToUse == nil || !*s.Status.ReadyToUse {
			return fmt.Errorf("not ready: %+v; events: %s", s.Status, podEvents(name))
		}
		return nil
	})
	if s.Status.BoundVolumeSnapshotContentName == nil {
		t.Fatalf("ready but bound to no content: %+v", s.Status)
	}
	c, err := snaps.SnapshotV1().VolumeSnapshotContents().Get(ctx, *s.Status.BoundVolumeSnapshotContentName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st := c.Status
	checks := map[string]bool{
		"content driver":                       c.Spec.Driver == driver,
		"content snapshotHandle":               st != nil && st.SnapshotHandle != nil && *st.SnapshotHandle != "",
		"content creationTime":                 st != nil && st.CreationTime != nil && *st.CreationTime > 0,
		"content readyToUse":                   st != nil && st.ReadyToUse != nil && *st.ReadyToUse,
		"snapshot creationTime":                s.Status.CreationTime != nil && time.Since(s.Status.CreationTime.Time) < 10*time.Minute,
		"content restoreSize":                  st != nil && st.RestoreSize != nil && *st.RestoreSize > 0,
		"snapshot restoreSize = the content's": s.Status.RestoreSize != nil && st != nil && st.RestoreSize != nil && s.Status.RestoreSize.Value() == *st.RestoreSize,
		"csi-snapshotter's content finalizer":  hasString(c.Finalizers, "snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection"),
		"the snapshot-controller's finalizer":  hasString(s.Finalizers, "snapshot.storage.kubernetes.io/volumesnapshot-bound-protection"),
	}
	for what, ok := range checks {
		if !ok {
			t.Errorf("%s is wrong: snapshot %+v, content %+v %+v", what, s.Status, c.Spec, c.Status)
		}
	}
	return s, c
}

func hasString(list []string, v string) bool {
	for _, s := range list {
		if s == v {
			return true
		}
	}
	return false
}

// restoredClaim creates a claim of class restored from the VolumeSnapshot snap.
func restoredClaim(t *testing.T, name, class, snap string) {
	t.Helper()
	group := snapv1.GroupName
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, StorageClassName: &class,
			DataSource: &corev1.TypedLocalObjectReference{APIGroup: &group, Kind: "VolumeSnapshot", Name: snap},
			Resources:  corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("16Mi")}},
		},
	}
	if _, err := kube.CoreV1().PersistentVolumeClaims(ns).Create(context.Background(), pvc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteClaim(t, name) })
}

// snapshotRoundTrip: a claim written by a pod, a VolumeSnapshot of it that
// becomes ready with the restore size the driver reports (restoreSize, from
// the archive's path), a claim restored from it whose pod reads the data,
// and the snapshot's archive (archive(handle)) gone once the snapshot is
// deleted.
func snapshotRoundTrip(t *testing.T, class, driver, prefix string, archive func(handle string) string, restoreSize func(path string) int64) {
	snapshotClass(t, class, driver)
	src, snap, restored := prefix+"-src", prefix+"-snap", prefix+"-restored"
	claim(t, src, class)
	w := writerPod(t, src+"-writer", src)
	checkPod(t, src+"-written", claimVolume(src), `grep -q "hello from `+w.Name+`" /data/hello`)
	deletePod(t, w.Name) // nothing writes while the snapshot is taken
	volumeSnapshot(t, snap, class, src)
	s, c := readySnapshot(t, snap, driver)
	path := archive(*c.Status.SnapshotHandle)
	if _, err := os.Stat(path); err != nil {
		t.Errorf("the snapshot's archive: %v", err)
	} else if want := restoreSize(path); s.Status.RestoreSize == nil || s.Status.RestoreSize.Value() != want {
		t.Errorf("restoreSize %v, want %d", s.Status.RestoreSize, want)
	}

	restoredClaim(t, restored, class, snap)
	checkPod(t, restored+"-reader", claimVolume(restored), `grep -q "hello from `+w.Name+`" /data/hello`)
	rpv := boundPV(t, restored)
	spv := boundPV(t, src)
	if rpv.Spec.CSI.VolumeHandle == spv.Spec.CSI.VolumeHandle {
		t.Error("the restored claim is the source volume itself")
	}
	deleteClaim(t, restored)
	pvGone(t, rpv.Name)

	deleteSnapshot(t, snap)
	eventually(t, time.Minute, "the snapshot's archive removed", func() error {
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			return fmt.Errorf("%s: %v", path, err)
		}
		return nil
	})
}

// Local snapshots are taken on the volume's node: the snapshot-controller
// labels the content with it, that node's pod archives the volume.
func TestSnapshotLocal(t *testing.T) {
	storageClass(t, "e2e-snap-local", corev1.PersistentVolumeReclaimDelete, nil)
	snapshotRoundTrip(t, "e2e-snap-local", localDriver, "snap-local", func(handle string) string {
		return filepath.Join(tc.LocalRoot(), ".monocsi", "snapshots", handle+".tar.gz")
	}, func(string) int64 { return 16 << 20 }) // the source volume's size
}

// NFS snapshots are archives on the share, taken by the controller.
func TestSnapshotNFS(t *testing.T) {
	share := nfsShare(t)
	nfsClass(t, "e2e-snap-nfs", "delete")
	snapshotRoundTrip(t, "e2e-snap-nfs", nfsDriver, "snap-nfs", func(handle string) string {
		// server#share#<name>#<name>#<source>: <share>/<name>/<source>.tar.gz
		f := strings.Split(handle, "#")
		if len(f) != 5 {
			t.Fatalf("snapshot handle %q is not csi-driver-nfs's", handle)
		}
		return filepath.Join(share, f[2], f[4]+".tar.gz")
	}, func(path string) int64 { // the archive's size, as csi-driver-nfs
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	})
}

// A snapshot of a claim whose driver cannot take snapshots (a FlexVolume
// driver) never becomes ready, and says why: an Event on its content and the
// error in the VolumeSnapshot's status.
func TestSnapshotUnsupported(t *testing.T) {
	ctx := context.Background()
	if err := flexsamples.Install(tc.FlexDir, "bindmount"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(filepath.Join(tc.FlexDir, flexsamples.Dir("bindmount"))) })
	eventually(t, time.Minute, "CSIDriver "+bindDriver+" written by the controller", func() error {
		_, err := kube.StorageV1().CSIDrivers().Get(ctx, bindDriver, metav1.GetOptions{})
		return err
	})
	src := filepath.Join(tc.KubeletDir, "snap-flex-src")
	t.Cleanup(func() { os.RemoveAll(src) })
	staticPV(t, "snap-flex", "1Mi", corev1.ReadWriteOnce, &corev1.CSIPersistentVolumeSource{Driver: bindDriver, VolumeHandle: "snap-flex",
		VolumeAttributes: map[string]string{"source": src}}, nil)
	boundPV(t, "snap-flex")
	snapshotClass(t, "e2e-snap-flex", bindDriver)
	volumeSnapshot(t, "snap-flex", "e2e-snap-flex", "snap-flex")
	const why = "cannot take snapshots (it has no CREATE_DELETE_SNAPSHOT capability)"
	eventually(t, 2*time.Minute, "the refusal on the VolumeSnapshot and an Event on its content", func() error {
		s, err := snaps.SnapshotV1().VolumeSnapshots(ns).Get(ctx, "snap-flex", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if s.Status == nil || s.Status.Error == nil || s.Status.Error.Message == nil || !strings.Contains(*s.Status.Error.Message, why) {
			return fmt.Errorf("status %+v", s.Status)
		}
		if s.Status.ReadyToUse != nil && *s.Status.ReadyToUse {
			t.Fatal("a snapshot of a flex volume is ready")
		}
		if s.Status.BoundVolumeSnapshotContentName == nil {
			return fmt.Errorf("no content: %+v", s.Status)
		}
		content := *s.Status.BoundVolumeSnapshotContentName
		evs, err := kube.CoreV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{
			FieldSelector: "involvedObject.kind=VolumeSnapshotContent,involvedObject.name=" + content + ",reason=SnapshotCreationFailed"})
		if err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.Type == corev1.EventTypeWarning && strings.Contains(e.Message, why) && e.Source.Component == "csi-snapshotter "+bindDriver {
				return nil
			}
		}
		return fmt.Errorf("no SnapshotCreationFailed Event on content %s: %+v", content, evs.Items)
	})
}
