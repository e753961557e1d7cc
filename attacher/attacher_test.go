package attacher

import (
	"context"
	"encoding/json"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/monocsi/monocsi/internal/kube"
)

// noPublish is a driver that requires attach but has no
// PUBLISH_UNPUBLISH_VOLUME: external-attacher only marks its attachments.
type noPublish struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer
}

func (noPublish) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{}, nil
}

func (noPublish) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	return &csi.ControllerGetCapabilitiesResponse{}, nil
}

// newAttacher returns an attacher on the process-wide informers of client,
// which run until the test ends.
func newAttacher(t *testing.T, client *fake.Clientset) *Attacher {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return New(client, kube.NewInformers(ctx, client), nil)
}

func TestMarksAttachedWithoutPublishCapability(t *testing.T) {
	const drv = "x.example.com"
	pvName := "pv-1"
	client := fake.NewClientset(
		&corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: pvName}, Spec: corev1.PersistentVolumeSpec{
			AccessModes:            []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: drv, VolumeHandle: "h"}}}},
		&storagev1.CSINode{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: storagev1.CSINodeSpec{Drivers: []storagev1.CSINodeDriver{{Name: drv, NodeID: "node-id-1"}}}},
		&storagev1.VolumeAttachment{ObjectMeta: metav1.ObjectMeta{Name: "va-1"}, Spec: storagev1.VolumeAttachmentSpec{
			Attacher: drv, NodeName: "n1", Source: storagev1.VolumeAttachmentSource{PersistentVolumeName: &pvName}}},
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := newAttacher(t, client)
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
		c, err := volumeCapability(pv, false)
		if err != nil {
			t.Fatal(err)
		}
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
			AccessModes:            []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: drv, VolumeHandle: "h"}}}},
		&storagev1.CSINode{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: storagev1.CSINodeSpec{Drivers: []storagev1.CSINodeDriver{{Name: drv, NodeID: "node-id-1"}}}},
		&storagev1.VolumeAttachment{ObjectMeta: metav1.ObjectMeta{Name: "va-1"}, Spec: storagev1.VolumeAttachmentSpec{
			Attacher: drv, NodeName: "n1", Source: storagev1.VolumeAttachmentSource{PersistentVolumeName: &pvName}}},
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d := slowPublish{entered: make(chan struct{}), release: make(chan struct{})}
	a := newAttacher(t, client)
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

// flakyCaps is a driver with PUBLISH_UNPUBLISH_VOLUME whose
// ControllerGetCapabilities fails while fail is set.
type flakyCaps struct {
	noPublish
	fail                            atomic.Bool
	lookups, published, unpublished atomic.Int32
}

func (d *flakyCaps) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	d.lookups.Add(1)
	if d.fail.Load() {
		return nil, status.Error(codes.Unavailable, "driver not ready")
	}
	return slowPublish{}.ControllerGetCapabilities(context.Background(), nil)
}

func (d *flakyCaps) ControllerPublishVolume(context.Context, *csi.ControllerPublishVolumeRequest) (*csi.ControllerPublishVolumeResponse, error) {
	d.published.Add(1)
	return &csi.ControllerPublishVolumeResponse{PublishContext: map[string]string{"device": "/dev/x"}}, nil
}

func (d *flakyCaps) ControllerUnpublishVolume(context.Context, *csi.ControllerUnpublishVolumeRequest) (*csi.ControllerUnpublishVolumeResponse, error) {
	d.unpublished.Add(1)
	return &csi.ControllerUnpublishVolumeResponse{}, nil
}

