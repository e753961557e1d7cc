package provisioner

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v10/controller"

	"github.com/monocsi/monocsi/driver/local"
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
	return p, root
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
