package kube

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
)

const selected = "volume.kubernetes.io/selected-node"

var everything = labels.Everything()

func claim(name, node string) *corev1.PersistentVolumeClaim {
	c := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns"}}
	if node != "" {
		c.Annotations = map[string]string{selected: node}
	}
	return c
}

func mine(obj runtime.Object) bool {
	c, ok := obj.(*corev1.PersistentVolumeClaim)
	return ok && c.Annotations[selected] == "me"
}

// The filter drops what it does not keep, and turns an object that leaves
// it into a delete, only for objects it handed on.
func TestFilterEvents(t *testing.T) {
	fw := watch.NewFake()
	lw := &cache.ListWatch{
		ListWithContextFunc: func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			return &corev1.PersistentVolumeClaimList{ListMeta: metav1.ListMeta{ResourceVersion: "7"},
				Items: []corev1.PersistentVolumeClaim{*claim("a", "me"), *claim("b", "other"), *claim("c", "")}}, nil
		},
		WatchFuncWithContext: func(context.Context, metav1.ListOptions) (watch.Interface, error) { return fw, nil },
	}
	f := NewFilter(lw, nil, mine)
	list, err := f.List(metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l := list.(*corev1.PersistentVolumeClaimList)
	if len(l.Items) != 1 || l.Items[0].Name != "a" || l.ResourceVersion != "7" {
		t.Fatalf("list kept %v (rv %s), want only a (rv 7)", l.Items, l.ResourceVersion)
	}
	w, err := f.Watch(metav1.ListOptions{ResourceVersion: "7"})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	in := []watch.Event{
		{Type: watch.Added, Object: claim("d", "other")},    // dropped
		{Type: watch.Added, Object: claim("e", "me")},       // added
		{Type: watch.Modified, Object: claim("a", "other")}, // leaves: deleted
		{Type: watch.Modified, Object: claim("b", "other")}, // dropped
		{Type: watch.Modified, Object: claim("b", "me")},    // enters: an update the informer takes as an add
		{Type: watch.Deleted, Object: claim("c", "")},       // never handed on: dropped
		{Type: watch.Modified, Object: claim("a", "other")}, // gone already: dropped
		{Type: watch.Deleted, Object: claim("e", "me")},     // deleted
		{Type: watch.Bookmark, Object: claim("", "")},       // bookmarks pass
	}
	want := []string{"ADDED e", "DELETED a", "MODIFIED b", "DELETED e", "BOOKMARK "}
	go func() {
		for _, e := range in {
			fw.Action(e.Type, e.Object)
		}
	}()
	var got []string
	for len(got) < len(want) {
		select {
		case e := <-w.ResultChan():
			got = append(got, fmt.Sprintf("%s %s", e.Type, e.Object.(*corev1.PersistentVolumeClaim).Name))
		case <-time.After(5 * time.Second):
			t.Fatalf("got %v, want %v", got, want)
		}
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("events (-want +got):\n%s", d)
	}

	// A streamed list (client-go's default against a real API server) starts
	// afresh: its initial events replace the store.
	fw = watch.NewFake()
	send := true
	w2, err := f.Watch(metav1.ListOptions{SendInitialEvents: &send})
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Stop()
	go func() {
		fw.Action(watch.Modified, claim("b", "other")) // b was handed on before, not in this stream: dropped
		fw.Action(watch.Added, claim("f", "me"))
		fw.Action(watch.Modified, claim("f", "other"))
	}()
	want, got = []string{"ADDED f", "DELETED f"}, nil
	for len(got) < len(want) {
		select {
		case e := <-w2.ResultChan():
			got = append(got, fmt.Sprintf("%s %s", e.Type, e.Object.(*corev1.PersistentVolumeClaim).Name))
		case <-time.After(5 * time.Second):
			t.Fatalf("got %v, want %v", got, want)
		}
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("streamed list events (-want +got):\n%s", d)
	}
}

// handlerLog records what an informer's handler sees.
type handlerLog struct {
	mu     sync.Mutex
	events []string
}

func (h *handlerLog) add(what string, obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.events = append(h.events, what+" "+obj.(*corev1.PersistentVolumeClaim).Name)
}

func (h *handlerLog) has(e string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Contains(h.events, e)
}

