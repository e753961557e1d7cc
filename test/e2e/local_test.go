package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/monocsi/monocsi/test/cluster"
)

// driverRegistered checks what the kubelet writes after a successful
// registration: the CSINode entry with our topology key, and the topology
// label on the Node.
func driverRegistered() error {
	ctx := context.Background()
	cn, err := kube.StorageV1().CSINodes().Get(ctx, cluster.NodeName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	for _, d := range cn.Spec.Drivers {
		if d.Name == localDriver {
			if d.NodeID != cluster.NodeName || !slices.Contains(d.TopologyKeys, topologyKey) {
				return fmt.Errorf("CSINode entry %+v", d)
			}
			node, err := kube.CoreV1().Nodes().Get(ctx, cluster.NodeName, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if node.Labels[topologyKey] != cluster.NodeName {
				return fmt.Errorf("node label %s=%q", topologyKey, node.Labels[topologyKey])
			}
			return nil
		}
	}
	return fmt.Errorf("%s not in CSINode %s", localDriver, cluster.NodeName)
}

func TestKubeletRegistersDriver(t *testing.T) {
	eventually(t, time.Minute, "driver registered", driverRegistered)
}

// A static local PV: the pod's writes land in the volume's directory on the
// host; deleting the pod leaves no mount behind.
func TestStaticVolumeWriteAndUnmount(t *testing.T) {
	eventually(t, time.Minute, "driver registered", driverRegistered)
	createLocalVolume(t, "e2e-static")
	staticClaim(t, "e2e-static")
	pod := writerPod(t, "e2e-static-writer", "e2e-static")
	hostFile := filepath.Join(tc.LocalRoot(), "e2e-static", "hello")
	eventually(t, 30*time.Second, "file on the host", func() error {
		s, err := readHostFile(hostFile)
		if err == nil && s != "hello from e2e-static-writer\n" {
			err = fmt.Errorf("content %q", s)
		}
		return err
	})
	if len(mountsOf(string(pod.UID))) == 0 {
		t.Fatal("no mount of the pod under the kubelet directory while it runs")
	}
	deletePod(t, pod.Name)
	eventually(t, 30*time.Second, "pod mounts gone", func() error {
		if m := mountsOf(string(pod.UID)); len(m) > 0 {
			return fmt.Errorf("left: %v", m)
		}
		return nil
	})
	if s, _ := readHostFile(hostFile); s == "" {
		t.Error("data gone after the pod was deleted")
	}
}

// Restarting the monocsi node pod while a volume is in use loses no data,
// and the kubelet registers the driver again; the volume still unmounts.
func TestNodePodRestartKeepsData(t *testing.T) {
	eventually(t, time.Minute, "driver registered", driverRegistered)
	createLocalVolume(t, "e2e-restart")
	staticClaim(t, "e2e-restart")
	pod := writerPod(t, "e2e-restart-writer", "e2e-restart")
	logFile := filepath.Join(tc.LocalRoot(), "e2e-restart", "log")
	eventually(t, 30*time.Second, "writes", func() error { _, err := readHostFile(logFile); return err })

	restartNodePod(t)

	before, _ := readHostFile(logFile)
	eventually(t, 30*time.Second, "the pod keeps writing", func() error {
		now, err := readHostFile(logFile)
		if err != nil || len(now) <= len(before) {
			return fmt.Errorf("log did not grow (%d bytes): %v", len(now), err)
		}
		if !strings.HasPrefix(now, before) {
			return fmt.Errorf("earlier data changed")
		}
		return nil
	})
	deletePod(t, pod.Name)
	eventually(t, 30*time.Second, "pod mounts gone", func() error {
		if m := mountsOf(string(pod.UID)); len(m) > 0 {
			return fmt.Errorf("left: %v", m)
		}
		return nil
	})
}

// restartNodePod deletes the monocsi node pod and waits until its
// replacement is ready and registered with the kubelet.
func restartNodePod(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	pods, err := kube.CoreV1().Pods("monocsi").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=node"})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("node pods: %v %v", pods, err)
	}
	old := pods.Items[0]
	if err := kube.CoreV1().Pods("monocsi").Delete(ctx, old.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Minute, "new node pod ready", func() error {
		ps, err := kube.CoreV1().Pods("monocsi").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=node"})
		if err != nil {
			return err
		}
		for _, p := range ps.Items {
			if p.UID != old.UID && podReady(&p) {
				return nil
			}
		}
		return fmt.Errorf("not yet")
	})
	eventually(t, time.Minute, "driver registered again", driverRegistered)
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Killing the kubelet and starting it again: the driver is registered again.
// The CSINode object is deleted while the kubelet is down, so only a new
// registration can bring the entry back.
func TestKubeletRestartReregisters(t *testing.T) {
	ctx := context.Background()
	eventually(t, time.Minute, "driver registered", driverRegistered)
	if err := tc.StopKubelet(); err != nil {
		t.Fatal(err)
	}
	if err := kube.StorageV1().CSINodes().Delete(ctx, cluster.NodeName, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	if err := tc.StartKubelet(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Minute, "driver registered after the kubelet restart", driverRegistered)
}

// monocsi writes the CSIDriver object from the driver's declaration (the
// manifests carry none).
func TestCSIDriverObjectFromDeclaration(t *testing.T) {
	eventually(t, time.Minute, "CSIDriver object", func() error {
		d, err := kube.StorageV1().CSIDrivers().Get(context.Background(), localDriver, metav1.GetOptions{})
		if err != nil {
			return err
		}
		s := d.Spec
		if d.Labels["app.kubernetes.io/managed-by"] != "monocsi" || s.AttachRequired == nil || *s.AttachRequired ||
			s.FSGroupPolicy == nil || *s.FSGroupPolicy != "File" || !slices.Equal(s.VolumeLifecycleModes, []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecyclePersistent}) {
			return fmt.Errorf("CSIDriver %+v", d)
		}
		return nil
	})
}
