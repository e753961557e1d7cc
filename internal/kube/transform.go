package kube

import (
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// LastApplied is the annotation kubectl apply keeps a whole copy of the
// object in.
const LastApplied = "kubectl.kubernetes.io/last-applied-configuration"

// Strip is the informers' transform: it drops what no role reads before an
// object reaches a cache. managedFields go from every kind cached (often the
// largest part of an object). Beyond that, per kind:
//
//   - PersistentVolumeClaim: the status but its phase and what the resizer
//     reads (capacity, conditions, allocatedResources and their statuses).
//     Its metadata and spec stay whole, last-applied annotation included: the
//     provisioner library writes claims back with Update (removing the
//     selected node to reschedule), and an Update without a field deletes it.
//   - PersistentVolume: the last-applied annotation and the status but its
//     phase. monocsi changes PVs only by patches.
//   - Node: everything but name, UID, resource version and labels (the
//     provisioner reads a node's topology labels).
//   - StorageClass, CSINode, VolumeAttachment, CSIDriver: the last-applied
//     annotation. VolumeAttachments are changed by patches and by status
//     updates, whose status is whole in the cache.
//
// It returns a changed shallow copy and leaves obj as it is: client-go's
// fake clientset hands informers the objects it stores. It is idempotent.
func Strip(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.PersistentVolumeClaim:
		c := *o
		c.ManagedFields = nil
		c.Status = corev1.PersistentVolumeClaimStatus{Phase: o.Status.Phase, Capacity: o.Status.Capacity, Conditions: o.Status.Conditions,
			AllocatedResources: o.Status.AllocatedResources, AllocatedResourceStatuses: o.Status.AllocatedResourceStatuses}
		return &c, nil
	case *corev1.PersistentVolume:
		c := *o
		c.ObjectMeta = stripMeta(o.ObjectMeta)
		c.Status = corev1.PersistentVolumeStatus{Phase: o.Status.Phase}
		return &c, nil
	case *corev1.Node:
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: o.Name, UID: o.UID, ResourceVersion: o.ResourceVersion, Labels: o.Labels}}, nil
	case *storagev1.StorageClass:
		c := *o
		c.ObjectMeta = stripMeta(o.ObjectMeta)
		return &c, nil
	case *storagev1.CSINode:
		c := *o
		c.ObjectMeta = stripMeta(o.ObjectMeta)
		return &c, nil
	case *storagev1.VolumeAttachment:
		c := *o
		c.ObjectMeta = stripMeta(o.ObjectMeta)
		return &c, nil
	case *storagev1.CSIDriver:
		c := *o
		c.ObjectMeta = stripMeta(o.ObjectMeta)
		return &c, nil
	}
	return obj, nil
}

// stripMeta is m without managedFields and the last-applied annotation.
func stripMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	m.ManagedFields = nil
	if _, ok := m.Annotations[LastApplied]; ok {
		a := make(map[string]string, len(m.Annotations)-1)
		for k, v := range m.Annotations {
			if k != LastApplied {
				a[k] = v
			}
		}
		if len(a) == 0 {
			a = nil
		}
		m.Annotations = a
	}
	return m
}