func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A filtered informer of the shared factory holds only the kept claims,
// stripped; a claim entering the filter is added, one leaving it deleted.
func TestFilteredInformer(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mf := []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}
	a := claim("a", "me")
	a.ManagedFields = mf
	client := fake.NewClientset(a, claim("b", "other"))
	inf := NewInformers(ctx, client)
	if err := inf.FilterClaims(func(c *corev1.PersistentVolumeClaim) bool { return mine(c) }); err != nil {
		t.Fatal(err)
	}
	informer := inf.Core().V1().PersistentVolumeClaims().Informer()
	lister := inf.Core().V1().PersistentVolumeClaims().Lister()
	var log handlerLog
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { log.add("add", o) },
		UpdateFunc: func(_, o any) { log.add("update", o) },
		DeleteFunc: func(o any) { log.add("delete", o) },
	}); err != nil {
		t.Fatal(err)
	}
	inf.Start()
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		t.Fatal("not synced")
	}
	names := func() []string {
		cs, _ := lister.List(everything)
		var n []string
		for _, c := range cs {
			n = append(n, c.Name)
		}
		slices.Sort(n)
		return n
	}
	if got := names(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("store holds %v, want [a]", got)
	}
	if c, _ := lister.PersistentVolumeClaims("ns").Get("a"); c.ManagedFields != nil {
		t.Errorf("cached claim kept managedFields")
	}
	update := func(c *corev1.PersistentVolumeClaim) {
		if _, err := client.CoreV1().PersistentVolumeClaims("ns").Update(ctx, c, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	update(claim("b", "me"))    // enters
	update(claim("a", "other")) // leaves
	eventually(t, "b added and a deleted", func() bool { return log.has("add b") && log.has("delete a") })
	if got := names(); !slices.Equal(got, []string{"b"}) {
		t.Errorf("store holds %v, want [b]", got)
	}
	if _, err := client.CoreV1().PersistentVolumeClaims("ns").Create(ctx, claim("c", "other"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().PersistentVolumeClaims("ns").Create(ctx, claim("d", "me"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "d added", func() bool { return log.has("add d") })
	if log.has("add c") || log.has("delete c") {
		t.Errorf("another node's claim reached the handler: %v", log.events)
	}
	// A filter set after its informer exists would not apply: an error.
	if err := inf.FilterClaims(func(*corev1.PersistentVolumeClaim) bool { return true }); err == nil {
		t.Error("FilterClaims after the informer was requested: no error")
	}
}

func TestStrip(t *testing.T) {
	meta := func() metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: "x", ResourceVersion: "3", Labels: map[string]string{"l": "v"},
			Annotations:   map[string]string{LastApplied: "{}", "keep": "me"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}}
	}
	stripped := metav1.ObjectMeta{Name: "x", ResourceVersion: "3", Labels: map[string]string{"l": "v"}, Annotations: map[string]string{"keep": "me"}}
	claimMeta := meta()
	claimMeta.ManagedFields = nil
	for _, tc := range []struct {
		in, want runtime.Object
	}{
		{&corev1.PersistentVolumeClaim{ObjectMeta: meta(), Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound,
			Conditions: []corev1.PersistentVolumeClaimCondition{{Type: "Resizing"}}, AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}}},
			&corev1.PersistentVolumeClaim{ObjectMeta: claimMeta, Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound,
				Conditions: []corev1.PersistentVolumeClaimCondition{{Type: "Resizing"}}}}},
		{&corev1.PersistentVolume{ObjectMeta: meta(), Spec: corev1.PersistentVolumeSpec{StorageClassName: "sc"},
			Status: corev1.PersistentVolumeStatus{Phase: corev1.VolumeReleased, Message: "m"}},
			&corev1.PersistentVolume{ObjectMeta: stripped, Spec: corev1.PersistentVolumeSpec{StorageClassName: "sc"},
				Status: corev1.PersistentVolumeStatus{Phase: corev1.VolumeReleased}}},
		{&corev1.Node{ObjectMeta: meta(), Status: corev1.NodeStatus{Images: []corev1.ContainerImage{{Names: []string{"i"}}}}},
			&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "x", ResourceVersion: "3", Labels: map[string]string{"l": "v"}}}},
		{&storagev1.StorageClass{ObjectMeta: meta(), Provisioner: "p"}, &storagev1.StorageClass{ObjectMeta: stripped, Provisioner: "p"}},
		{&storagev1.CSINode{ObjectMeta: meta()}, &storagev1.CSINode{ObjectMeta: stripped}},
		{&storagev1.VolumeAttachment{ObjectMeta: meta(), Status: storagev1.VolumeAttachmentStatus{Attached: true}},
			&storagev1.VolumeAttachment{ObjectMeta: stripped, Status: storagev1.VolumeAttachmentStatus{Attached: true}}},
	} {
		orig := tc.in.DeepCopyObject()
		got, err := Strip(tc.in)
		if err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff(tc.want, got); d != "" {
			t.Errorf("%T (-want +got):\n%s", tc.in, d)
		}
		if d := cmp.Diff(orig, tc.in); d != "" {
			t.Errorf("%T: Strip changed its input:\n%s", tc.in, d)
		}
		again, _ := Strip(got)
		if d := cmp.Diff(got, again); d != "" {
			t.Errorf("%T: Strip is not idempotent:\n%s", tc.in, d)
		}
	}
}

