package provisioner

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v10/controller"

	"github.com/monocsi/monocsi/driver/local"
	"github.com/monocsi/monocsi/internal/kube"
)

const node = "node-a"

// newLocal returns a provisioner for a real local driver in a temporary root,
// in node-deployment mode, with a fake API holding the node, its CSINode and
// the provisioner secret.
func newLocal(t *testing.T) (*Provisioner, string) {
	t.Helper()
	root := filepath.Join(t.TempDir(), "root")
	d, err := local.New(local.Config{NodeID: node, Root: root})
	if err != nil {
		t.Fatal(err)
	}
	client := fake.NewClientset(
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node, Labels: map[string]string{"topology.monocsi.io/node": node}}},
		&storagev1.CSINode{ObjectMeta: metav1.ObjectMeta{Name: node}, Spec: storagev1.CSINodeSpec{Drivers: []storagev1.CSINodeDriver{
			{Name: local.DefaultName, NodeID: node, TopologyKeys: []string{"topology.monocsi.io/node"}}}}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "prov-pvc-1", Namespace: "ns1"}, Data: map[string][]byte{"k": []byte("v")}},
	)
	p, err := New(context.Background(), client, Options{Driver: d, NodeName: node, ExtraCreateMetadata: true})
	if err != nil {
		t.Fatal(err)
	}
	withCaches(t, client, p)
	return p, root
}

// withCaches gives provisioners the caches Run would, filled from client.
func withCaches(t *testing.T, client kubernetes.Interface, provs ...*Provisioner) *kube.Informers {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	inf := kube.NewInformers(ctx, client)
	_, filled := useCaches(inf, provs)
	inf.Start()
	if !cache.WaitForCacheSync(ctx.Done(), filled...) {
		t.Fatal("caches not filled")
	}
	return inf
}

func options(p *Provisioner, params map[string]string) controller.ProvisionOptions {
	retain := corev1.PersistentVolumeReclaimRetain
	fs := corev1.PersistentVolumeFilesystem
	n, _ := p.client.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
	return controller.ProvisionOptions{
		StorageClass: &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "sc"}, Provisioner: local.DefaultName,
			Parameters: params, ReclaimPolicy: &retain, MountOptions: []string{"noatime"}},
		PVName: "pvc-uid-1",
		PVC: &corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Name: "pvc-1", Namespace: "ns1", UID: "uid-1",
				Annotations: map[string]string{annSelectedNode: node, "team": "blue"}},
			Spec: corev1.PersistentVolumeClaimSpec{
				AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				VolumeMode:  &fs,
				Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
			},
		},
		SelectedNode: n,
	}
}

// The PV must be the one external-provisioner would write for the same claim
// and class: built here field by field from its rules.
func TestProvisionedPVMatchesExternalProvisioner(t *testing.T) {
	p, root := newLocal(t)
	params := map[string]string{
		"csi.storage.k8s.io/fstype":                        "ext4",
		"csi.storage.k8s.io/provisioner-secret-name":       "prov-${pvc.name}",
		"csi.storage.k8s.io/provisioner-secret-namespace":  "${pvc.namespace}",
		"csi.storage.k8s.io/node-publish-secret-name":      "pub-${pvc.annotations['team']}",
		"csi.storage.k8s.io/node-publish-secret-namespace": "${pvc.namespace}",
	}
	got, state, err := p.Provision(context.Background(), options(p, params))
	if err != nil || state != controller.ProvisioningFinished {
		t.Fatalf("Provision: %v %v", state, err)
	}
	fs := corev1.PersistentVolumeFilesystem
	want := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "pvc-uid-1", Annotations: map[string]string{
			"volume.kubernetes.io/provisioner-deletion-secret-name":      "prov-pvc-1",
			"volume.kubernetes.io/provisioner-deletion-secret-namespace": "ns1",
		}},
		Spec: corev1.PersistentVolumeSpec{
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: *resource.NewQuantity(1<<30, resource.BinarySI)},
			MountOptions:                  []string{"noatime"},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			VolumeMode:                    &fs,
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver: local.DefaultName, VolumeHandle: "pvc-uid-1", FSType: "ext4",
				VolumeAttributes:     map[string]string{IdentityKey: p.identity},
				NodePublishSecretRef: &corev1.SecretReference{Name: "pub-blue", Namespace: "ns1"},
			}},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "topology.monocsi.io/node", Operator: corev1.NodeSelectorOpIn, Values: []string{node}}},
			}}}},
		},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("PV differs from external-provisioner's (-want +got):\n%s", d)
	}
	if !strings.HasSuffix(p.identity, "-"+local.DefaultName+"-"+node) {
		t.Errorf("identity %q", p.identity)
	}
	if _, err := os.Stat(filepath.Join(root, "pvc-uid-1")); err != nil {
		t.Errorf("volume directory not created: %v", err)
	}
	// Provisioning again (a retry after a crash) reaches the same volume.
	again, _, err := p.Provision(context.Background(), options(p, params))
	if err != nil || again.Spec.CSI.VolumeHandle != "pvc-uid-1" {
		t.Fatalf("retry: %v %v", again, err)
	}
}