// writes are the API calls that change objects.
func writes(client *fake.Clientset) []string {
	var out []string
	for _, a := range client.Actions() {
		if v := a.GetVerb(); v != "get" && v != "list" && v != "watch" {
			out = append(out, v+" "+a.GetResource().Resource+"/"+a.GetSubresource())
		}
	}
	return out
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A failed capability lookup is an error, retried: while it fails, the
// attacher neither marks a volume attached (it cannot know whether
// ControllerPublishVolume is needed) nor drops a finalizer (nor whether
// ControllerUnpublishVolume is), and writes nothing; once the driver
// answers, both go through the driver.
func TestCapabilityLookupFailureIsRetried(t *testing.T) {
	const drv = "x.example.com"
	attachPV, detachPV := "pv-attach", "pv-detach"
	fin := Finalizer(drv)
	pv := func(name string, finalizers ...string) *corev1.PersistentVolume {
		return &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: name, Finalizers: finalizers}, Spec: corev1.PersistentVolumeSpec{
			AccessModes:            []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: drv, VolumeHandle: "h-" + name}}}}
	}
	now := metav1.Now()
	client := fake.NewClientset(
		pv(attachPV), pv(detachPV, fin),
		&storagev1.CSINode{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: storagev1.CSINodeSpec{Drivers: []storagev1.CSINodeDriver{{Name: drv, NodeID: "node-id-1"}}}},
		&storagev1.VolumeAttachment{ObjectMeta: metav1.ObjectMeta{Name: "va-attach"}, Spec: storagev1.VolumeAttachmentSpec{
			Attacher: drv, NodeName: "n1", Source: storagev1.VolumeAttachmentSource{PersistentVolumeName: &attachPV}}},
		&storagev1.VolumeAttachment{
			ObjectMeta: metav1.ObjectMeta{Name: "va-detach", DeletionTimestamp: &now, Finalizers: []string{fin},
				Annotations: map[string]string{annNodeID: "node-id-1", annHandle: "h-" + detachPV}},
			Spec:   storagev1.VolumeAttachmentSpec{Attacher: drv, NodeName: "n1", Source: storagev1.VolumeAttachmentSource{PersistentVolumeName: &detachPV}},
			Status: storagev1.VolumeAttachmentStatus{Attached: true}},
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d := &flakyCaps{}
	d.fail.Store(true)
	a := newAttacher(t, client)
	a.Add(drv, d)
	done := make(chan struct{})
	go func() { a.Run(ctx, 2, nil); close(done) }()
	defer func() { cancel(); <-done }()

	// Both attachments failed, and were retried (1 s backoff), at least twice each.
	waitFor(t, "capability lookups to be retried", func() bool { return d.lookups.Load() >= 4 })
	if w := writes(client); len(w) > 0 {
		t.Errorf("the attacher wrote after failed capability lookups: %v", w)
	}
	va, _ := client.StorageV1().VolumeAttachments().Get(ctx, "va-attach", metav1.GetOptions{})
	if va.Status.Attached || len(va.Finalizers) > 0 {
		t.Errorf("attachment changed after a failed lookup: attached=%v finalizers=%v", va.Status.Attached, va.Finalizers)
	}
	if p, _ := client.CoreV1().PersistentVolumes().Get(ctx, attachPV, metav1.GetOptions{}); len(p.Finalizers) > 0 {
		t.Errorf("PV got finalizers %v after a failed lookup", p.Finalizers)
	}
	va, _ = client.StorageV1().VolumeAttachments().Get(ctx, "va-detach", metav1.GetOptions{})
	if !va.Status.Attached || !slices.Contains(va.Finalizers, fin) {
		t.Errorf("detaching attachment changed after a failed lookup: attached=%v finalizers=%v", va.Status.Attached, va.Finalizers)
	}
	if n := d.published.Load() + d.unpublished.Load(); n > 0 {
		t.Errorf("%d publish calls without capabilities", n)
	}

	d.fail.Store(false)
	waitFor(t, "the attachment to be attached through ControllerPublishVolume", func() bool {
		va, err := client.StorageV1().VolumeAttachments().Get(ctx, "va-attach", metav1.GetOptions{})
		return err == nil && va.Status.Attached && va.Status.AttachmentMetadata["device"] == "/dev/x"
	})
	waitFor(t, "the detaching attachment to lose its finalizer after ControllerUnpublishVolume", func() bool {
		va, err := client.StorageV1().VolumeAttachments().Get(ctx, "va-detach", metav1.GetOptions{})
		return err == nil && !slices.Contains(va.Finalizers, fin) && d.unpublished.Load() >= 1
	})
	if p, _ := client.CoreV1().PersistentVolumes().Get(ctx, attachPV, metav1.GetOptions{}); !slices.Contains(p.Finalizers, fin) {
		t.Errorf("attached PV's finalizers %v, want %s", p.Finalizers, fin)
	}
}

