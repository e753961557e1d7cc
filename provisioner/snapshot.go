package provisioner

import (
	"context"
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// annAllowVolumeModeChange on a content lets claims restore its snapshot in
// another volume mode than its source's (external-provisioner's check, on by
// default there: --prevent-volume-mode-conversion).
const annAllowVolumeModeChange = "snapshot.storage.kubernetes.io/allow-volume-mode-change"

// snapshotSource resolves a VolumeSnapshot data source as
// external-provisioner's getSnapshotSource: the snapshot is in the claim's
// namespace, not being deleted, ready, bound to a content of this driver
// whose status has the snapshot handle; the claim asks for at least its
// restoreSize and keeps its source's volume mode. Every refusal is the
// claim's ProvisioningFailed Event, retried until the snapshot is usable.
func (p *Provisioner) snapshotSource(ctx context.Context, pvc *corev1.PersistentVolumeClaim, ds *corev1.TypedObjectReference, size int64) (*csi.VolumeContentSource, error) {
	if !p.has(csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT) {
		return nil, fmt.Errorf("driver %s does not support snapshots (data source VolumeSnapshot %s)", p.name, ds.Name)
	}
	if p.opts.Snapshots == nil {
		return nil, fmt.Errorf("data source VolumeSnapshot %s: this provisioner has no client of the snapshot.storage.k8s.io API", ds.Name)
	}
	if ds.Namespace != nil && *ds.Namespace != pvc.Namespace {
		return nil, fmt.Errorf("snapshot source %s/%s must be in the claim's namespace", *ds.Namespace, ds.Name)
	}
	snap, err := p.opts.Snapshots.SnapshotV1().VolumeSnapshots(pvc.Namespace).Get(ctx, ds.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("snapshot source VolumeSnapshot %s/%s not found", pvc.Namespace, ds.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("error getting snapshot %s from api server: %w", ds.Name, err)
	}
	if snap.DeletionTimestamp != nil {
		return nil, fmt.Errorf("snapshot %s is currently being deleted", ds.Name)
	}
	if snap.Status == nil || snap.Status.ReadyToUse == nil || !*snap.Status.ReadyToUse {
		return nil, fmt.Errorf("snapshot %s is not Ready", ds.Name)
	}
	if snap.Status.BoundVolumeSnapshotContentName == nil || *snap.Status.BoundVolumeSnapshotContentName == "" {
		return nil, fmt.Errorf("snapshot %s is not bound to a VolumeSnapshotContent", ds.Name)
	}
	contentName := *snap.Status.BoundVolumeSnapshotContentName
	content, err := p.opts.Snapshots.SnapshotV1().VolumeSnapshotContents().Get(ctx, contentName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("error getting VolumeSnapshotContent %s of snapshot %s: %w", contentName, ds.Name, err)
	}
	if err := p.checkContent(content, snap, pvc, size); err != nil {
		return nil, err
	}
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: *content.Status.SnapshotHandle}}}, nil
}

// checkContent is what a content must be for a claim to restore from it.
func (p *Provisioner) checkContent(content *snapv1.VolumeSnapshotContent, snap *snapv1.VolumeSnapshot, pvc *corev1.PersistentVolumeClaim, size int64) error {
	ref := content.Spec.VolumeSnapshotRef
	if ref.Name != snap.Name || ref.Namespace != snap.Namespace || (ref.UID != "" && ref.UID != snap.UID) {
		return fmt.Errorf("VolumeSnapshotContent %s is bound to snapshot %s/%s, not to %s/%s", content.Name, ref.Namespace, ref.Name, snap.Namespace, snap.Name)
	}
	if content.Spec.Driver != p.name {
		return fmt.Errorf("driver name %s defined in VolumeSnapshotContent %s does not match driver name %s defined in storage class", content.Spec.Driver, content.Name, p.name)
	}
	if content.Status == nil || content.Status.SnapshotHandle == nil || *content.Status.SnapshotHandle == "" {
		return fmt.Errorf("snapshot handle %s is not available", content.Name)
	}
	if rs := snap.Status.RestoreSize; rs != nil && rs.Value() > size {
		return fmt.Errorf("requested volume size %d is less than the size %d for the source snapshot %s", size, rs.Value(), snap.Name)
	}
	if src := content.Spec.SourceVolumeMode; src != nil && content.Annotations[annAllowVolumeModeChange] != "true" {
		mode := corev1.PersistentVolumeFilesystem
		if pvc.Spec.VolumeMode != nil {
			mode = *pvc.Spec.VolumeMode
		}
		if *src != mode {
			return fmt.Errorf("requested volume %s/%s modifies the mode of the source volume (%s to %s) but the VolumeSnapshotContent %s does not allow it (annotation %s)",
				pvc.Namespace, pvc.Name, *src, mode, content.Name, annAllowVolumeModeChange)
		}
	}
	return nil
}