func TestProvisionErrors(t *testing.T) {
	p, _ := newLocal(t)
	cases := map[string]struct {
		params map[string]string
		state  controller.ProvisioningState
		msg    string
	}{
		"driver rejects parameter": {map[string]string{"colour": "blue"}, controller.ProvisioningFinished, `unknown parameter "colour"`},
		"unknown reserved key":     {map[string]string{"csi.storage.k8s.io/bogus": "x"}, controller.ProvisioningFinished, "csi.storage.k8s.io/bogus"},
		"both fstype keys":         {map[string]string{"fstype": "ext4", "csi.storage.k8s.io/fstype": "xfs"}, controller.ProvisioningFinished, "both set"},
		"bad template token":       {map[string]string{"csi.storage.k8s.io/provisioner-secret-name": "${pvc.annotations['x']}", "csi.storage.k8s.io/provisioner-secret-namespace": "ns1"}, controller.ProvisioningFinished, "not allowed"},
		"missing secret":           {map[string]string{"csi.storage.k8s.io/provisioner-secret-name": "nope", "csi.storage.k8s.io/provisioner-secret-namespace": "ns1"}, controller.ProvisioningFinished, "nope"},
		"half a secret reference":  {map[string]string{"csi.storage.k8s.io/provisioner-secret-name": "nope"}, controller.ProvisioningFinished, "together"},
	}
	for name, c := range cases {
		pv, state, err := p.Provision(context.Background(), options(p, c.params))
		if pv != nil || err == nil || state != c.state || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: got pv=%v state=%v err=%v; want %v mentioning %q", name, pv != nil, state, err, c.state, c.msg)
		}
	}
	// A node that cannot hold the volume: reschedule, as external-provisioner.
	o := options(p, nil)
	o.PVC.Spec.Resources.Requests[corev1.ResourceStorage] = resource.MustParse("1Ei")
	if _, state, err := p.Provision(context.Background(), o); state != controller.ProvisioningReschedule {
		t.Errorf("too big for the node: state %v, %v; want Reschedule", state, err)
	}
}

func TestNodeDeploymentFilters(t *testing.T) {
	p, _ := newLocal(t)
	mine := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{annSelectedNode: node}}}
	other := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{annSelectedNode: "node-b"}}}
	unscheduled := &corev1.PersistentVolumeClaim{}
	if !p.ShouldProvision(context.Background(), mine) || p.ShouldProvision(context.Background(), other) || p.ShouldProvision(context.Background(), unscheduled) {
		t.Error("node deployment must provision exactly the claims scheduled to its node")
	}
	pin := func(n string) *corev1.PersistentVolume {
		return &corev1.PersistentVolume{Spec: corev1.PersistentVolumeSpec{NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{
			NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{
				{Key: "topology.monocsi.io/node", Operator: corev1.NodeSelectorOpIn, Values: []string{n}}}}}}}}}
	}
	if !p.ShouldDelete(context.Background(), pin(node)) || p.ShouldDelete(context.Background(), pin("node-b")) || p.ShouldDelete(context.Background(), &corev1.PersistentVolume{}) {
		t.Error("node deployment must delete exactly the PVs pinned to its node")
	}
}

