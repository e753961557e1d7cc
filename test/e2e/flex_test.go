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

	"github.com/monocsi/monocsi/driver/flex/supervisor"
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
	// The controller writes them (their one writer), from the executables
	// in its own --flex-dir: the node may register a driver first.
	for name, attach := range map[string]bool{loopDriver: true, bindDriver: false} {
		eventually(t, time.Minute, "CSIDriver "+name+" written by the controller", func() error {
			d, err := kube.StorageV1().CSIDrivers().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if d.Spec.AttachRequired == nil || *d.Spec.AttachRequired != attach || d.Spec.PodInfoOnMount == nil || !*d.Spec.PodInfoOnMount {
				return fmt.Errorf("attachRequired %v podInfoOnMount %v; want attach %v (from init) and pod info", d.Spec.AttachRequired, d.Spec.PodInfoOnMount, attach)
			}
			return nil
		})
	}
	noMismatch(t, loopDriver, bindDriver)

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

// noMismatch checks that no node recorded a FlexCapabilityMismatch Event on
// the drivers' CSIDriver objects: the node and the controller run the same
// executables here, so they agree with what the controller wrote.
func noMismatch(t *testing.T, drivers ...string) {
	t.Helper()
	evs, err := kube.CoreV1().Events(metav1.NamespaceDefault).List(context.Background(),
		metav1.ListOptions{FieldSelector: "reason=" + supervisor.ReasonCapabilityMismatch})
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs.Items {
		if slices.Contains(drivers, ev.InvolvedObject.Name) {
			t.Errorf("Event on CSIDriver %s: %s", ev.InvolvedObject.Name, ev.Message)
		}
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

// The bash + jq NFS script (test/flexsamples/nfsscript), a FlexVolume driver
// of the classic shape, runs where the kubelet ran it: on the host, through
// nsenter (the node runs --flex-exec=host), where bash, jq and findmnt are,
// with the NFS emulation's mount first on its PATH (--flex-path) and
// NFS_EMULATION_ROOT from the pod's environment. A static PV of its driver
// and an inline volume: the pod's file is on the emulated server's share,
// the mount is in the host's mount table while the pod runs, and deleting
// the pod unmounts it.
func TestFlexNFSScript(t *testing.T) {
	ctx := context.Background()
	driver := flexsamples.NFSScriptDriver
	if _, err := flexsamples.InstallNFSScript(tc.FlexDir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.RemoveAll(filepath.Join(tc.FlexDir, flexsamples.Dir(flexsamples.NFSScript)))
		eventually(t, time.Minute, "the NFS script's driver unregistered", func() error { return inCSINode(false, driver) })
	})
	eventually(t, time.Minute, "the NFS script's driver in CSINode", func() error { return inCSINode(true, driver) })
	eventually(t, time.Minute, "CSIDriver "+driver+" written by the controller", func() error {
		d, err := kube.StorageV1().CSIDrivers().Get(ctx, driver, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if d.Spec.AttachRequired == nil || *d.Spec.AttachRequired || !slices.Contains(d.Spec.VolumeLifecycleModes, storagev1.VolumeLifecycleEphemeral) {
			return fmt.Errorf("attachRequired %v, modes %v; want no attach (init says attach: false) and inline volumes", d.Spec.AttachRequired, d.Spec.VolumeLifecycleModes)
		}
		return nil
	})
	noMismatch(t, driver)
	const export = "/exports/flex-script"
	share := filepath.Join(tc.NFSRoot(), nfsServer, export)
	if err := os.MkdirAll(share, 0o777); err != nil {
		t.Fatal(err)
	}
	attrs := map[string]string{"server": nfsServer, "share": export, "mountOptions": "nfsvers=4.1"}

	// mounted checks the pod's volume mount in the host's mount table.
	mounted := func(t *testing.T, pod *corev1.Pod, volume string, want bool) {
		t.Helper()
		suffix := "/volumes/kubernetes.io~csi/" + volume + "/mount"
		found := slices.ContainsFunc(mountsOf(string(pod.UID)), func(m string) bool { return strings.HasSuffix(m, suffix) })
		if found != want {
			t.Errorf("pod %s: its volume %s mounted on the host: %v, want %v (the pod's mounts: %v)", pod.Name, volume, found, want, mountsOf(string(pod.UID)))
		}
	}

	t.Run("static", func(t *testing.T) {
		const name = "flex-nfs-script"
		staticPV(t, name, "1Gi", corev1.ReadWriteMany, &corev1.CSIPersistentVolumeSource{Driver: driver, VolumeHandle: name, VolumeAttributes: attrs}, nil)
		boundPV(t, name)
		pod := writerPod(t, name+"-writer", name)
		eventually(t, 30*time.Second, "the pod's file on the emulated server's share", func() error {
			b, err := os.ReadFile(filepath.Join(share, "hello"))
			if err == nil && string(b) != "hello from "+pod.Name+"\n" {
				err = fmt.Errorf("content %q", b)
			}
			return err
		})
		// The PV's name is the volume's directory under the pod.
		mounted(t, pod, name, true)
		deletePod(t, pod.Name)
		if m := mountsOf(string(pod.UID)); len(m) > 0 {
			t.Errorf("mounts left on the host after the pod was deleted: %v", m)
		}
	})

	t.Run("inline", func(t *testing.T) {
		pod := runningPod(t, "flex-nfs-script-inline", corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{Driver: driver, VolumeAttributes: attrs}},
			`echo inline > /data/written-by-inline-pod; sleep 3600`)
		eventually(t, 30*time.Second, "the inline pod's file on the emulated server's share", func() error {
			b, err := os.ReadFile(filepath.Join(share, "written-by-inline-pod"))
			if err == nil && string(b) != "inline\n" {
				err = fmt.Errorf("content %q", b)
			}
			return err
		})
		mounted(t, pod, "data", true) // an inline volume's directory is the pod's volume name
		deletePod(t, pod.Name)
		if m := mountsOf(string(pod.UID)); len(m) > 0 {
			t.Errorf("mounts left on the host after the pod was deleted: %v", m)
		}
	})
}
