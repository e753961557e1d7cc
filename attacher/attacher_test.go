package attacher

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// noPublish is a driver that requires attach but has no
// PUBLISH_UNPUBLISH_VOLUME: external-attacher only marks its attachments.
type noPublish struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer
}

func (noPublish) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	return &csi.ControllerGetCapabilitiesResponse{}, nil
}

func TestMarksAttachedWithoutPublishCapability(t *testing.T) {
	const drv = "x.example.com"
	pvName := "pv-1"
	client := fake.NewClientset(
		&corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: pvName}, Spec: corev1.PersistentVolumeSpec{
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: drv, VolumeHandle: "h"}}}},
		&storagev1.CSINode{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: storagev1.CSINodeSpec{Drivers: []storagev1.CSINodeDriver{{Name: drv, NodeID: "node-id-1"}}}},
		&storagev1.VolumeAttachment{ObjectMeta: metav1.ObjectMeta{Name: "va-1"}, Spec: storagev1.VolumeAttachmentSpec{
			Attacher: drv, NodeName: "n1", Source: storagev1.VolumeAttachmentSource{PersistentVolumeName: &pvName}}},
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := New(client)
	a.Add(drv, noPublish{})
	go a.Run(ctx, 1, nil)
	deadline := time.Now().Add(10 * time.Second)
	for {
		va, err := client.StorageV1().VolumeAttachments().Get(ctx, "va-1", metav1.GetOptions{})
		if err == nil && va.Status.Attached {
			if !slices.Contains(va.Finalizers, Finalizer(drv)) || va.Annotations[annNodeID] != "node-id-1" {
				t.Errorf("attached without finalizer or node ID annotation: %+v", va.ObjectMeta)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never marked attached: %+v %v", va, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	pv, _ := client.CoreV1().PersistentVolumes().Get(ctx, pvName, metav1.GetOptions{})
	if !slices.Contains(pv.Finalizers, Finalizer(drv)) {
		t.Errorf("PV finalizers %v, want %s", pv.Finalizers, Finalizer(drv))
	}
}

func TestCapabilityFromPV(t *testing.T) {
	block := corev1.PersistentVolumeBlock
	for _, tc := range []struct {
		modes []corev1.PersistentVolumeAccessMode
		block bool
		want  csi.VolumeCapability_AccessMode_Mode
	}{
		{[]corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, false, csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		{[]corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany}, false, csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY},
		{[]corev1.PersistentVolumeAccessMode{corev1.ReadWriteMany}, true, csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER},
	} {
		pv := &corev1.PersistentVolume{Spec: corev1.PersistentVolumeSpec{AccessModes: tc.modes,
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{FSType: "ext4"}}}}
		if tc.block {
			pv.Spec.VolumeMode = &block
		}
		c := capability(pv)
		if c.GetAccessMode().GetMode() != tc.want || (c.GetBlock() != nil) != tc.block || !tc.block && c.GetMount().GetFsType() != "ext4" {
			t.Errorf("%v block=%v: %v", tc.modes, tc.block, c)
		}
	}
}

// slowPublish blocks in ControllerPublishVolume until released.
type slowPublish struct {
	noPublish
	entered, release chan struct{}
}

func (slowPublish) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: []*csi.ControllerServiceCapability{{Type: &csi.ControllerServiceCapability_Rpc{
		Rpc: &csi.ControllerServiceCapability_RPC{Type: csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME}}}}}, nil
}

func (s slowPublish) ControllerPublishVolume(context.Context, *csi.ControllerPublishVolumeRequest) (*csi.ControllerPublishVolumeResponse, error) {
	close(s.entered)
	<-s.release // ignores its context, as a driver stuck in I/O would
	return &csi.ControllerPublishVolumeResponse{}, nil
}

// TestRunWaitsForWorkers: Run returns only when no worker is inside a driver
// call, because the controller releases its Lease right after.
func TestRunWaitsForWorkers(t *testing.T) {
	const drv = "x.example.com"
	pvName := "pv-1"
	client := fake.NewClientset(
		&corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: pvName}, Spec: corev1.PersistentVolumeSpec{
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: drv, VolumeHandle: "h"}}}},
		&storagev1.CSINode{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: storagev1.CSINodeSpec{Drivers: []storagev1.CSINodeDriver{{Name: drv, NodeID: "node-id-1"}}}},
		&storagev1.VolumeAttachment{ObjectMeta: metav1.ObjectMeta{Name: "va-1"}, Spec: storagev1.VolumeAttachmentSpec{
			Attacher: drv, NodeName: "n1", Source: storagev1.VolumeAttachmentSource{PersistentVolumeName: &pvName}}},
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d := slowPublish{entered: make(chan struct{}), release: make(chan struct{})}
	a := New(client)
	a.Add(drv, d)
	synced := make(chan struct{})
	returned := make(chan struct{})
	go func() { a.Run(ctx, 2, func() { close(synced) }); close(returned) }()
	select {
	case <-synced:
	case <-time.After(10 * time.Second):
		t.Fatal("synced was never called")
	}
	select {
	case <-d.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("ControllerPublishVolume was never called")
	}
	cancel()
	select {
	case <-returned:
		t.Fatal("Run returned while a worker was inside ControllerPublishVolume")
	case <-time.After(200 * time.Millisecond):
	}
	close(d.release)
	select {
	case <-returned:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the call did")
	}
}
