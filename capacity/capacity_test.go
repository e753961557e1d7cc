package capacity

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/monocsi/monocsi/internal/kube"
)

const drv = "local.example.com"

type fakeDriver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer
	free atomic.Int64
	reqs atomic.Pointer[csi.GetCapacityRequest]
}

func (f *fakeDriver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: "n1", AccessibleTopology: &csi.Topology{Segments: map[string]string{"topology.example.com/node": "n1"}}}, nil
}

func (f *fakeDriver) GetCapacity(_ context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	f.reqs.Store(req)
	return &csi.GetCapacityResponse{AvailableCapacity: f.free.Load()}, nil
}

func class(name, provisioner string) *storagev1.StorageClass {
	return &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Provisioner: provisioner,
		Parameters: map[string]string{"p": "v", "csi.storage.k8s.io/fstype": "ext4"}}
}

// newClient is a fake clientset that names objects from generateName, as
// the API server does.
func newClient(objs ...runtime.Object) *fake.Clientset {
	c := fake.NewClientset(objs...)
	var n atomic.Int32
	c.PrependReactor("create", "csistoragecapacities", func(a k8stesting.Action) (bool, runtime.Object, error) {
		o := a.(k8stesting.CreateAction).GetObject().(*storagev1.CSIStorageCapacity)
		if o.Name == "" && o.GenerateName != "" {
			o.Name = fmt.Sprintf("%s%d", o.GenerateName, n.Add(1))
		}
		return false, nil, nil
	})
	return c
}

func start(t *testing.T, client *fake.Clientset, d *fakeDriver) *Publisher {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	p := &Publisher{Client: client, Namespace: "monocsi", Node: "n1", Owner: PodOwner("monocsi-node-x", "pod-uid"),
		Drivers: []Driver{{Name: drv, Driver: d}}, Poll: time.Hour}
	go func() { defer close(done); p.Run(ctx, kube.NewInformers(ctx, client)) }()
	return p
}

// objects waits until the namespace holds n objects that satisfy ok.
func objects(t *testing.T, client *fake.Clientset, what string, n int, ok func(storagev1.CSIStorageCapacity) bool) []storagev1.CSIStorageCapacity {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := client.StorageV1().CSIStorageCapacities("monocsi").List(context.Background(), metav1.ListOptions{})
		good := err == nil && len(l.Items) == n
		for i := 0; good && i < len(l.Items); i++ {
			good = ok(l.Items[i])
		}
		if good {
			return l.Items
		}
		if time.Now().After(deadline) {
			t.Fatalf("never %s: %+v %v", what, l, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestPublishesPerClass(t *testing.T) {
	client := newClient(class("a", drv), class("b", drv), class("other", "nfs.example.com"))
	d := &fakeDriver{}
	d.free.Store(5 << 30)
	start(t, client, d)
	got := objects(t, client, "published for a and b", 2, func(o storagev1.CSIStorageCapacity) bool {
		return o.Capacity != nil && o.Capacity.Value() == 5<<30
	})
	classes := map[string]bool{}
	for _, o := range got {
		classes[o.StorageClassName] = true
		if o.Labels[LabelDriver] != drv || o.Labels[LabelManagedBy] != "external-provisioner-n1" {
			t.Errorf("labels %v", o.Labels)
		}
		if o.NodeTopology == nil || o.NodeTopology.MatchLabels["topology.example.com/node"] != "n1" || len(o.NodeTopology.MatchLabels) != 1 {
			t.Errorf("topology %+v", o.NodeTopology)
		}
		if len(o.OwnerReferences) != 1 || o.OwnerReferences[0].Kind != "Pod" || o.OwnerReferences[0].UID != "pod-uid" {
			t.Errorf("owners %+v", o.OwnerReferences)
		}
	}
	if !classes["a"] || !classes["b"] {
		t.Errorf("classes %v, want a and b", classes)
	}
	req := d.reqs.Load()
	if req.GetParameters()["p"] != "v" || len(req.GetParameters()) != 1 || req.GetAccessibleTopology().GetSegments()["topology.example.com/node"] != "n1" ||
		req.GetVolumeCapabilities()[0].GetMount().GetFsType() != "ext4" {
		t.Errorf("GetCapacity request %v", req)
	}
}

func TestRefreshAfterVolumeAndClassChanges(t *testing.T) {
	client := newClient(class("a", drv))
	d := &fakeDriver{}
	d.free.Store(5 << 30)
	start(t, client, d)
	objects(t, client, "published", 1, func(o storagev1.CSIStorageCapacity) bool { return o.Capacity.Value() == 5<<30 })
	// A volume is created: the next value is published at once, not at the
	// (hour-long) poll.
	d.free.Store(4 << 30)
	if _, err := client.CoreV1().PersistentVolumes().Create(context.Background(), &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	objects(t, client, "updated after a create", 1, func(o storagev1.CSIStorageCapacity) bool { return o.Capacity.Value() == 4<<30 })
	d.free.Store(5 << 30)
	if err := client.CoreV1().PersistentVolumes().Delete(context.Background(), "pv", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	objects(t, client, "updated after a delete", 1, func(o storagev1.CSIStorageCapacity) bool { return o.Capacity.Value() == 5<<30 })
	// A class deleted loses its object.
	if err := client.StorageV1().StorageClasses().Delete(context.Background(), "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	objects(t, client, "deleted with its class", 0, nil)
}

func TestAdoptsEarlierPodsObjects(t *testing.T) {
	old := &storagev1.CSIStorageCapacity{
		ObjectMeta: metav1.ObjectMeta{Name: "csisc-old", Namespace: "monocsi",
			Labels:          map[string]string{LabelDriver: drv, LabelManagedBy: ManagedBy("n1")},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: "gone", UID: "old-uid"}}},
		StorageClassName: "a",
	}
	stale := old.DeepCopy()
	stale.Name, stale.StorageClassName = "csisc-stale", "deleted-class"
	client := newClient(class("a", drv), old, stale)
	d := &fakeDriver{}
	d.free.Store(1 << 30)
	start(t, client, d)
	objects(t, client, "adopted, the stale one deleted", 1, func(o storagev1.CSIStorageCapacity) bool {
		return o.Name == "csisc-old" && o.Capacity != nil && o.Capacity.Value() == 1<<30 && o.OwnerReferences[0].UID == "pod-uid"
	})
}

func TestManagedByFitsALabel(t *testing.T) {
	long := ""
	for range 30 {
		long += "node-"
	}
	if v := ManagedBy(long); len(v) > 63 || v == ManagedBy(long+"x") {
		t.Errorf("ManagedBy(%d chars) = %q", len(long), v)
	}
}