// A list is read page by page from a consistent snapshot, whatever the
// reflector asked (a whole list from the watch cache), and kept items of
// every page make one list.
func TestFilterPages(t *testing.T) {
	var asked []metav1.ListOptions
	lw := &cache.ListWatch{
		ListWithContextFunc: func(_ context.Context, o metav1.ListOptions) (runtime.Object, error) {
			asked = append(asked, o)
			page := map[string]*corev1.PersistentVolumeClaimList{
				"":   {ListMeta: metav1.ListMeta{ResourceVersion: "9", Continue: "p2"}, Items: []corev1.PersistentVolumeClaim{*claim("a", "me"), *claim("b", "x")}},
				"p2": {ListMeta: metav1.ListMeta{ResourceVersion: "9", Continue: "p3"}, Items: []corev1.PersistentVolumeClaim{*claim("c", "x")}},
				"p3": {ListMeta: metav1.ListMeta{ResourceVersion: "9"}, Items: []corev1.PersistentVolumeClaim{*claim("d", "me")}},
			}[o.Continue]
			return page.DeepCopy(), nil
		},
		WatchFuncWithContext: func(context.Context, metav1.ListOptions) (watch.Interface, error) { return watch.NewFake(), nil },
	}
	list, err := NewFilter(lw, nil, mine).ListWithContext(context.Background(), metav1.ListOptions{ResourceVersion: "0", Limit: 500})
	if err != nil {
		t.Fatal(err)
	}
	l := list.(*corev1.PersistentVolumeClaimList)
	var names []string
	for _, c := range l.Items {
		names = append(names, c.Name)
	}
	if !slices.Equal(names, []string{"a", "d"}) || l.ResourceVersion != "9" || l.Continue != "" {
		t.Errorf("list %v rv %q continue %q; want [a d] at 9, complete", names, l.ResourceVersion, l.Continue)
	}
	if len(asked) != 3 || asked[0].ResourceVersion != "" || asked[0].Limit != PageSize || asked[2].Continue != "p3" {
		t.Errorf("pages asked: %+v", asked)
	}
}

// A filter whose keep reads other caches lists only once they are filled.
func TestFilterAfter(t *testing.T) {
	lw := &cache.ListWatch{
		ListWithContextFunc: func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			return &corev1.PersistentVolumeClaimList{Items: []corev1.PersistentVolumeClaim{*claim("a", "me")}}, nil
		},
		WatchFuncWithContext: func(context.Context, metav1.ListOptions) (watch.Interface, error) { return watch.NewFake(), nil },
	}
	var filled atomic.Bool
	f := NewFilter(lw, nil, mine)
	f.After(filled.Load)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := f.ListWithContext(ctx, metav1.ListOptions{}); err == nil {
		t.Fatal("listed before the caches it reads were filled")
	}
	time.AfterFunc(200*time.Millisecond, func() { filled.Store(true) })
	list, err := f.ListWithContext(context.Background(), metav1.ListOptions{})
	if err != nil || len(list.(*corev1.PersistentVolumeClaimList).Items) != 1 {
		t.Fatalf("list once filled: %v, %v", list, err)
	}
}
