package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/monocsi/monocsi/test/cluster"
)

// storageClass creates a WaitForFirstConsumer class for the local driver.
func storageClass(t *testing.T, name string, reclaim corev1.PersistentVolumeReclaimPolicy, params map[string]string) {
	t.Helper()
	classWithMode(t, name, reclaim, params, storagev1.VolumeBindingWaitForFirstConsumer)
}

func classWithMode(t *testing.T, name string, reclaim corev1.PersistentVolumeReclaimPolicy, params map[string]string, mode storagev1.VolumeBindingMode) {
	t.Helper()
	wffc := mode
	sc := &storagev1.StorageClass{
		ObjectMeta:        metav1.ObjectMeta{Name: name},
		Provisioner:       localDriver,
		Parameters:        params,
		ReclaimPolicy:     &reclaim,
		VolumeBindingMode: &wffc,
	}
	ctx := context.Background()
	if _, err := kube.StorageV1().StorageClasses().Create(ctx, sc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = kube.StorageV1().StorageClasses().Delete(ctx, name, metav1.DeleteOptions{}) })
}

func claim(t *testing.T, name, class string) *corev1.PersistentVolumeClaim {
	t.Helper()
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: &class,
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("16Mi")}},
		},
	}
	created, err := kube.CoreV1().PersistentVolumeClaims(ns).Create(context.Background(), pvc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteClaim(t, name) })
	return created
}

