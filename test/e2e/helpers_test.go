package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/monocsi/monocsi/test/cluster"
)

const (
	localDriver = "local.csi.monocsi.io"
	topologyKey = "topology.monocsi.io/node"
	ns          = "default"
)

// eventually polls f every 250 ms until it returns nil or limit passes.
func eventually(t *testing.T, limit time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s: %v", what, limit, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func createLocalVolume(t *testing.T, name string) {
	t.Helper()
	if err := tc.CreateLocalVolume(context.Background(), name); err != nil {
		t.Fatal(err)
	}
}

// staticClaim creates a PV for an existing local volume, pinned to the node,
// and a claim bound to it.
func staticClaim(t *testing.T, name string) {
	t.Helper()
	staticPV(t, name, "1Mi", corev1.ReadWriteOnce, &corev1.CSIPersistentVolumeSource{Driver: localDriver, VolumeHandle: name},
		&corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
			MatchExpressions: []corev1.NodeSelectorRequirement{{Key: topologyKey, Operator: corev1.NodeSelectorOpIn, Values: []string{cluster.NodeName}}},
		}}}})
}

// staticPV creates a PV (reclaim Retain) and a claim of the same name bound
// to it; cleanup deletes both and waits until the PV is gone.
func staticPV(t *testing.T, name, size string, mode corev1.PersistentVolumeAccessMode, src *corev1.CSIPersistentVolumeSource, affinity *corev1.VolumeNodeAffinity) {
	t.Helper()
	ctx := context.Background()
	modes := []corev1.PersistentVolumeAccessMode{mode}
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)},
			AccessModes:                   modes,
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			ClaimRef:                      &corev1.ObjectReference{Namespace: ns, Name: name},
			PersistentVolumeSource:        corev1.PersistentVolumeSource{CSI: src},
			NodeAffinity:                  affinity,
		},
	}
	if _, err := kube.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = kube.CoreV1().PersistentVolumes().Delete(ctx, name, metav1.DeleteOptions{})
		pvGone(t, name)
	})
	empty := ""
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: modes, StorageClassName: &empty, VolumeName: name,
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)}},
		},
	}
	if _, err := kube.CoreV1().PersistentVolumeClaims(ns).Create(ctx, pvc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteClaim(t, name) })
}

func pvGone(t *testing.T, name string) {
	t.Helper()
	eventually(t, 2*time.Minute, "PV "+name+" deleted", func() error {
		_, err := kube.CoreV1().PersistentVolumes().Get(context.Background(), name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("PV still there: %v", err)
	})
}

func claimVolume(claim string) corev1.VolumeSource {
	return corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}
}

// writerPod runs busybox with the claim at /data: it appends a line to
// /data/log every second after writing /data/hello.
func writerPod(t *testing.T, name, claim string) *corev1.Pod {
	t.Helper()
	return runningPod(t, name, claimVolume(claim), `echo "hello from `+name+`" > /data/hello; while true; do date >> /data/log; sleep 1; done`)
}

// readerPod copies /data/hello to /data/read-by-<pod name> and sleeps.
func readerPod(t *testing.T, name string, src corev1.VolumeSource) *corev1.Pod {
	t.Helper()
	return runningPod(t, name, src, "cat /data/hello > /data/read-by-"+name+"; sleep 3600")
}

// busyboxPod is a pod running script in busybox with src at /data.
func busyboxPod(name string, src corev1.VolumeSource, script string) *corev1.Pod {
	grace := int64(1)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			HostNetwork:                   true,
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name: "main", Image: "localhost/busybox:local", ImagePullPolicy: corev1.PullNever,
				Command:      []string{"sh", "-c", script},
				VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}},
			}},
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: src}},
		},
	}
}

// runningPod starts a busybox pod and waits until it runs; it is deleted at cleanup.
func runningPod(t *testing.T, name string, src corev1.VolumeSource, script string) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	created, err := kube.CoreV1().Pods(ns).Create(ctx, busyboxPod(name, src, script), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deletePod(t, name) })
	eventually(t, 2*time.Minute, "pod "+name+" running", func() error {
		p, err := kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase != corev1.PodRunning {
			return fmt.Errorf("phase %s; %s", p.Status.Phase, podEvents(name))
		}
		return nil
	})
	return created
}

// checkPod runs script in a pod with src at /data and requires it to
// succeed; the pod is deleted afterwards.
func checkPod(t *testing.T, name string, src corev1.VolumeSource, script string) {
	t.Helper()
	ctx := context.Background()
	pod := busyboxPod(name, src, script)
	pod.Spec.RestartPolicy = corev1.RestartPolicyNever
	if _, err := kube.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer deletePod(t, name)
	eventually(t, 2*time.Minute, "pod "+name+" done", func() error {
		p, err := kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		switch p.Status.Phase {
		case corev1.PodSucceeded:
			return nil
		case corev1.PodFailed:
			t.Fatalf("pod %s failed: %s", name, podEvents(name))
		}
		return fmt.Errorf("phase %v; %s", p.Status.Phase, podEvents(name))
	})
}

func podEvents(name string) string {
	evs, err := kube.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, e := range evs.Items {
		out = append(out, e.Reason+": "+e.Message)
	}
	return strings.Join(out, "; ")
}

// deletePod deletes a pod and waits until it is gone.
func deletePod(t *testing.T, name string) {
	t.Helper()
	ctx := context.Background()
	err := kube.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Minute, "pod "+name+" gone", func() error {
		_, err := kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there: %v", err)
	})
}

// mountsOf lists the mount points under the kubelet's pods directory that
// belong to the pod with the given UID.
func mountsOf(uid string) []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	prefix := filepath.Join(tc.KubeletDir, "pods", uid) + "/"
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], prefix) {
			out = append(out, f[4])
		}
	}
	return out
}

func readHostFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	return string(b), err
}
