package provisioner

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v10/controller"

	"github.com/monocsi/monocsi/driver"
	"github.com/monocsi/monocsi/driver/local"
)

// recorder is a driver that creates volumes of capacity bytes and records
// every deletion: which entry point, with what request and PV information.
type recorder struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer
	capacity  int64
	deleteErr error
	deletes   []deletion
}

type deletion struct {
	via     string // "DeleteVolume" or "DeleteVolumeForPV"
	id      string
	secrets map[string]string
	pv      driver.PVInfo
}

func (r *recorder) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: local.DefaultName, VendorVersion: "test"}, nil
}

func (r *recorder) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{}, nil
}

func (r *recorder) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	return driver.ControllerCapabilities(csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME), nil
}

func (r *recorder) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	return &csi.CreateVolumeResponse{Volume: &csi.Volume{VolumeId: req.GetName(), CapacityBytes: r.capacity}}, nil
}

func (r *recorder) DeleteVolume(_ context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	r.deletes = append(r.deletes, deletion{via: "DeleteVolume", id: req.GetVolumeId(), secrets: req.GetSecrets()})
	return &csi.DeleteVolumeResponse{}, r.deleteErr
}

// pvRecorder also implements driver.DeleteWithPV.
type pvRecorder struct{ recorder }

func (r *pvRecorder) DeleteVolumeForPV(_ context.Context, req *csi.DeleteVolumeRequest, pv driver.PVInfo) (*csi.DeleteVolumeResponse, error) {
	r.deletes = append(r.deletes, deletion{via: "DeleteVolumeForPV", id: req.GetVolumeId(), secrets: req.GetSecrets(), pv: pv})
	return &csi.DeleteVolumeResponse{}, r.deleteErr
}

var _ driver.DeleteWithPV = (*pvRecorder)(nil)

// newRecording returns a controller-deployment provisioner for d, with the
// provisioner secret prov-pvc-1 in ns1.
func newRecording(t *testing.T, d driver.Driver) *Provisioner {
	t.Helper()
	client := fake.NewClientset(
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "prov-pvc-1", Namespace: "ns1"}, Data: map[string][]byte{"mountOptions": []byte("nfsvers=3")}},
	)
	p, err := New(context.Background(), client, Options{Driver: d})
	if err != nil {
		t.Fatal(err)
	}
	withCaches(t, client, p)
	return p
}

var secretParams = map[string]string{
	"csi.storage.k8s.io/provisioner-secret-name":      "prov-${pvc.name}",
	"csi.storage.k8s.io/provisioner-secret-namespace": "${pvc.namespace}",
}

// A volume smaller than the claim is deleted again, as it would be from its
// PV: with the class's mount options (the PV's-to-be) and the provisioner
// secret.
func TestProvisionRollbackDeletesWithPVMountOptions(t *testing.T) {
	d := &pvRecorder{recorder{capacity: 1}}
	p := newRecording(t, d)
	o := options(p, secretParams)
	o.SelectedNode = nil
	o.StorageClass.MountOptions = []string{"nfsvers=4.1", "noatime"}
	pv, state, err := p.Provision(context.Background(), o)
	if pv != nil || err == nil || !strings.Contains(err.Error(), "1 bytes") || state != controller.ProvisioningFinished {
		t.Fatalf("Provision of a too small volume: pv=%v state=%v err=%v; want an error, finished", pv, state, err)
	}
	want := []deletion{{via: "DeleteVolumeForPV", id: "pvc-uid-1", secrets: map[string]string{"mountOptions": "nfsvers=3"},
		pv: driver.PVInfo{MountOptions: []string{"nfsvers=4.1", "noatime"}}}}
	if diff := cmp.Diff(want, d.deletes, cmp.AllowUnexported(deletion{})); diff != "" {
		t.Errorf("rollback deletions (-want +got):\n%s", diff)
	}

	// The deletion fails too: the library must retry the claim.
	d.deletes, d.deleteErr = nil, errors.New("server gone")
	if _, state, err := p.Provision(context.Background(), o); state != controller.ProvisioningInBackground || err == nil || !strings.Contains(err.Error(), "server gone") {
		t.Errorf("rollback whose deletion fails: state=%v err=%v; want InBackground naming the deletion's error", state, err)
	}
	if len(d.deletes) != 1 || d.deletes[0].via != "DeleteVolumeForPV" {
		t.Errorf("deletions %+v, want one through DeleteVolumeForPV", d.deletes)
	}
}

// Delete hands the PV's mount options to a driver that takes them, and calls
// plain DeleteVolume, as external-provisioner does, on one that does not.
func TestDeleteChoosesEntryPoint(t *testing.T) {
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "pvc-uid-1", Annotations: map[string]string{annDeletionName: "prov-pvc-1", annDeletionNS: "ns1"}},
		Spec: corev1.PersistentVolumeSpec{
			MountOptions:           []string{"nfsvers=4.1"},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: local.DefaultName, VolumeHandle: "vol-1"}},
		},
	}
	secrets := map[string]string{"mountOptions": "nfsvers=3"}

	withPV := &pvRecorder{}
	if err := newRecording(t, withPV).Delete(context.Background(), pv); err != nil {
		t.Fatal(err)
	}
	want := []deletion{{via: "DeleteVolumeForPV", id: "vol-1", secrets: secrets, pv: driver.PVInfo{MountOptions: []string{"nfsvers=4.1"}}}}
	if diff := cmp.Diff(want, withPV.deletes, cmp.AllowUnexported(deletion{})); diff != "" {
		t.Errorf("driver with DeleteVolumeForPV (-want +got):\n%s", diff)
	}

	plain := &recorder{}
	if err := newRecording(t, plain).Delete(context.Background(), pv); err != nil {
		t.Fatal(err)
	}
	want = []deletion{{via: "DeleteVolume", id: "vol-1", secrets: secrets}}
	if diff := cmp.Diff(want, plain.deletes, cmp.AllowUnexported(deletion{})); diff != "" {
		t.Errorf("plain driver (-want +got):\n%s", diff)
	}
}
