package resizer

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/monocsi/monocsi/driver"
	"github.com/monocsi/monocsi/internal/kube"
)

const drv = "x.example.com"

// fakeDriver expands as told: each call takes the next reply (the last one
// repeats).
type fakeDriver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer
	mu      sync.Mutex
	replies []reply
	calls   []int64
}

type reply struct {
	err        error
	nodeExpand bool
}

func (f *fakeDriver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{}, nil
}

func (f *fakeDriver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	return driver.ControllerCapabilities(csi.ControllerServiceCapability_RPC_EXPAND_VOLUME), nil
}

func (f *fakeDriver) ControllerExpandVolume(_ context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, req.GetCapacityRange().GetRequiredBytes())
	r := reply{}
	if len(f.replies) > 0 {
		r = f.replies[0]
		if len(f.replies) > 1 {
			f.replies = f.replies[1:]
		}
	}
	if r.err != nil {
		return nil, r.err
	}
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: req.GetCapacityRange().GetRequiredBytes(), NodeExpansionRequired: r.nodeExpand}, nil
}

func (f *fakeDriver) Calls() []int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// objects are a bound claim of have that requests want, and its PV of pvSize.
func objects(have, want, pvSize string) (*corev1.PersistentVolumeClaim, *corev1.PersistentVolume) {
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "c", Namespace: "ns", UID: "uid-c", ResourceVersion: "1"},
		Spec: corev1.PersistentVolumeClaimSpec{VolumeName: "pv-c", AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(want)}}},
		Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound,
			Capacity: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(have)}},
	}
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "pv-c", ResourceVersion: "1"},
		Spec: corev1.PersistentVolumeSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Capacity:    corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(pvSize)},
			ClaimRef:    &corev1.ObjectReference{Namespace: "ns", Name: "c", UID: "uid-c"},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver: drv, VolumeHandle: "vol-1"}},
		},
	}
	return pvc, pv
}

// newClient is a fake clientset whose claim and PV patches behave as the API
// server's: a resourceVersion in the patch must match (else Conflict), and
// every write gives a new one (client-go's fake keeps it unchanged, which
// makes every update look like a resync).
func newClient(objs ...runtime.Object) *fake.Clientset {
	client := fake.NewClientset(objs...)
	var rv atomic.Int64
	rv.Store(100)
	for _, res := range []string{"persistentvolumeclaims", "persistentvolumes"} {
		client.PrependReactor("patch", res, func(a k8stesting.Action) (bool, runtime.Object, error) {
			pa := a.(k8stesting.PatchAction)
			gvr := pa.GetResource()
			cur, err := client.Tracker().Get(gvr, pa.GetNamespace(), pa.GetName())
			if err != nil {
				return true, nil, err
			}
			var meta struct {
				Metadata struct {
					ResourceVersion string `json:"resourceVersion"`
				} `json:"metadata"`
			}
			if err := json.Unmarshal(pa.GetPatch(), &meta); err != nil {
				return true, nil, err
			}
			acc, _ := apimeta.Accessor(cur)
			if want := meta.Metadata.ResourceVersion; want != "" && want != acc.GetResourceVersion() {
				return true, nil, apierrors.NewConflict(gvr.GroupResource(), pa.GetName(), fmt.Errorf("resourceVersion %s, not %s", acc.GetResourceVersion(), want))
			}
			js, _ := json.Marshal(cur)
			merged, err := jsonpatch.MergePatch(js, pa.GetPatch())
			if err != nil {
				return true, nil, err
			}
			out := reflect.New(reflect.TypeOf(cur).Elem()).Interface().(runtime.Object)
			if err := json.Unmarshal(merged, out); err != nil {
				return true, nil, err
			}
			oacc, _ := apimeta.Accessor(out)
			oacc.SetResourceVersion(strconv.FormatInt(rv.Add(1), 10))
			return true, out, client.Tracker().Update(gvr, out, pa.GetNamespace())
		})
	}
	return client
}

// start runs a resizer of d on client until the test ends.
func start(t *testing.T, client *fake.Clientset, d *fakeDriver) *Resizer {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	r := New(client, kube.NewInformers(ctx, client), nil)
	r.Add(drv, d)
	go func() { defer close(done); r.Run(ctx, 2) }()
	return r
}