func deleteClaim(t *testing.T, name string) {
	ctx := context.Background()
	if err := kube.CoreV1().PersistentVolumeClaims(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
}

func boundPV(t *testing.T, claimName string) *corev1.PersistentVolume {
	t.Helper()
	ctx := context.Background()
	var pv *corev1.PersistentVolume
	eventually(t, 2*time.Minute, "claim "+claimName+" bound", func() error {
		pvc, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, claimName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if pvc.Status.Phase != corev1.ClaimBound {
			return fmt.Errorf("phase %s; events: %s", pvc.Status.Phase, podEvents(claimName))
		}
		pv, err = kube.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
		return err
	})
	return pv
}

// A dynamic claim: scheduled pod → PV pinned to the node, written like
// external-provisioner would → data written → pod and claim deleted → PV
// and directory gone.
func TestDynamicLocalVolumeLifecycle(t *testing.T) {
	ctx := context.Background()
	storageClass(t, "e2e-local", corev1.PersistentVolumeReclaimDelete, nil)
	pvc := claim(t, "e2e-dyn", "e2e-local")
	pod := writerPod(t, "e2e-dyn-writer", "e2e-dyn")
	pv := boundPV(t, "e2e-dyn")

	wantName := "pvc-" + string(pvc.UID)
	checks := map[string]bool{
		"name pvc-<claim uid>":           pv.Name == wantName,
		"spec.csi.driver":                pv.Spec.CSI != nil && pv.Spec.CSI.Driver == localDriver,
		"spec.csi.volumeHandle":          pv.Spec.CSI != nil && pv.Spec.CSI.VolumeHandle == wantName,
		"provisioned-by annotation":      pv.Annotations["pv.kubernetes.io/provisioned-by"] == localDriver,
		"provisioner identity attribute": pv.Spec.CSI != nil && strings.HasSuffix(pv.Spec.CSI.VolumeAttributes["storage.kubernetes.io/csiProvisionerIdentity"], "-"+localDriver+"-"+cluster.NodeName),
		"deletion secret annotations":    hasKey(pv.Annotations, "volume.kubernetes.io/provisioner-deletion-secret-name") && hasKey(pv.Annotations, "volume.kubernetes.io/provisioner-deletion-secret-namespace"),
		"provisioner finalizer":          slices.Contains(pv.Finalizers, "external-provisioner.volume.kubernetes.io/finalizer"),
		"reclaim Delete":                 pv.Spec.PersistentVolumeReclaimPolicy == corev1.PersistentVolumeReclaimDelete,
		"class":                          pv.Spec.StorageClassName == "e2e-local",
		"capacity = request":             pv.Spec.Capacity.Storage().Cmp(resource.MustParse("16Mi")) == 0,
		"claimRef":                       pv.Spec.ClaimRef != nil && pv.Spec.ClaimRef.UID == pvc.UID,
		"node affinity pins to the node": pinnedTo(pv, cluster.NodeName),
	}
	for what, ok := range checks {
		if !ok {
			t.Errorf("PV %s: %s is wrong: %+v", pv.Name, what, pv)
		}
	}
	dir := filepath.Join(tc.LocalRoot(), pv.Spec.CSI.VolumeHandle)
	eventually(t, 30*time.Second, "pod's file in the volume directory", func() error {
		_, err := os.Stat(filepath.Join(dir, "hello"))
		return err
	})
	deletePod(t, pod.Name)
	deleteClaim(t, "e2e-dyn")
	eventually(t, 2*time.Minute, "PV deleted", func() error {
		_, err := kube.CoreV1().PersistentVolumes().Get(ctx, pv.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("PV still there: %v", err)
	})
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("volume directory %s still exists after the PV was deleted: %v", dir, err)
	}
}

// reclaimPolicy Retain: deleting the claim keeps the PV and the directory.
func TestRetainKeepsDirectory(t *testing.T) {
	ctx := context.Background()
	storageClass(t, "e2e-retain", corev1.PersistentVolumeReclaimRetain, nil)
	claim(t, "e2e-keep", "e2e-retain")
	pod := writerPod(t, "e2e-keep-writer", "e2e-keep")
	pv := boundPV(t, "e2e-keep")
	t.Cleanup(func() { _ = kube.CoreV1().PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{}) })
	dir := filepath.Join(tc.LocalRoot(), pv.Spec.CSI.VolumeHandle)
	eventually(t, 30*time.Second, "pod's file", func() error { _, err := os.Stat(filepath.Join(dir, "hello")); return err })
	deletePod(t, pod.Name)
	deleteClaim(t, "e2e-keep")
	eventually(t, time.Minute, "PV released", func() error {
		got, err := kube.CoreV1().PersistentVolumes().Get(ctx, pv.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if got.Status.Phase != corev1.VolumeReleased {
			return fmt.Errorf("phase %s", got.Status.Phase)
		}
		return nil
	})
	time.Sleep(3 * time.Second) // give a wrong deletion the chance to happen
	if _, err := os.Stat(filepath.Join(dir, "hello")); err != nil {
		t.Errorf("Retain lost the data: %v", err)
	}
}

// A bad StorageClass parameter: ProvisioningFailed with the driver's message, no PV.
func TestBadParameterReportsEvent(t *testing.T) {
	ctx := context.Background()
	storageClass(t, "e2e-bad", corev1.PersistentVolumeReclaimDelete, map[string]string{"colour": "blue"})
	claim(t, "e2e-bad", "e2e-bad")
	grace := int64(0)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "e2e-bad-user", Namespace: ns},
		Spec: corev1.PodSpec{HostNetwork: true, TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{Name: "c", Image: "localhost/busybox:local", ImagePullPolicy: corev1.PullNever,
				Command: []string{"sleep", "3600"}, VolumeMounts: []corev1.VolumeMount{{Name: "d", MountPath: "/d"}}}},
			Volumes: []corev1.Volume{{Name: "d", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "e2e-bad"}}}}},
	}
	if _, err := kube.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deletePod(t, "e2e-bad-user") })
	eventually(t, 2*time.Minute, "ProvisioningFailed event naming the parameter", func() error {
		evs, err := kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=e2e-bad,reason=ProvisioningFailed"})
		if err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.Type == corev1.EventTypeWarning && strings.HasPrefix(e.Message, `failed to provision volume with StorageClass "e2e-bad": rpc error: code = InvalidArgument`) && strings.Contains(e.Message, `unknown parameter "colour"`) {
				return nil
			}
		}
		return fmt.Errorf("events: %s", podEvents("e2e-bad"))
	})
	pvs, err := kube.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, pv := range pvs.Items {
		if pv.Spec.ClaimRef != nil && pv.Spec.ClaimRef.Name == "e2e-bad" {
			t.Errorf("a PV was created for the bad claim: %s", pv.Name)
		}
	}
}

func hasKey(m map[string]string, k string) bool { _, ok := m[k]; return ok }

func pinnedTo(pv *corev1.PersistentVolume, node string) bool {
	if pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil || len(pv.Spec.NodeAffinity.Required.NodeSelectorTerms) != 1 {
		return false
	}
	e := pv.Spec.NodeAffinity.Required.NodeSelectorTerms[0].MatchExpressions
	return len(e) == 1 && e[0].Key == topologyKey && e[0].Operator == corev1.NodeSelectorOpIn && slices.Equal(e[0].Values, []string{node})
}