// A node deployment's caches hold its own claims and PVs only: the PVs of
// its drivers pinned to it, the claims bound to those (statically
// provisioned ones too), and its drivers' claims scheduled to it or waiting
// for a node to take them; a claim scheduled to it later enters the cache,
// one another node takes leaves it.
func TestNodeDeploymentCachesItsOwn(t *testing.T) {
	p, _ := newLocal(t)
	client := p.client.(*fake.Clientset)
	wffc := storagev1.VolumeBindingWaitForFirstConsumer
	claimOf := func(name, provisioner, selected, volume string) *corev1.PersistentVolumeClaim {
		sc := "sc"
		c := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns1",
			Annotations: map[string]string{"volume.kubernetes.io/storage-provisioner": provisioner}},
			Spec: corev1.PersistentVolumeClaimSpec{StorageClassName: &sc, VolumeName: volume}}
		if selected != "" {
			c.Annotations[annSelectedNode] = selected
		}
		return c
	}
	pvOf := func(name, driver, node string) *corev1.PersistentVolume {
		return &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.PersistentVolumeSpec{
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: driver, VolumeHandle: name}},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "topology.monocsi.io/node", Operator: corev1.NodeSelectorOpIn, Values: []string{node}}}}}}}}}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, obj := range []runtime.Object{
		&storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "sc"}, Provisioner: local.DefaultName, VolumeBindingMode: &wffc},
		claimOf("mine", local.DefaultName, node, ""),
		claimOf("bound", local.DefaultName, node, "pv-mine"),
		claimOf("static", "", "", "pv-mine"),
		claimOf("static-elsewhere", "", "", "pv-elsewhere"),
		claimOf("waiting", local.DefaultName, "", ""),
		claimOf("elsewhere", local.DefaultName, "node-b", ""),
		claimOf("other-driver", "nfs.example.com", node, ""),
		pvOf("pv-mine", local.DefaultName, node),
		pvOf("pv-elsewhere", local.DefaultName, "node-b"),
		pvOf("pv-other-driver", "nfs.example.com", node),
	} {
		if err := client.Tracker().Add(obj); err != nil {
			t.Fatal(err)
		}
	}
	inf := kube.NodeInformers(ctx, client, node)
	if err := Filter(inf, []*Provisioner{p}, nil); err != nil {
		t.Fatal(err)
	}
	synced := make(chan struct{})
	done := make(chan error)
	go func() {
		done <- Run(ctx, client, inf, []*Provisioner{p}, NodeWorkers, prometheus.NewRegistry(), func() { close(synced) })
	}()
	select {
	case <-synced:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("caches never filled")
	}
	claimNames := func() []string {
		cs, _ := p.l.claims.List(everything)
		var n []string
		for _, c := range cs {
			n = append(n, c.Name)
		}
		slices.Sort(n)
		return n
	}
	if got, want := claimNames(), []string{"bound", "mine", "static", "waiting"}; !slices.Equal(got, want) {
		t.Errorf("cached claims %v, want %v", got, want)
	}
	pvs, _ := p.l.volumes.List(everything)
	if len(pvs) != 1 || pvs[0].Name != "pv-mine" {
		t.Errorf("cached PVs %v, want only pv-mine", pvs)
	}
	// Rescheduled here: it enters. Taken by another node: it leaves.
	moved := claimOf("elsewhere", local.DefaultName, node, "")
	taken := claimOf("waiting", local.DefaultName, "node-b", "")
	for _, c := range []*corev1.PersistentVolumeClaim{moved, taken} {
		if _, err := client.CoreV1().PersistentVolumeClaims("ns1").Update(ctx, c, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"bound", "elsewhere", "mine", "static"}
	for deadline := time.Now().Add(10 * time.Second); !slices.Equal(claimNames(), want); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("cached claims %v, want %v", claimNames(), want)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

// A node takes a claim of an Immediate class by patching the selected-node
// annotation onto the claim it has cached, and nothing else.
func TestTakeImmediate(t *testing.T) {
	p, _ := newLocal(t)
	client := p.client.(*fake.Clientset)
	ctx := context.Background()
	sc := "now"
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "c", Namespace: "ns1", ResourceVersion: "5",
		Annotations: map[string]string{"volume.kubernetes.io/storage-provisioner": local.DefaultName, kube.LastApplied: "{}"}},
		Spec: corev1.PersistentVolumeClaimSpec{StorageClassName: &sc}}
	if _, err := client.CoreV1().PersistentVolumeClaims("ns1").Create(ctx, pvc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if p.ShouldProvision(ctx, pvc) {
		t.Error("took a claim whose class does not exist")
	}
	if _, err := client.StorageV1().StorageClasses().Create(ctx, &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: sc}, Provisioner: local.DefaultName}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := p.l.classes.Get(sc); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("class never cached")
		}
	}
	before := len(client.Actions())
	if !p.ShouldProvision(ctx, pvc) {
		t.Fatal("did not take an Immediate claim")
	}
	got, _ := client.CoreV1().PersistentVolumeClaims("ns1").Get(ctx, "c", metav1.GetOptions{})
	if got.Annotations[annSelectedNode] != node || got.Annotations[kube.LastApplied] != "{}" {
		t.Errorf("annotations after taking: %v", got.Annotations)
	}
	var verbs []string
	for _, a := range client.Actions()[before:] {
		verbs = append(verbs, a.GetVerb())
	}
	if !slices.Equal(verbs, []string{"patch", "get"}) && !slices.Equal(verbs, []string{"patch"}) {
		t.Errorf("API calls %v, want one patch (the claim and class come from the cache)", verbs)
	}
}

