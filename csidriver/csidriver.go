// Package csidriver keeps the CSIDriver object of each enabled driver in
// step with what the driver declares, so manifests do not repeat it.
package csidriver

import (
	"context"
	"fmt"

	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/monocsi/monocsi/driver"
)

// ManagedBy labels the objects monocsi keeps.
const ManagedBy = "app.kubernetes.io/managed-by"

// Spec turns a driver's declaration into a CSIDriver spec.
func Spec(d driver.Declaration) storagev1.CSIDriverSpec {
	policy := storagev1.FSGroupPolicy(d.FSGroupPolicy)
	if policy == "" {
		policy = storagev1.ReadWriteOnceWithFSTypeFSGroupPolicy
	}
	modes := []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecyclePersistent}
	if d.Ephemeral {
		modes = append(modes, storagev1.VolumeLifecycleEphemeral)
	}
	f := false
	return storagev1.CSIDriverSpec{
		AttachRequired:       &d.AttachRequired,
		PodInfoOnMount:       &d.PodInfoOnMount,
		FSGroupPolicy:        &policy,
		VolumeLifecycleModes: modes,
		StorageCapacity:      &d.StorageCapacity,
		RequiresRepublish:    &f,
		SELinuxMount:         &f,
	}
}

// Ensure creates the CSIDriver object, or updates it when it differs. Some
// fields are immutable: when the API refuses the update, the error says to
// delete the object so that monocsi can create it anew (monocsi never deletes
// it itself: volumes in use may depend on it).
func Ensure(ctx context.Context, client kubernetes.Interface, name string, d driver.Declaration) error {
	want := &storagev1.CSIDriver{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{ManagedBy: "monocsi"}},
		Spec:       Spec(d),
	}
	api := client.StorageV1().CSIDrivers()
	got, err := api.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		if _, err := api.Create(ctx, want, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create CSIDriver %s: %w", name, err)
		}
		klog.InfoS("Created CSIDriver", "driver", name)
		return nil
	}
	if err != nil {
		return fmt.Errorf("read CSIDriver %s: %w", name, err)
	}
	// Compare with the server's defaults filled in on both sides.
	cur := got.Spec
	if equality.Semantic.DeepEqual(withDefaults(cur), withDefaults(want.Spec)) {
		return nil
	}
	upd := got.DeepCopy()
	upd.Spec = want.Spec
	if upd.Labels == nil {
		upd.Labels = map[string]string{}
	}
	upd.Labels[ManagedBy] = "monocsi"
	if _, err := api.Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
		if apierrors.IsInvalid(err) {
			return fmt.Errorf("CSIDriver %s differs from what the driver declares in an immutable field; delete it (kubectl delete csidriver %s) and monocsi will create it again: %w", name, name, err)
		}
		return fmt.Errorf("update CSIDriver %s: %w", name, err)
	}
	klog.InfoS("Updated CSIDriver", "driver", name)
	return nil
}

// withDefaults fills the fields the API server defaults, so a stored object
// and a wanted one compare equal when they mean the same.
func withDefaults(s storagev1.CSIDriverSpec) storagev1.CSIDriverSpec {
	f := false
	for _, p := range []**bool{&s.StorageCapacity, &s.RequiresRepublish, &s.SELinuxMount} {
		if *p == nil {
			*p = &f
		}
	}
	s.NodeAllocatableUpdatePeriodSeconds = nil
	s.ServiceAccountTokenInSecrets = nil
	s.TokenRequests = nil
	return s
}