// waitFor polls until ok holds for the claim and PV, or fails the test.
func waitFor(t *testing.T, client *fake.Clientset, what string, ok func(*corev1.PersistentVolumeClaim, *corev1.PersistentVolume) bool) (*corev1.PersistentVolumeClaim, *corev1.PersistentVolume) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		pvc, err1 := client.CoreV1().PersistentVolumeClaims("ns").Get(context.Background(), "c", metav1.GetOptions{})
		pv, err2 := client.CoreV1().PersistentVolumes().Get(context.Background(), "pv-c", metav1.GetOptions{})
		if err1 == nil && err2 == nil && ok(pvc, pv) {
			return pvc, pv
		}
		if time.Now().After(deadline) {
			t.Fatalf("never %s: claim status %+v, PV capacity %v (%v %v)", what, pvc.Status, pv.Spec.Capacity, err1, err2)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitEvents waits for the events of these reasons on the claim, in order.
func waitEvents(t *testing.T, client *fake.Clientset, reasons ...string) []corev1.Event {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		list, _ := client.CoreV1().Events("ns").List(context.Background(), metav1.ListOptions{})
		var got []string
		for _, e := range list.Items {
			got = append(got, e.Reason)
		}
		all := true
		for _, r := range reasons {
			all = all && slices.Contains(got, r)
		}
		if all {
			return list.Items
		}
		if time.Now().After(deadline) {
			t.Fatalf("events %v, want %v", got, reasons)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func size(l corev1.ResourceList) string {
	q, ok := l[corev1.ResourceStorage]
	if !ok {
		return ""
	}
	return q.String()
}

func condition(pvc *corev1.PersistentVolumeClaim, t corev1.PersistentVolumeClaimConditionType) *corev1.PersistentVolumeClaimCondition {
	for i, c := range pvc.Status.Conditions {
		if c.Type == t {
			return &pvc.Status.Conditions[i]
		}
	}
	return nil
}

func TestGrow(t *testing.T) {
	pvc, pv := objects("1Gi", "2Gi", "1Gi")
	client := newClient(pvc, pv)
	d := &fakeDriver{}
	r := start(t, client, d)
	pvc, pv = waitFor(t, client, "resized", func(c *corev1.PersistentVolumeClaim, v *corev1.PersistentVolume) bool {
		return size(c.Status.Capacity) == "2Gi"
	})
	if size(pv.Spec.Capacity) != "2Gi" {
		t.Errorf("PV capacity %s, want 2Gi", size(pv.Spec.Capacity))
	}
	if size(pvc.Status.AllocatedResources) != "2Gi" || len(pvc.Status.AllocatedResourceStatuses) != 0 || len(pvc.Status.Conditions) != 0 {
		t.Errorf("claim status %+v: want allocatedResources 2Gi, no resource statuses, no conditions", pvc.Status)
	}
	waitEvents(t, client, EventResizing, EventResizeSucceeded)
	if c := d.Calls(); !slices.Equal(c, []int64{2 << 30}) {
		t.Errorf("ControllerExpandVolume calls %v, want one of 2Gi", c)
	}
	// Idempotent: running again changes nothing and calls nothing.
	if err := r.sync(context.Background(), "ns/c"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if c := d.Calls(); len(c) != 1 {
		t.Errorf("calls after a re-run: %v", c)
	}
	if list, _ := client.CoreV1().Events("ns").List(context.Background(), metav1.ListOptions{}); len(list.Items) != 2 {
		t.Errorf("%d events after a re-run, want 2", len(list.Items))
	}
}

func TestShrinkRefusedByDriver(t *testing.T) {
	// The driver's volume is larger than the request (an earlier expansion
	// it made but the PV never recorded): it refuses to shrink.
	pvc, pv := objects("1Gi", "2Gi", "1Gi")
	client := newClient(pvc, pv)
	d := &fakeDriver{replies: []reply{{err: status.Error(codes.OutOfRange, "volume has 3Gi and cannot shrink")}}}
	start(t, client, d)
	pvc, pv = waitFor(t, client, "marked infeasible", func(c *corev1.PersistentVolumeClaim, _ *corev1.PersistentVolume) bool {
		return c.Status.AllocatedResourceStatuses[corev1.ResourceStorage] == corev1.PersistentVolumeClaimControllerResizeInfeasible
	})
	if c := condition(pvc, corev1.PersistentVolumeClaimControllerResizeError); c == nil || c.Status != corev1.ConditionTrue || c.Message == "" {
		t.Errorf("conditions %+v, want ControllerResizeError with the driver's message", pvc.Status.Conditions)
	}
	if condition(pvc, corev1.PersistentVolumeClaimResizing) != nil {
		t.Errorf("still Resizing: %+v", pvc.Status.Conditions)
	}
	if size(pv.Spec.Capacity) != "1Gi" || pv.ResourceVersion != "1" {
		t.Errorf("PV changed: capacity %s, resourceVersion %s", size(pv.Spec.Capacity), pv.ResourceVersion)
	}
	if size(pvc.Status.Capacity) != "1Gi" {
		t.Errorf("claim capacity %s, want 1Gi", size(pvc.Status.Capacity))
	}
	evs := waitEvents(t, client, EventResizing, EventResizeFailed)
	for _, e := range evs {
		if e.Reason == EventResizeFailed && e.Type != corev1.EventTypeWarning {
			t.Errorf("%s event of type %s", e.Reason, e.Type)
		}
	}
	// Not retried until the claim changes.
	time.Sleep(1500 * time.Millisecond)
	if c := d.Calls(); len(c) != 1 {
		t.Errorf("an infeasible size was retried: calls %v", c)
	}
}

func TestLowerRequestAfterInfeasible(t *testing.T) {
	pvc, pv := objects("1Gi", "10Gi", "1Gi")
	client := newClient(pvc, pv)
	d := &fakeDriver{replies: []reply{{err: status.Error(codes.OutOfRange, "no room for 10Gi")}, {}}}
	start(t, client, d)
	pvc, _ = waitFor(t, client, "marked infeasible", func(c *corev1.PersistentVolumeClaim, _ *corev1.PersistentVolume) bool {
		return c.Status.AllocatedResourceStatuses[corev1.ResourceStorage] == corev1.PersistentVolumeClaimControllerResizeInfeasible
	})
	// The user lowers the request (the API allows it above status.capacity).
	pvc.Spec.Resources.Requests[corev1.ResourceStorage] = resource.MustParse("3Gi")
	if _, err := client.CoreV1().PersistentVolumeClaims("ns").Update(context.Background(), pvc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	pvc, pv = waitFor(t, client, "resized to the lower request", func(c *corev1.PersistentVolumeClaim, _ *corev1.PersistentVolume) bool {
		return size(c.Status.Capacity) == "3Gi"
	})
	if size(pv.Spec.Capacity) != "3Gi" || size(pvc.Status.AllocatedResources) != "3Gi" || condition(pvc, corev1.PersistentVolumeClaimControllerResizeError) != nil {
		t.Errorf("PV %s, claim status %+v", size(pv.Spec.Capacity), pvc.Status)
	}
	if c := d.Calls(); !slices.Equal(c, []int64{10 << 30, 3 << 30}) {
		t.Errorf("calls %v", c)
	}
}

func TestDriverFailureRetried(t *testing.T) {
	pvc, pv := objects("1Gi", "2Gi", "1Gi")
	client := newClient(pvc, pv)
	d := &fakeDriver{replies: []reply{{err: status.Error(codes.Internal, "disk on fire")}, {err: status.Error(codes.Unavailable, "busy")}, {}}}
	start(t, client, d)
	waitFor(t, client, "marked failed", func(c *corev1.PersistentVolumeClaim, _ *corev1.PersistentVolume) bool {
		cond := condition(c, corev1.PersistentVolumeClaimControllerResizeError)
		return cond != nil && c.Status.AllocatedResourceStatuses[corev1.ResourceStorage] == corev1.PersistentVolumeClaimControllerResizeInProgress
	})
	pvc, pv = waitFor(t, client, "resized after retries", func(c *corev1.PersistentVolumeClaim, _ *corev1.PersistentVolume) bool {
		return size(c.Status.Capacity) == "2Gi"
	})
	if size(pv.Spec.Capacity) != "2Gi" || len(pvc.Status.Conditions) != 0 || len(pvc.Status.AllocatedResourceStatuses) != 0 {
		t.Errorf("PV %s, claim status %+v", size(pv.Spec.Capacity), pvc.Status)
	}
	if c := d.Calls(); len(c) != 3 {
		t.Errorf("calls %v, want 3", c)
	}
	waitEvents(t, client, EventResizing, EventResizeFailed, EventResizeSucceeded)
}

func TestNodeExpansionPending(t *testing.T) {
	pvc, pv := objects("1Gi", "2Gi", "1Gi")
	client := newClient(pvc, pv)
	d := &fakeDriver{replies: []reply{{nodeExpand: true}}}
	r := start(t, client, d)
	pvc, pv = waitFor(t, client, "waiting for the node", func(c *corev1.PersistentVolumeClaim, _ *corev1.PersistentVolume) bool {
		return condition(c, corev1.PersistentVolumeClaimFileSystemResizePending) != nil
	})
	if size(pv.Spec.Capacity) != "2Gi" {
		t.Errorf("PV capacity %s, want 2Gi", size(pv.Spec.Capacity))
	}
	if size(pvc.Status.Capacity) != "1Gi" || pvc.Status.AllocatedResourceStatuses[corev1.ResourceStorage] != corev1.PersistentVolumeClaimNodeResizePending ||
		condition(pvc, corev1.PersistentVolumeClaimResizing) != nil {
		t.Errorf("claim status %+v: want capacity 1Gi (the kubelet's to change), NodeResizePending, no Resizing", pvc.Status)
	}
	waitEvents(t, client, EventResizing, EventFSResizeNeeded)
	// The kubelet's part: nothing more for the resizer to do.
	if err := r.sync(context.Background(), "ns/c"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if c := d.Calls(); len(c) != 1 {
		t.Errorf("calls %v, want 1", c)
	}
}

func TestResumeAfterPVUpdated(t *testing.T) {
	// A resizer stopped after updating the PV: the claim still says
	// ControllerResizeInProgress. The next one finishes (the driver's call
	// is idempotent) without changing the PV again.
	pvc, pv := objects("1Gi", "2Gi", "2Gi")
	pvc.Status.AllocatedResources = corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("2Gi")}
	pvc.Status.AllocatedResourceStatuses = map[corev1.ResourceName]corev1.ClaimResourceStatus{corev1.ResourceStorage: corev1.PersistentVolumeClaimControllerResizeInProgress}
	pvc.Status.Conditions = []corev1.PersistentVolumeClaimCondition{{Type: corev1.PersistentVolumeClaimResizing, Status: corev1.ConditionTrue}}
	client := newClient(pvc, pv)
	d := &fakeDriver{}
	start(t, client, d)
	pvc, pv = waitFor(t, client, "finished", func(c *corev1.PersistentVolumeClaim, _ *corev1.PersistentVolume) bool {
		return size(c.Status.Capacity) == "2Gi"
	})
	if pv.ResourceVersion != "1" || len(pvc.Status.Conditions) != 0 || len(pvc.Status.AllocatedResourceStatuses) != 0 {
		t.Errorf("PV resourceVersion %s, claim status %+v", pv.ResourceVersion, pvc.Status)
	}
}

func TestOtherDriversAndStaticSizesIgnored(t *testing.T) {
	// A claim bound to a larger PV asks for less than it has: nothing to do.
	pvc, pv := objects("5Gi", "1Gi", "5Gi")
	other, opv := objects("1Gi", "2Gi", "1Gi")
	other.Name, other.UID, other.Spec.VolumeName = "o", "uid-o", "pv-o"
	opv.Name, opv.Spec.ClaimRef = "pv-o", &corev1.ObjectReference{Namespace: "ns", Name: "o", UID: "uid-o"}
	opv.Spec.CSI.Driver = "other.example.com"
	client := newClient(pvc, pv, other, opv)
	d := &fakeDriver{}
	r := start(t, client, d)
	time.Sleep(300 * time.Millisecond)
	for _, key := range []string{"ns/c", "ns/o"} {
		if err := r.sync(context.Background(), key); err != nil {
			t.Fatal(err)
		}
	}
	if c := d.Calls(); len(c) != 0 {
		t.Errorf("calls %v, want none", c)
	}
}

// nodeOnly expands only on nodes (node EXPAND_VOLUME, no controller one).
type nodeOnly struct{ fakeDriver }

func (*nodeOnly) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	return driver.ControllerCapabilities(), nil
}

func (*nodeOnly) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return driver.NodeCapabilities(csi.NodeServiceCapability_RPC_EXPAND_VOLUME), nil
}

func TestNodeOnlyExpansion(t *testing.T) {
	// As external-resizer: no controller call; the PV takes the size and
	// the kubelet's NodeExpandVolume finishes.
	pvc, pv := objects("1Gi", "2Gi", "1Gi")
	client := newClient(pvc, pv)
	d := &nodeOnly{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	defer func() { cancel(); <-done }()
	r := New(client, kube.NewInformers(ctx, client), nil)
	r.Add(drv, d)
	go func() { defer close(done); r.Run(ctx, 1) }()
	pvc, pv = waitFor(t, client, "waiting for the node", func(c *corev1.PersistentVolumeClaim, _ *corev1.PersistentVolume) bool {
		return condition(c, corev1.PersistentVolumeClaimFileSystemResizePending) != nil
	})
	if size(pv.Spec.Capacity) != "2Gi" || pvc.Status.AllocatedResourceStatuses[corev1.ResourceStorage] != corev1.PersistentVolumeClaimNodeResizePending {
		t.Errorf("PV %s, claim status %+v", size(pv.Spec.Capacity), pvc.Status)
	}
	if c := d.Calls(); len(c) != 0 {
		t.Errorf("ControllerExpandVolume called: %v", c)
	}
}
