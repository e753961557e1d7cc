package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// expandable creates a class of driver that allows expansion.
func expandable(t *testing.T, name, driver string, params map[string]string, mode storagev1.VolumeBindingMode) {
	t.Helper()
	reclaim, yes := corev1.PersistentVolumeReclaimDelete, true
	sc := &storagev1.StorageClass{
		ObjectMeta: metav1.ObjectMeta{Name: name}, Provisioner: driver, Parameters: params,
		ReclaimPolicy: &reclaim, VolumeBindingMode: &mode, AllowVolumeExpansion: &yes,
	}
	ctx := context.Background()
	if _, err := kube.StorageV1().StorageClasses().Create(ctx, sc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = kube.StorageV1().StorageClasses().Delete(ctx, name, metav1.DeleteOptions{}) })
}

// request sets the claim's requested size.
func request(name, size string) error {
	patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"resources": map[string]any{"requests": map[string]string{"storage": size}}}})
	_, err := kube.CoreV1().PersistentVolumeClaims(ns).Patch(context.Background(), name, types.MergePatchType, patch, metav1.PatchOptions{})
	return err
}

// resized waits until the claim and its PV say size, with the resize done:
// no resize condition, no allocatedResourceStatuses, allocatedResources size.
func resized(t *testing.T, name, size string) *corev1.PersistentVolume {
	t.Helper()
	want := resource.MustParse(size)
	var pv *corev1.PersistentVolume
	eventually(t, 2*time.Minute, "claim "+name+" resized to "+size, func() error {
		ctx := context.Background()
		pvc, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if pv, err = kube.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{}); err != nil {
			return err
		}
		st := pvc.Status
		if q := st.Capacity[corev1.ResourceStorage]; q.Cmp(want) != 0 || resizeConditions(pvc) != "" || len(st.AllocatedResourceStatuses) != 0 {
			return fmt.Errorf("claim status %+v; events: %s", st, podEvents(name))
		}
		if q := st.AllocatedResources[corev1.ResourceStorage]; q.Cmp(want) != 0 {
			return fmt.Errorf("allocatedResources %v", st.AllocatedResources)
		}
		if q := pv.Spec.Capacity[corev1.ResourceStorage]; q.Cmp(want) != 0 {
			return fmt.Errorf("PV capacity %s", q.String())
		}
		return nil
	})
	return pv
}

// resizeConditions lists the claim's resize conditions (others, such as
// the controller-manager's Unused, do not count).
func resizeConditions(pvc *corev1.PersistentVolumeClaim) string {
	var out []string
	for _, c := range pvc.Status.Conditions {
		switch c.Type {
		case corev1.PersistentVolumeClaimResizing, corev1.PersistentVolumeClaimFileSystemResizePending,
			corev1.PersistentVolumeClaimControllerResizeError, corev1.PersistentVolumeClaimNodeResizeError:
			out = append(out, string(c.Type))
		}
	}
	return strings.Join(out, ",")
}

// claimEvents are the claim's events of the given reason from source.
func claimEvents(t *testing.T, name, reason, source string) []corev1.Event {
	t.Helper()
	l, err := kube.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.kind=PersistentVolumeClaim,involvedObject.name=" + name})
	if err != nil {
		t.Fatal(err)
	}
	var out []corev1.Event
	for _, e := range l.Items {
		if e.Reason == reason && e.Source.Component == source {
			out = append(out, e)
		}
	}
	return out
}

// expandInUse grows a claim of class while a pod writes into it, checks the
// claim, the PV and the resizer's events, and that a shrink is refused.
func expandInUse(t *testing.T, driver, class, name string) {
	claim(t, name, class)
	writerPod(t, name+"-writer", name)
	pv := boundPV(t, name)
	if err := request(name, "32Mi"); err != nil {
		t.Fatal(err)
	}
	after := resized(t, name, "32Mi")
	if after.Name != pv.Name || after.Spec.CSI.VolumeHandle != pv.Spec.CSI.VolumeHandle {
		t.Errorf("another PV or volume after the resize: %s %s", after.Name, after.Spec.CSI.VolumeHandle)
	}
	source := "external-resizer " + driver
	eventually(t, 30*time.Second, "Resizing and VolumeResizeSuccessful events from "+source, func() error {
		if len(claimEvents(t, name, "Resizing", source)) == 0 || len(claimEvents(t, name, "VolumeResizeSuccessful", source)) == 0 {
			return fmt.Errorf("events: %s", podEvents(name))
		}
		return nil
	})
	// A shrink below the claim's capacity: the API server refuses it.
	err := request(name, "16Mi")
	if err == nil || !strings.Contains(err.Error(), "less than") {
		t.Errorf("shrinking the request: %v, want the API server's refusal", err)
	}
	time.Sleep(2 * time.Second)
	resized(t, name, "32Mi") // the PV is unchanged
}

// An nfs claim in use grows: PV capacity, claim status and events.
func TestResizeNFS(t *testing.T) {
	nfsShare(t)
	expandable(t, "e2e-nfs-expand", nfsDriver, map[string]string{"server": nfsServer, "share": nfsExport,
		"subDir": "${pvc.metadata.namespace}/${pvc.metadata.name}", "mountPermissions": "0777"}, storagev1.VolumeBindingImmediate)
	expandInUse(t, nfsDriver, "e2e-nfs-expand", "e2e-nfs-grow")
}

// A local claim in use grows (the node role resizes it). An expansion the
// driver refuses (more than the node's free space: RESOURCE_EXHAUSTED,
// which external-resizer retries with backoff) gives the resizer's
// VolumeResizeFailed Warning and leaves the PV and the claim's capacity as
// they were, with the size being tried in allocatedResources.
func TestResizeLocal(t *testing.T) {
	expandable(t, "e2e-local-expand", localDriver, nil, storagev1.VolumeBindingWaitForFirstConsumer)
	expandInUse(t, localDriver, "e2e-local-expand", "e2e-local-grow")

	const name = "e2e-local-grow"
	if err := request(name, "1000Ti"); err != nil {
		t.Fatal(err)
	}
	source := "external-resizer " + localDriver
	eventually(t, time.Minute, "a VolumeResizeFailed Warning", func() error {
		for _, e := range claimEvents(t, name, "VolumeResizeFailed", source) {
			if e.Type == corev1.EventTypeWarning && strings.Contains(e.Message, "free") {
				return nil
			}
		}
		return fmt.Errorf("events: %s", podEvents(name))
	})
	ctx := context.Background()
	pvc, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pv, err := kube.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if q := pv.Spec.Capacity[corev1.ResourceStorage]; q.Cmp(resource.MustParse("32Mi")) != 0 {
		t.Errorf("PV capacity %s after a refused expansion, want 32Mi", q.String())
	}
	if q := pvc.Status.Capacity[corev1.ResourceStorage]; q.Cmp(resource.MustParse("32Mi")) != 0 {
		t.Errorf("claim capacity %s after a refused expansion, want 32Mi", q.String())
	}
	if q := pvc.Status.AllocatedResources[corev1.ResourceStorage]; q.Cmp(resource.MustParse("1000Ti")) != 0 ||
		pvc.Status.AllocatedResourceStatuses[corev1.ResourceStorage] != corev1.PersistentVolumeClaimControllerResizeInProgress {
		t.Errorf("claim status %+v, want allocatedResources 1000Ti, ControllerResizeInProgress", pvc.Status)
	}
}
