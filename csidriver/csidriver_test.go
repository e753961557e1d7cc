package csidriver

import (
	"context"
	"testing"

	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/monocsi/monocsi/driver"
)

func TestEnsureCreatesAndUpdates(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	dec := driver.Declaration{FSGroupPolicy: "File", PodInfoOnMount: true, Ephemeral: true}
	if err := Ensure(ctx, client, "d.example.com", dec); err != nil {
		t.Fatal(err)
	}
	got, err := client.StorageV1().CSIDrivers().Get(ctx, "d.example.com", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if *got.Spec.AttachRequired || !*got.Spec.PodInfoOnMount || *got.Spec.FSGroupPolicy != storagev1.FileFSGroupPolicy ||
		len(got.Spec.VolumeLifecycleModes) != 2 || got.Labels[ManagedBy] != "monocsi" {
		t.Fatalf("created %+v", got)
	}
	// A hand-edited object is put back to the declaration.
	got.Spec.PodInfoOnMount = new(bool)
	if _, err := client.StorageV1().CSIDrivers().Update(ctx, got, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := Ensure(ctx, client, "d.example.com", dec); err != nil {
		t.Fatal(err)
	}
	got, _ = client.StorageV1().CSIDrivers().Get(ctx, "d.example.com", metav1.GetOptions{})
	if !*got.Spec.PodInfoOnMount {
		t.Error("Ensure did not restore podInfoOnMount")
	}
	// storageCapacity (mutable) follows the declaration.
	dec.StorageCapacity = true
	if err := Ensure(ctx, client, "d.example.com", dec); err != nil {
		t.Fatal(err)
	}
	if got, _ = client.StorageV1().CSIDrivers().Get(ctx, "d.example.com", metav1.GetOptions{}); !*got.Spec.StorageCapacity {
		t.Error("storageCapacity not set")
	}
	// Nothing to do: no write.
	before := len(client.Actions())
	if err := Ensure(ctx, client, "d.example.com", dec); err != nil {
		t.Fatal(err)
	}
	for _, a := range client.Actions()[before:] {
		if a.GetVerb() != "get" {
			t.Errorf("unneeded %s", a.GetVerb())
		}
	}
}
