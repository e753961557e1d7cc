package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// blockClaim creates a volumeMode: Block claim of size in class.
func blockClaim(t *testing.T, name, class, size string) {
	t.Helper()
	block := corev1.PersistentVolumeBlock
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: &class,
			VolumeMode:       &block,
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)}},
		},
	}
	if _, err := kube.CoreV1().PersistentVolumeClaims(ns).Create(context.Background(), pvc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteClaim(t, name) })
}

// blockPod runs script in busybox with the claim as the device /dev/xvda.
func blockPod(t *testing.T, name, claim, script string, wait corev1.PodPhase) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	pod := busyboxPod(name, claimVolume(claim), script)
	pod.Spec.Containers[0].VolumeMounts = nil
	pod.Spec.Containers[0].VolumeDevices = []corev1.VolumeDevice{{Name: "data", DevicePath: "/dev/xvda"}}
	if wait == corev1.PodSucceeded {
		pod.Spec.RestartPolicy = corev1.RestartPolicyNever
	}
	created, err := kube.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deletePod(t, name) })
	eventually(t, 2*time.Minute, "pod "+name+" "+string(wait), func() error {
		p, err := kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase == corev1.PodFailed {
			t.Fatalf("pod %s failed: %s", name, podEvents(name))
		}
		if p.Status.Phase != wait {
			return fmt.Errorf("phase %s; %s", p.Status.Phase, podEvents(name))
		}
		return nil
	})
	return created
}

// hostLoops lists the loop devices attached to the volume's file, with
// their sizes. The file is matched by its name: the path sysfs shows is
// the node pod's (/var/lib/monocsi/local/<volume>), not the host's.
func hostLoops(file string) map[string]int64 {
	out := map[string]int64{}
	links, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range links {
		b, err := os.ReadFile(f)
		back, _ := strings.CutSuffix(strings.TrimSpace(string(b)), " (deleted)")
		if err != nil || !strings.HasSuffix(back, "/"+filepath.Base(file)) {
			continue
		}
		dir := filepath.Dir(filepath.Dir(f))
		s, _ := os.ReadFile(filepath.Join(dir, "size"))
		n, _ := strconv.ParseInt(strings.TrimSpace(string(s)), 10, 64)
		out[filepath.Base(dir)] = n * 512
	}
	return out
}

// TestBlockLocal: a volumeMode: Block claim of the local driver. A pod
// writes to the raw device; the data is in the sparse file on the host;
// the node pod restarts under it (the device stays attached and in use);
// the claim grows while in use (file and device); a second pod reads the
// data back from the grown device; when the pods are gone no loop device
// or mount is left, and deleting the claim removes the file.
func TestBlockLocal(t *testing.T) {
	eventually(t, time.Minute, "driver registered", driverRegistered)
	expandable(t, "e2e-block", localDriver, nil, storagev1.VolumeBindingWaitForFirstConsumer)
	const name = "e2e-block"
	blockClaim(t, name, "e2e-block", "16Mi")
	writer := blockPod(t, name+"-writer", name,
		`printf 'head of e2e-block' | dd of=/dev/xvda conv=fsync && printf 'tail of e2e-block' | dd of=/dev/xvda bs=1M seek=15 conv=fsync && sleep 3600`,
		corev1.PodRunning)
	pv := boundPV(t, name)
	if pv.Spec.VolumeMode == nil || *pv.Spec.VolumeMode != corev1.PersistentVolumeBlock {
		t.Fatalf("PV volumeMode %v, want Block", pv.Spec.VolumeMode)
	}
	file := filepath.Join(tc.LocalRoot(), pv.Spec.CSI.VolumeHandle)
	eventually(t, 30*time.Second, "the pod's writes in the volume's file", func() error {
		b, err := os.ReadFile(file)
		switch {
		case err != nil:
			return err
		case len(b) != 16<<20:
			return fmt.Errorf("file is %d bytes, want exactly 16Mi", len(b))
		case string(b[:17]) != "head of e2e-block" || string(b[15<<20:15<<20+17]) != "tail of e2e-block":
			return fmt.Errorf("data not there yet")
		}
		return nil
	})
	if l := hostLoops(file); len(l) != 1 {
		t.Fatalf("loop devices of %s: %v, want one", file, l)
	}

	restartNodePod(t)
	if l := hostLoops(file); len(l) != 1 {
		t.Fatalf("after the node pod's restart, loop devices of %s: %v, want the one in use", file, l)
	}
	if p, err := kube.CoreV1().Pods(ns).Get(context.Background(), writer.Name, metav1.GetOptions{}); err != nil || p.Status.Phase != corev1.PodRunning {
		t.Fatalf("the writer after the restart: %v", err)
	}

	if err := request(name, "32Mi"); err != nil {
		t.Fatal(err)
	}
	resized(t, name, "32Mi")
	eventually(t, time.Minute, "file and device grown", func() error {
		fi, err := os.Stat(file)
		if err != nil || fi.Size() != 32<<20 {
			return fmt.Errorf("file: %v, %v", fi, err)
		}
		for dev, n := range hostLoops(file) {
			if n != 32<<20 {
				return fmt.Errorf("%s has %d bytes", dev, n)
			}
		}
		return nil
	})
	deletePod(t, writer.Name)
	eventually(t, 30*time.Second, "no loop device or mount of the pod", func() error {
		if l := hostLoops(file); len(l) > 0 {
			return fmt.Errorf("loop devices left: %v", l)
		}
		if m := mountsOf(string(writer.UID)); len(m) > 0 {
			return fmt.Errorf("mounts left: %v", m)
		}
		return nil
	})

	blockPod(t, name+"-reader", name,
		`test "$(dd if=/dev/xvda bs=17 count=1 2>/dev/null)" = 'head of e2e-block' && `+
			`test "$(dd if=/dev/xvda bs=1M skip=15 count=1 2>/dev/null | head -c 17)" = 'tail of e2e-block' && `+
			`dd if=/dev/xvda of=/dev/null bs=1M skip=31 count=1 && test "$(dd if=/dev/xvda of=/dev/null bs=1M skip=32 count=1 2>&1 | grep -c '0+0 records in')" = 1`,
		corev1.PodSucceeded)
	deletePod(t, name+"-reader")
	eventually(t, 30*time.Second, "no loop device after the reader", func() error {
		if l := hostLoops(file); len(l) > 0 {
			return fmt.Errorf("loop devices left: %v", l)
		}
		return nil
	})
	deleteClaim(t, name)
	pvGone(t, pv.Name)
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Errorf("the volume's file is still there after the claim was deleted: %v", err)
	}
}
