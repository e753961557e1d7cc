package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/monocsi/monocsi/test/cluster"
)

// capacityOf is the node's CSIStorageCapacity object of a local class.
func capacityOf(class string) (*storagev1.CSIStorageCapacity, error) {
	l, err := kube.StorageV1().CSIStorageCapacities("monocsi").List(context.Background(), metav1.ListOptions{
		LabelSelector: "csi.storage.k8s.io/drivername=" + localDriver})
	if err != nil {
		return nil, err
	}
	var found []*storagev1.CSIStorageCapacity
	for i, o := range l.Items {
		if o.StorageClassName == class {
			found = append(found, &l.Items[i])
		}
	}
	if len(found) != 1 {
		return nil, fmt.Errorf("%d objects for class %s, want 1: %+v", len(found), class, l.Items)
	}
	return found[0], nil
}

// hostFree is the free space of the local driver's root, as the driver sees it.
func hostFree(t *testing.T) (free, total int64) {
	var st unix.Statfs_t
	if err := unix.Statfs(tc.LocalRoot(), &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize, int64(st.Blocks) * st.Bsize
}

// The node publishes a CSIStorageCapacity object per local class (its free
// space, its topology segment, owned by its pod), the CSIDriver object says
// storageCapacity, the object follows the free space after a volume is
// created and written, and goes with its class.
func TestCapacityLocal(t *testing.T) {
	ctx := context.Background()
	eventually(t, time.Minute, "CSIDriver storageCapacity", func() error {
		d, err := kube.StorageV1().CSIDrivers().Get(ctx, localDriver, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if d.Spec.StorageCapacity == nil || !*d.Spec.StorageCapacity {
			return fmt.Errorf("storageCapacity %v", d.Spec.StorageCapacity)
		}
		return nil
	})
	var o *storagev1.CSIStorageCapacity
	eventually(t, time.Minute, "a CSIStorageCapacity object for monocsi-local", func() (err error) {
		o, err = capacityOf("monocsi-local")
		return err
	})
	free, total := hostFree(t)
	t.Logf("published %s for monocsi-local; the host has %d of %d bytes free", o.Capacity, free, total)
	if o.Capacity == nil || o.Capacity.Value() <= 0 || o.Capacity.Value() > total || abs(o.Capacity.Value()-free) > 2<<30 {
		t.Errorf("capacity %v, want about the %d bytes free", o.Capacity, free)
	}
	if o.NodeTopology == nil || len(o.NodeTopology.MatchLabels) != 1 || o.NodeTopology.MatchLabels[topologyKey] != cluster.NodeName {
		t.Errorf("nodeTopology %+v, want %s=%s", o.NodeTopology, topologyKey, cluster.NodeName)
	}
	if o.Labels["csi.storage.k8s.io/managed-by"] != "external-provisioner-"+cluster.NodeName {
		t.Errorf("labels %v", o.Labels)
	}
	if len(o.OwnerReferences) != 1 || o.OwnerReferences[0].Kind != "Pod" {
		t.Errorf("owners %+v, want the node's pod", o.OwnerReferences)
	} else if p, err := kube.CoreV1().Pods("monocsi").Get(ctx, o.OwnerReferences[0].Name, metav1.GetOptions{}); err != nil || p.UID != o.OwnerReferences[0].UID {
		t.Errorf("owner %+v is not a running pod: %v", o.OwnerReferences[0], err)
	}

	// A volume created and filled with 256 MiB: the published free space
	// drops by about as much.
	before := o.Capacity.Value()
	// 512 Mi: room for the data where sizes are enforced.
	class := "monocsi-local"
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "e2e-cap", Namespace: ns}, Spec: corev1.PersistentVolumeClaimSpec{
		AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, StorageClassName: &class,
		Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("512Mi")}}}}
	if _, err := kube.CoreV1().PersistentVolumeClaims(ns).Create(ctx, pvc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteClaim(t, "e2e-cap") })
	runningPod(t, "e2e-cap-filler", claimVolume("e2e-cap"), "dd if=/dev/zero of=/data/fill bs=1M count=256 && sync && sleep 3600")
	boundPV(t, "e2e-cap")
	start := time.Now()
	eventually(t, 3*time.Minute, "the published capacity dropping by the volume's data", func() error {
		o, err := capacityOf("monocsi-local")
		if err != nil {
			return err
		}
		if d := before - o.Capacity.Value(); d < 200<<20 {
			return fmt.Errorf("capacity %s, %d bytes less than before", o.Capacity, d)
		}
		return nil
	})
	t.Logf("the capacity dropped %s after the pod started", time.Since(start).Round(time.Second))

	// A class of its own: its object appears and goes with it.
	reclaim, mode := corev1.PersistentVolumeReclaimDelete, storagev1.VolumeBindingWaitForFirstConsumer
	sc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "e2e-cap-class"}, Provisioner: localDriver, ReclaimPolicy: &reclaim, VolumeBindingMode: &mode}
	if _, err := kube.StorageV1().StorageClasses().Create(ctx, sc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "an object for a new class", func() error { _, err := capacityOf(sc.Name); return err })
	if err := kube.StorageV1().StorageClasses().Delete(ctx, sc.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the class's object gone", func() error {
		if o, err := capacityOf(sc.Name); err == nil {
			return fmt.Errorf("still there: %s", o.Name)
		}
		return nil
	})
}

func abs(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}

// A claim larger than the node's free space: the scheduler keeps its pod
// Pending with its capacity message, and the provisioner is never asked (no
// Provisioning/ProvisioningFailed/Reschedule loop).
func TestCapacityTooLargeStaysPending(t *testing.T) {
	ctx := context.Background()
	eventually(t, time.Minute, "a CSIStorageCapacity object for monocsi-local", func() error { _, err := capacityOf("monocsi-local"); return err })
	class := "monocsi-local"
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "e2e-cap-huge", Namespace: ns}, Spec: corev1.PersistentVolumeClaimSpec{
		AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, StorageClassName: &class,
		Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1000Ti")}}}}
	if _, err := kube.CoreV1().PersistentVolumeClaims(ns).Create(ctx, pvc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteClaim(t, pvc.Name) })
	pod := busyboxPod("e2e-cap-huge", claimVolume(pvc.Name), "sleep 3600")
	if _, err := kube.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deletePod(t, pod.Name) })
	eventually(t, time.Minute, "the scheduler's capacity message", func() error {
		if ev := podEvents(pod.Name); !strings.Contains(ev, "did not have enough free storage") {
			return fmt.Errorf("events: %s", ev)
		}
		return nil
	})
	time.Sleep(20 * time.Second) // time for a loop to show
	p, err := kube.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Status.Phase != corev1.PodPending || p.Spec.NodeName != "" {
		t.Errorf("pod %s on %q, want Pending unscheduled", p.Status.Phase, p.Spec.NodeName)
	}
	c, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, pvc.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sel := c.Annotations["volume.kubernetes.io/selected-node"]; sel != "" || c.Status.Phase != corev1.ClaimPending {
		t.Errorf("claim %s with selected node %q, want Pending with none", c.Status.Phase, sel)
	}
	evs, err := kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.kind=PersistentVolumeClaim,involvedObject.name=" + pvc.Name})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs.Items {
		if e.Reason == "Provisioning" || e.Reason == "ProvisioningFailed" || e.Source.Component == localDriver {
			t.Errorf("the provisioner was asked: %s %s (x%d)", e.Reason, e.Message, e.Count)
		}
	}
}
