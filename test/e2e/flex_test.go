package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/monocsi/monocsi/test/flexsamples"
)

const (
	loopDriver = "loopdev.monocsi.flex.monocsi.io"
	bindDriver = "bindmount.monocsi.flex.monocsi.io"
)

// FlexVolume executables dropped into a running node's FlexVolume directory
// become CSI drivers: registered with the kubelet, with CSIDriver objects;
// the attach-capable one goes through monocsi's attacher and keeps data
// across pods; the other serves inline volumes; removing an executable
// unregisters its driver.
func TestFlexDrivers(t *testing.T) {
	ctx := context.Background()
	if err := flexsamples.Install(tc.FlexDir, "loopdev", "bindmount"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.RemoveAll(filepath.Join(tc.FlexDir, flexsamples.Dir("loopdev")))
		os.RemoveAll(filepath.Join(tc.FlexDir, flexsamples.Dir("bindmount")))
	})
	eventually(t, time.Minute, "both flex drivers in CSINode", func() error {
		return inCSINode(true, loopDriver, bindDriver)
	})
	for name, attach := range map[string]bool{loopDriver: true, bindDriver: false} {
		d, err := kube.StorageV1().CSIDrivers().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("CSIDriver %s: %v", name, err)
		}
		if d.Spec.AttachRequired == nil || *d.Spec.AttachRequired != attach || d.Spec.PodInfoOnMount == nil || !*d.Spec.PodInfoOnMount {
			t.Errorf("CSIDriver %s: attachRequired %v podInfoOnMount %v; want attach %v (from init) and pod info", name, d.Spec.AttachRequired, d.Spec.PodInfoOnMount, attach)
		}
	}

	t.Run("attach", func(t *testing.T) {
		backing := filepath.Join(tc.FlexDir, flexsamples.Dir("loopdev"), "data")
		staticPV(t, "flex-loop", "32Mi", corev1.ReadWriteOnce, &corev1.CSIPersistentVolumeSource{Driver: loopDriver, VolumeHandle: "flex-loop",
			FSType: "ext4", VolumeAttributes: map[string]string{"dir": backing, "size": "32Mi"}}, nil)
		boundPV(t, "flex-loop")
		writer := writerPod(t, "flex-loop-writer", "flex-loop")
		va := attachmentOf(t, "flex-loop")
		if !va.Status.Attached || !strings.HasPrefix(va.Status.AttachmentMetadata["device"], "/dev/loop") {
			t.Errorf("VolumeAttachment %s: attached %v, metadata %v; want attached with a loop device", va.Name, va.Status.Attached, va.Status.AttachmentMetadata)
		}
		fin := "external-attacher/" + loopDriver
		if !slices.Contains(va.Finalizers, fin) {
			t.Errorf("VolumeAttachment finalizers %v, want %s", va.Finalizers, fin)
		}
		if pv, err := kube.CoreV1().PersistentVolumes().Get(ctx, "flex-loop", metav1.GetOptions{}); err != nil || !slices.Contains(pv.Finalizers, fin) {
			t.Errorf("PV finalizers: %v %v; want %s", pv, err, fin)
		}
		if dev := loopOf(t, filepath.Join(backing, "flex-loop.img")); dev != va.Status.AttachmentMetadata["device"] {
			t.Errorf("the host's loop device over the backing file is %q, the attachment says %q", dev, va.Status.AttachmentMetadata["device"])
		}
		time.Sleep(2 * time.Second) // the writer has written
		deletePod(t, writer.Name)
		checkPod(t, "flex-loop-check", claimVolume("flex-loop"),
			`grep -q "hello from flex-loop-writer" /data/hello`)
		eventually(t, 2*time.Minute, "detached: VolumeAttachment gone", func() error {
			vas, err := kube.StorageV1().VolumeAttachments().List(ctx, metav1.ListOptions{})
			if err != nil {
				return err
			}
			for _, va := range vas.Items {
				if n := va.Spec.Source.PersistentVolumeName; n != nil && *n == "flex-loop" {
					return fmt.Errorf("VolumeAttachment %s still there (attached %v)", va.Name, va.Status.Attached)
				}
			}
			return nil
		})
		if dev := loopOf(t, filepath.Join(backing, "flex-loop.img")); dev != "" {
			t.Errorf("loop device %s still set up after detach", dev)
		}
	})

	t.Run("inline", func(t *testing.T) {
		src := filepath.Join(tc.KubeletDir, "flex-e2e-src")
		t.Cleanup(func() { os.RemoveAll(src) })
		checkPod(t, "flex-inline", corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{Driver: bindDriver,
			VolumeAttributes: map[string]string{"source": src}}}, `echo inline > /data/written-by-pod`)
		if b, err := os.ReadFile(filepath.Join(src, "written-by-pod")); err != nil || string(b) != "inline\n" {
			t.Errorf("the inline volume's file in %s: %q %v", src, b, err)
		}
	})

	if err := os.RemoveAll(filepath.Join(tc.FlexDir, flexsamples.Dir("bindmount"))); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "the removed driver unregistered", func() error { return inCSINode(false, bindDriver) })
	if err := inCSINode(true, loopDriver); err != nil {
		t.Errorf("removing one driver affected the other: %v", err)
	}
}

// inCSINode checks that the node's CSINode lists (or no longer lists) drivers.
func inCSINode(want bool, drivers ...string) error {
	cn, err := kube.StorageV1().CSINodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		return err
	}
	var have []string
	for _, n := range cn.Items {
		for _, d := range n.Spec.Drivers {
			have = append(have, d.Name)
		}
	}
	for _, d := range drivers {
		if slices.Contains(have, d) != want {
			return fmt.Errorf("CSINode drivers %v; want %s listed: %v", have, d, want)
		}
	}
	return nil
}

func attachmentOf(t *testing.T, pv string) storagev1.VolumeAttachment {
	t.Helper()
	var found storagev1.VolumeAttachment
	eventually(t, time.Minute, "VolumeAttachment of "+pv+" attached", func() error {
		vas, err := kube.StorageV1().VolumeAttachments().List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, va := range vas.Items {
			if n := va.Spec.Source.PersistentVolumeName; n != nil && *n == pv {
				found = va
				if !va.Status.Attached {
					return fmt.Errorf("not attached yet: %+v", va.Status)
				}
				return nil
			}
		}
		return fmt.Errorf("no VolumeAttachment")
	})
	return found
}

// loopOf is the loop device over file on the host, or "".
func loopOf(t *testing.T, file string) string {
	out, err := exec.Command("losetup", "-j", file).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup -j %s: %v: %s", file, err, out)
	}
	dev, _, _ := strings.Cut(strings.TrimSpace(string(out)), ":")
	return dev
}