// A claim cloned from another (dataSource PersistentVolumeClaim) starts with
// the source's data; a VolumeSnapshot source is refused with a clear event.
func TestCloneAndSnapshotSource(t *testing.T) {
	ctx := context.Background()
	storageClass(t, "e2e-clone", corev1.PersistentVolumeReclaimDelete, nil)
	claim(t, "e2e-src", "e2e-clone")
	src := writerPod(t, "e2e-src-writer", "e2e-src")
	srcPV := boundPV(t, "e2e-src")
	eventually(t, 30*time.Second, "source data", func() error {
		_, err := os.Stat(filepath.Join(tc.LocalRoot(), srcPV.Spec.CSI.VolumeHandle, "hello"))
		return err
	})
	deletePod(t, src.Name) // a consistent copy: nothing writes during the clone

	withSource := func(name string, ref corev1.TypedLocalObjectReference) {
		class := "e2e-clone"
		pvc := &corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: corev1.PersistentVolumeClaimSpec{
				AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, StorageClassName: &class, DataSource: &ref,
				Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("16Mi")}},
			},
		}
		if _, err := kube.CoreV1().PersistentVolumeClaims(ns).Create(ctx, pvc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { deleteClaim(t, name) })
	}
	withSource("e2e-clone", corev1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: "e2e-src"})
	writerPod(t, "e2e-clone-user", "e2e-clone")
	clonePV := boundPV(t, "e2e-clone")
	// The clone's pod appends to the log the source's pod wrote: the clone
	// must start with the source's whole log.
	srcLog, err := os.ReadFile(filepath.Join(tc.LocalRoot(), srcPV.Spec.CSI.VolumeHandle, "log"))
	if err != nil || len(srcLog) == 0 {
		t.Fatalf("source log: %q %v", srcLog, err)
	}
	cloneLog, err := os.ReadFile(filepath.Join(tc.LocalRoot(), clonePV.Spec.CSI.VolumeHandle, "log"))
	if err != nil || !strings.HasPrefix(string(cloneLog), string(srcLog)) {
		t.Errorf("the clone does not start with the source's data:\nsource %q\nclone  %q (%v)", srcLog, cloneLog, err)
	}
	if clonePV.Spec.CSI.VolumeHandle == srcPV.Spec.CSI.VolumeHandle {
		t.Error("the clone is the source volume itself")
	}

	group := "snapshot.storage.k8s.io"
	withSource("e2e-from-snap", corev1.TypedLocalObjectReference{APIGroup: &group, Kind: "VolumeSnapshot", Name: "snap"})
	grace := int64(0)
	if _, err := kube.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "e2e-from-snap-user", Namespace: ns},
		Spec: corev1.PodSpec{HostNetwork: true, TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{Name: "c", Image: "localhost/busybox:local", ImagePullPolicy: corev1.PullNever,
				Command: []string{"sleep", "3600"}, VolumeMounts: []corev1.VolumeMount{{Name: "d", MountPath: "/d"}}}},
			Volumes: []corev1.Volume{{Name: "d", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "e2e-from-snap"}}}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deletePod(t, "e2e-from-snap-user") })
	// Restoring works (TestSnapshotLocal); a snapshot that does not exist
	// is a clear failure, retried until it does.
	eventually(t, 2*time.Minute, "ProvisioningFailed for the missing snapshot source", func() error {
		evs, err := kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=e2e-from-snap,reason=ProvisioningFailed"})
		if err != nil {
			return err
		}
		for _, e := range evs.Items {
			if strings.Contains(e.Message, "VolumeSnapshot "+ns+"/snap not found") {
				return nil
			}
		}
		return fmt.Errorf("events: %s", podEvents("e2e-from-snap"))
	})
}

// An Immediate-binding class: no pod, no scheduler; a node takes the claim
// (as external-provisioner --node-deployment-immediate-binding) and
// provisions it there.
func TestImmediateBindingLocal(t *testing.T) {
	ctx := context.Background()
	classWithMode(t, "e2e-now", corev1.PersistentVolumeReclaimDelete, nil, storagev1.VolumeBindingImmediate)
	claim(t, "e2e-now", "e2e-now")
	pv := boundPV(t, "e2e-now")
	if !pinnedTo(pv, cluster.NodeName) {
		t.Errorf("PV not pinned to the node that took it: %+v", pv.Spec.NodeAffinity)
	}
	pvc, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "e2e-now", metav1.GetOptions{})
	if err != nil || pvc.Annotations["volume.kubernetes.io/selected-node"] != cluster.NodeName {
		t.Errorf("claim not marked as taken by %s: %v %v", cluster.NodeName, pvc.Annotations, err)
	}
	dir := filepath.Join(tc.LocalRoot(), pv.Spec.CSI.VolumeHandle)
	if _, err := os.Stat(dir); err != nil {
		t.Fatal(err)
	}
	deleteClaim(t, "e2e-now")
	eventually(t, time.Minute, "PV and directory gone", func() error {
		if _, err := kube.CoreV1().PersistentVolumes().Get(ctx, pv.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("PV still there: %v", err)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			return fmt.Errorf("directory still there: %v", err)
		}
		return nil
	})
}