// Writes are patches of the fields the attacher owns and status updates
// (the API server keeps metadata as it is on those): an annotation the cache
// dropped (kube.Strip) is never written back, so it stays on the object.
func TestWritesArePatchesOfOwnFields(t *testing.T) {
	const drv = "x.example.com"
	pvName := "pv-1"
	applied := map[string]string{kube.LastApplied: `{"kind":"PersistentVolume"}`}
	now := metav1.Now()
	client := fake.NewClientset(
		&corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: pvName, Annotations: applied}, Spec: corev1.PersistentVolumeSpec{
			AccessModes:            []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: drv, VolumeHandle: "h"}}}},
		&corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv-gone", Annotations: applied, DeletionTimestamp: &now,
			Finalizers: []string{"kubernetes.io/pv-protection", Finalizer(drv)}}, Spec: corev1.PersistentVolumeSpec{
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: drv, VolumeHandle: "h2"}}}},
		&storagev1.CSINode{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: storagev1.CSINodeSpec{Drivers: []storagev1.CSINodeDriver{{Name: drv, NodeID: "node-id-1"}}}},
		&storagev1.VolumeAttachment{ObjectMeta: metav1.ObjectMeta{Name: "va-1", Annotations: applied}, Spec: storagev1.VolumeAttachmentSpec{
			Attacher: drv, NodeName: "n1", Source: storagev1.VolumeAttachmentSource{PersistentVolumeName: &pvName}}},
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := newAttacher(t, client)
	a.Add(drv, &flakyCaps{})
	done := make(chan struct{})
	go func() { a.Run(ctx, 1, nil); close(done) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "the attachment to be attached and the deleted PV to lose its finalizer", func() bool {
		va, err := client.StorageV1().VolumeAttachments().Get(ctx, "va-1", metav1.GetOptions{})
		gone, err2 := client.CoreV1().PersistentVolumes().Get(ctx, "pv-gone", metav1.GetOptions{})
		return err == nil && va.Status.Attached && err2 == nil && !slices.Contains(gone.Finalizers, Finalizer(drv))
	})
	pv, _ := client.CoreV1().PersistentVolumes().Get(ctx, pvName, metav1.GetOptions{})
	gone, _ := client.CoreV1().PersistentVolumes().Get(ctx, "pv-gone", metav1.GetOptions{})
	if pv.Annotations[kube.LastApplied] == "" || gone.Annotations[kube.LastApplied] == "" {
		t.Errorf("PV annotations %v and %v: want the last-applied annotation kept", pv.Annotations, gone.Annotations)
	}
	if !slices.Contains(gone.Finalizers, "kubernetes.io/pv-protection") {
		t.Errorf("deleted PV's finalizers %v: others' finalizers must stay", gone.Finalizers)
	}
	for _, act := range client.Actions() {
		switch act := act.(type) {
		case k8stesting.PatchAction:
			var p struct {
				Metadata map[string]json.RawMessage `json:"metadata"`
			}
			if err := json.Unmarshal(act.GetPatch(), &p); err != nil || act.GetPatchType() != types.MergePatchType {
				t.Errorf("patch %s %s: %v", act.GetPatchType(), act.GetPatch(), err)
				continue
			}
			var ann map[string]string
			json.Unmarshal(p.Metadata["annotations"], &ann)
			delete(ann, annNodeID)
			delete(ann, annHandle)
			delete(p.Metadata, "annotations")
			delete(p.Metadata, "finalizers")
			if len(p.Metadata) != 1 || p.Metadata["resourceVersion"] == nil || len(ann) > 0 {
				t.Errorf("patch of %s writes more than its finalizers and annotations, or lacks a resourceVersion: %s", act.GetResource().Resource, act.GetPatch())
			}
		case k8stesting.UpdateAction:
			if act.GetSubresource() != "status" {
				t.Errorf("update of %s %s from the cache", act.GetResource().Resource, act.GetSubresource())
			}
		}
	}
}

