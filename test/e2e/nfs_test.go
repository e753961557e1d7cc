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
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The NFS server is the test cluster's emulation (this kernel has no NFS):
// 127.0.0.1:/exports/e2e is the host directory nfsShare returns.
const (
	nfsDriver = "nfs.csi.monocsi.io"
	nfsServer = "127.0.0.1"
	nfsExport = "/exports/e2e"
)

func nfsShare(t *testing.T) string {
	dir := filepath.Join(tc.NFSRoot(), nfsServer, nfsExport)
	if err := os.MkdirAll(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	return dir
}

// nfsClass creates an Immediate class of the nfs driver whose volumes are
// <namespace>/<claim> on the share.
func nfsClass(t *testing.T, name, onDelete string) {
	t.Helper()
	mode, reclaim := storagev1.VolumeBindingImmediate, corev1.PersistentVolumeReclaimDelete
	sc := &storagev1.StorageClass{
		ObjectMeta:  metav1.ObjectMeta{Name: name},
		Provisioner: nfsDriver,
		Parameters: map[string]string{"server": nfsServer, "share": nfsExport, "onDelete": onDelete,
			"subDir": "${pvc.metadata.namespace}/${pvc.metadata.name}", "mountPermissions": "0777"},
		MountOptions:      []string{"nfsvers=4.1"},
		ReclaimPolicy:     &reclaim,
		VolumeBindingMode: &mode,
	}
	ctx := context.Background()
	if _, err := kube.StorageV1().StorageClasses().Create(ctx, sc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = kube.StorageV1().StorageClasses().Delete(ctx, name, metav1.DeleteOptions{}) })
}

// A dynamic NFS claim with a templated subDir: the directory named after
// the claim appears on the server, the pod's file lands in it, and deleting
// the claim removes, keeps or archives it as the class says.
func TestNFSDynamicVolumes(t *testing.T) {
	share := nfsShare(t)
	for _, onDelete := range []string{"delete", "retain", "archive"} {
		t.Run(onDelete, func(t *testing.T) {
			class, name := "e2e-nfs-"+onDelete, "nfs-"+onDelete
			nfsClass(t, class, onDelete)
			pvc := claim(t, name, class)
			pv := boundPV(t, name)
			handle := nfsServer + "#" + strings.Trim(nfsExport, "/") + "#" + ns + "/" + name + "#pvc-" + string(pvc.UID)
			if onDelete != "delete" {
				handle += "#" + onDelete
			}
			checks := map[string]bool{
				"spec.csi.driver":                         pv.Spec.CSI != nil && pv.Spec.CSI.Driver == nfsDriver,
				"volumeHandle in csi-driver-nfs's format": pv.Spec.CSI != nil && pv.Spec.CSI.VolumeHandle == handle,
				"subDir attribute":                        pv.Spec.CSI != nil && pv.Spec.CSI.VolumeAttributes["subDir"] == ns+"/"+name,
				"mountOptions from the class":             slices.Equal(pv.Spec.MountOptions, []string{"nfsvers=4.1"}),
				"no node affinity":                        pv.Spec.NodeAffinity == nil,
				"capacity = request":                      pv.Spec.Capacity.Storage().Cmp(resource.MustParse("16Mi")) == 0,
			}
			for what, ok := range checks {
				if !ok {
					t.Errorf("PV %s: %s is wrong: %+v", pv.Name, what, pv.Spec)
				}
			}
			dir := filepath.Join(share, ns, name)
			if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o777 {
				t.Fatalf("the claim's directory on the server: %v %v (want mode 0777)", fi, err)
			}
			pod := writerPod(t, name+"-writer", name)
			eventually(t, 30*time.Second, "the pod's file on the server", func() error {
				b, err := os.ReadFile(filepath.Join(dir, "hello"))
				if err == nil && string(b) != "hello from "+pod.Name+"\n" {
					err = fmt.Errorf("content %q", b)
				}
				return err
			})
			deletePod(t, pod.Name)
			if m := mountsOf(string(pod.UID)); len(m) > 0 {
				t.Errorf("mounts left after the pod was deleted: %v", m)
			}
			deleteClaim(t, name)
			pvGone(t, pv.Name)
			_, err := os.Stat(dir)
			switch onDelete {
			case "delete":
				if !os.IsNotExist(err) {
					t.Errorf("directory %s still exists after the claim was deleted: %v", dir, err)
				}
			case "retain":
				if err != nil {
					t.Errorf("retained directory %s: %v", dir, err)
				}
			case "archive":
				if b, err := os.ReadFile(filepath.Join(share, "archived-"+ns, name, "hello")); err != nil || !strings.HasPrefix(string(b), "hello") {
					t.Errorf("archived data: %q %v", b, err)
				}
			}
		})
	}
}

// Volumes made without the provisioner: a static PV in the seed's style
// (driver, a free-form handle, attributes server and share), one in
// csi-driver-nfs's handle format, and an inline volume in a pod.
func TestNFSStaticAndInlineVolumes(t *testing.T) {
	share := nfsShare(t)
	static := filepath.Join(share, "static")
	if err := os.MkdirAll(static, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(static, "hello"), []byte("pre-existing"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, handle string
		attrs        map[string]string
	}{
		{"nfs-seed", "nfs-server.example/exports/static", map[string]string{"server": nfsServer, "share": nfsExport + "/static"}},
		{"nfs-upstream", nfsServer + "#" + strings.Trim(nfsExport, "/") + "#static#", map[string]string{"server": nfsServer, "share": nfsExport, "subdir": "static"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			staticPV(t, tc.name, "1Gi", corev1.ReadWriteMany, &corev1.CSIPersistentVolumeSource{Driver: nfsDriver, VolumeHandle: tc.handle, VolumeAttributes: tc.attrs}, nil)
			boundPV(t, tc.name)
			pod := readerPod(t, tc.name+"-reader", claimVolume(tc.name))
			eventually(t, 30*time.Second, "the pod read the server's file", func() error {
				b, err := os.ReadFile(filepath.Join(static, "read-by-"+pod.Name))
				if err == nil && string(b) != "pre-existing" {
					err = fmt.Errorf("content %q", b)
				}
				return err
			})
			deletePod(t, pod.Name)
			if m := mountsOf(string(pod.UID)); len(m) > 0 {
				t.Errorf("mounts left after the pod was deleted: %v", m)
			}
		})
	}
	t.Run("inline", func(t *testing.T) {
		pod := readerPod(t, "nfs-inline-reader", corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{Driver: nfsDriver,
			VolumeAttributes: map[string]string{"server": nfsServer, "share": nfsExport, "subDir": "static"}}})
		eventually(t, 30*time.Second, "the inline volume's pod read the server's file", func() error {
			_, err := os.Stat(filepath.Join(static, "read-by-"+pod.Name))
			return err
		})
		deletePod(t, pod.Name)
		if m := mountsOf(string(pod.UID)); len(m) > 0 {
			t.Errorf("mounts left after the pod was deleted: %v", m)
		}
	})
}