// A controller deployment's caches hold the claims and PVs of its drivers
// (claims bound to its PVs too), and the PVs another role asks for, not
// other drivers'.
func TestControllerCachesItsDrivers(t *testing.T) {
	p := newRecording(t, &recorder{})
	client := p.client.(*fake.Clientset)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	claimOf := func(name, provisioner string) *corev1.PersistentVolumeClaim {
		return &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns1",
			Annotations: map[string]string{"volume.kubernetes.io/storage-provisioner": provisioner, annSelectedNode: "anywhere"}}}
	}
	static := func(name, pv string) *corev1.PersistentVolumeClaim {
		return &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns1"}, Spec: corev1.PersistentVolumeClaimSpec{VolumeName: pv}}
	}
	pvOf := func(name, driver string, finalizers ...string) *corev1.PersistentVolume {
		return &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: name, Finalizers: finalizers}, Spec: corev1.PersistentVolumeSpec{
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: driver, VolumeHandle: name}}}}
	}
	for _, obj := range []runtime.Object{
		claimOf("mine", local.DefaultName), claimOf("other", "other.example.com"),
		static("static-mine", "pv-mine"), static("static-other", "pv-other"),
		pvOf("pv-mine", local.DefaultName), pvOf("pv-other", "other.example.com"), pvOf("pv-attached", "flex.example.com", "attached"),
	} {
		if err := client.Tracker().Add(obj); err != nil {
			t.Fatal(err)
		}
	}
	inf := kube.NewInformers(ctx, client)
	attached := func(pv *corev1.PersistentVolume) bool { return slices.Contains(pv.Finalizers, "attached") }
	if err := Filter(inf, []*Provisioner{p}, attached); err != nil {
		t.Fatal(err)
	}
	synced := make(chan struct{})
	done := make(chan error)
	go func() {
		done <- Run(ctx, client, inf, []*Provisioner{p}, Workers, prometheus.NewRegistry(), func() { close(synced) })
	}()
	select {
	case <-synced:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("caches never filled")
	}
	cs, _ := p.l.claims.List(everything)
	var claims []string
	for _, c := range cs {
		claims = append(claims, c.Name)
	}
	slices.Sort(claims)
	if !slices.Equal(claims, []string{"mine", "static-mine"}) {
		t.Errorf("cached claims %v, want [mine static-mine]", claims)
	}
	pvs, _ := p.l.volumes.List(everything)
	var names []string
	for _, pv := range pvs {
		names = append(names, pv.Name)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"pv-attached", "pv-mine"}) {
		t.Errorf("cached PVs %v, want [pv-attached pv-mine]", names)
	}
	cancel()
	<-done
}

// A clone source the cache does not hold (a node's cache has only the claims
// it provisions) is read from the API server.
func TestCloneSourceOutsideTheCache(t *testing.T) {
	p, _ := newLocal(t)
	ctx := context.Background()
	sc := "sc"
	src := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "src", Namespace: "ns1"},
		Spec:   corev1.PersistentVolumeClaimSpec{StorageClassName: &sc, VolumeName: "pv-src"},
		Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound}}
	pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv-src"}, Spec: corev1.PersistentVolumeSpec{
		PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: local.DefaultName, VolumeHandle: "vol-src"}}}}
	// In the API server, not in the caches (they watch another client).
	client := fake.NewClientset(src, pv)
	p.client = client
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "clone", Namespace: "ns1"},
		Spec: corev1.PersistentVolumeClaimSpec{StorageClassName: &sc, DataSource: &corev1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: "src"}}}
	got, err := p.contentSource(ctx, pvc, &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: sc}}, 1<<30)
	if err != nil || got.GetVolume().GetVolumeId() != "vol-src" {
		t.Fatalf("contentSource: %v, %v; want volume vol-src", got, err)
	}
	pvc.Spec.DataSource.Name = "nope"
	if _, err := p.contentSource(ctx, pvc, &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: sc}}, 1<<30); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("missing source: %v", err)
	}
}