// With the controller's PV cache (only PVs with an attacher's finalizer,
// Keeps), a PV to attach is read from the API server, and enters the cache
// once it has the finalizer.
func TestAttachesPVOutsideTheCache(t *testing.T) {
	const drv = "x.example.com"
	pvName := "pv-1"
	client := fake.NewClientset(
		&corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: pvName}, Spec: corev1.PersistentVolumeSpec{
			AccessModes:            []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: drv, VolumeHandle: "h"}}}},
		&storagev1.CSINode{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: storagev1.CSINodeSpec{Drivers: []storagev1.CSINodeDriver{{Name: drv, NodeID: "node-id-1"}}}},
		&storagev1.VolumeAttachment{ObjectMeta: metav1.ObjectMeta{Name: "va-1"}, Spec: storagev1.VolumeAttachmentSpec{
			Attacher: drv, NodeName: "n1", Source: storagev1.VolumeAttachmentSource{PersistentVolumeName: &pvName}}},
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	inf := kube.NewInformers(ctx, client)
	if err := inf.FilterVolumes(Keeps); err != nil {
		t.Fatal(err)
	}
	a := New(client, inf, nil)
	d := &flakyCaps{}
	a.Add(drv, d)
	done := make(chan struct{})
	go func() { a.Run(ctx, 1, nil); close(done) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "the attachment to be attached", func() bool {
		va, err := client.StorageV1().VolumeAttachments().Get(ctx, "va-1", metav1.GetOptions{})
		return err == nil && va.Status.Attached
	})
	waitFor(t, "the PV to enter the cache with its finalizer", func() bool {
		pv, err := a.pvs.Get(pvName)
		return err == nil && slices.Contains(pv.Finalizers, Finalizer(drv))
	})
	if d.published.Load() == 0 {
		t.Error("ControllerPublishVolume was not called")
	}
}

// failingPublish fails every ControllerPublishVolume.
type failingPublish struct{ flakyCaps }

func (d *failingPublish) ControllerPublishVolume(context.Context, *csi.ControllerPublishVolumeRequest) (*csi.ControllerPublishVolumeResponse, error) {
	d.published.Add(1)
	return nil, status.Error(codes.Internal, "no such disk")
}

// A failed attach is retried with backoff (1 s, 2 s, ...): the attach error
// the attacher records does not queue the attachment again at once.
func TestFailedAttachBacksOff(t *testing.T) {
	const drv = "x.example.com"
	pvName := "pv-1"
	client := fake.NewClientset(
		&corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: pvName}, Spec: corev1.PersistentVolumeSpec{
			AccessModes:            []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: drv, VolumeHandle: "h"}}}},
		&storagev1.CSINode{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: storagev1.CSINodeSpec{Drivers: []storagev1.CSINodeDriver{{Name: drv, NodeID: "node-id-1"}}}},
		&storagev1.VolumeAttachment{ObjectMeta: metav1.ObjectMeta{Name: "va-1"}, Spec: storagev1.VolumeAttachmentSpec{
			Attacher: drv, NodeName: "n1", Source: storagev1.VolumeAttachmentSource{PersistentVolumeName: &pvName}}},
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := newAttacher(t, client)
	d := &failingPublish{}
	a.Add(drv, d)
	done := make(chan struct{})
	go func() { a.Run(ctx, 2, nil); close(done) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "the attach error to be recorded", func() bool {
		va, err := client.StorageV1().VolumeAttachments().Get(ctx, "va-1", metav1.GetOptions{})
		return err == nil && va.Status.AttachError != nil
	})
	time.Sleep(2500 * time.Millisecond)
	// The first try, then after 1 s and 2 s (+ the metadata patch's event
	// may add one): never dozens.
	if n := d.published.Load(); n > 4 {
		t.Errorf("ControllerPublishVolume called %d times in 2.5 s: the attach error requeued the attachment", n)
	}
	old := &storagev1.VolumeAttachment{ObjectMeta: metav1.ObjectMeta{ResourceVersion: "1"}}
	withErr := old.DeepCopy()
	withErr.ResourceVersion = "2"
	withErr.Status.AttachError = &storagev1.VolumeError{Message: "x"}
	if !errorOnly(old, withErr) {
		t.Error("an attach error alone counts as work")
	}
	deleted := withErr.DeepCopy()
	deleted.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	if errorOnly(old, deleted) || errorOnly(withErr, withErr) {
		t.Error("a deletion or a resync is not queued")
	}
}
