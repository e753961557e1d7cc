// Package attacher is the embedded external-attacher: it watches
// VolumeAttachments of the drivers it serves, calls their
// ControllerPublishVolume / ControllerUnpublishVolume in-process, and writes
// the results into the VolumeAttachment status with the finalizers and
// annotation external-attacher uses, so the kubelet and the attach/detach
// controller cannot tell the difference.
package attacher

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/monocsi/monocsi/driver"
	"github.com/monocsi/monocsi/internal/capability"
	"github.com/monocsi/monocsi/internal/kube"
	"github.com/monocsi/monocsi/internal/opmetrics"
)

// annNodeID remembers the node ID a volume was attached with, so detach
// works when the node's CSINode is gone (external-attacher's annotation);
// annHandle the volume handle, so it works when the PV is gone.
const (
	annNodeID = "csi.alpha.kubernetes.io/node-id"
	annHandle = "monocsi.io/volume-handle"
)

// Finalizer is the finalizer external-attacher puts on VolumeAttachments
// and PVs of a driver.
func Finalizer(driverName string) string {
	return "external-attacher/" + strings.ReplaceAll(driverName, "/", "-")
}

// Keeps tells which PVs the attacher needs in the process's cache: those
// with an external-attacher finalizer, which it removes when their deletion
// shows in the cache. A PV a VolumeAttachment names is read from the API
// server when the cache does not have it (before the finalizer is added).
func Keeps(pv *corev1.PersistentVolume) bool {
	return slices.ContainsFunc(pv.Finalizers, func(f string) bool { return strings.HasPrefix(f, "external-attacher/") })
}

// pv is a PV from the cache, or from the API server when the cache does not
// have it (see Keeps).
func (a *Attacher) pv(ctx context.Context, name string) (*corev1.PersistentVolume, error) {
	pv, err := a.pvs.Get(name)
	if apierrors.IsNotFound(err) {
		return a.client.CoreV1().PersistentVolumes().Get(ctx, name, metav1.GetOptions{})
	}
	return pv, err
}

// Timeout bounds every CSI call.
const Timeout = 2 * time.Minute

// Attacher attaches and detaches volumes of the drivers it holds.
type Attacher struct {
	client  kubernetes.Interface
	caps    *capability.Cache
	mu      sync.RWMutex
	drivers map[string]driver.Driver // by CSI name
	queue   workqueue.TypedRateLimitingInterface[string]
	inf     *kube.Informers
	vaInf   cache.SharedIndexInformer
	pvInf   cache.SharedIndexInformer
	nodeInf cache.SharedIndexInformer
	vas     storagelisters.VolumeAttachmentLister
	pvs     corelisters.PersistentVolumeLister
	nodes   storagelisters.CSINodeLister
}

// New returns an attacher with no drivers; Add and Remove change them while
// it runs (FlexVolume drivers come and go). It reads VolumeAttachments, PVs
// and CSINodes through the process's informers, and drivers' capabilities
// through caps (nil: a cache of its own), both shared with the provisioner.
func New(client kubernetes.Interface, inf *kube.Informers, caps *capability.Cache) *Attacher {
	if caps == nil {
		caps = &capability.Cache{}
	}
	va, pv, cn := inf.Storage().V1().VolumeAttachments(), inf.Core().V1().PersistentVolumes(), inf.Storage().V1().CSINodes()
	return &Attacher{client: client, caps: caps, drivers: map[string]driver.Driver{}, inf: inf,
		vaInf: va.Informer(), pvInf: pv.Informer(), nodeInf: cn.Informer(),
		vas: va.Lister(), pvs: pv.Lister(), nodes: cn.Lister(),
		// Retries: 1 s doubling to 5 min, as external-attacher.
		queue: workqueue.NewTypedRateLimitingQueue(workqueue.NewTypedItemExponentialFailureRateLimiter[string](time.Second, 5*time.Minute))}
}

// Add starts serving a driver's VolumeAttachments.
func (a *Attacher) Add(name string, d driver.Driver) {
	a.mu.Lock()
	a.drivers[name] = d
	a.mu.Unlock()
	a.resync()
}

// Remove stops serving a driver, unless another instance of it was added
// since; its attachments stay as they are.
func (a *Attacher) Remove(name string, d driver.Driver) {
	a.mu.Lock()
	if a.drivers[name] == d {
		delete(a.drivers, name)
	}
	a.mu.Unlock()
	a.caps.Forget(name, d)
}

func (a *Attacher) driver(name string) driver.Driver {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.drivers[name]
}

// resync queues every VolumeAttachment in the cache (a driver was added;
// before the cache is filled its events queue them anyway).
func (a *Attacher) resync() {
	vas, _ := a.vas.List(everything)
	for _, va := range vas {
		a.queue.Add(va.Name)
	}
}

// Run watches VolumeAttachments, PVs and CSINodes until ctx is done, and
// returns once every worker has. synced, if set, is called once the caches
// are filled and the workers run. The informers are the process's: they
// keep running after Run returns (its handlers are removed).
func (a *Attacher) Run(ctx context.Context, workers int, synced func()) error {
	enqueue := func(obj any) {
		if va, ok := obj.(*storagev1.VolumeAttachment); ok {
			a.queue.Add(va.Name)
		}
	}
	defer a.queue.ShutDown()
	vaReg, err := a.vaInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue, DeleteFunc: a.queuePVOf,
		UpdateFunc: func(o, n any) {
			ov, ok1 := o.(*storagev1.VolumeAttachment)
			nv, ok2 := n.(*storagev1.VolumeAttachment)
			if ok1 && ok2 && errorOnly(ov, nv) {
				return
			}

			enqueue(n)
		},
	})
	if err != nil {
		return err
	}
	defer a.vaInf.RemoveEventHandler(vaReg)
	// A PV being deleted loses our finalizer once no attachment uses it.
	pvReg, err := a.pvInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(_, o any) { a.queuePV(o) }, AddFunc: a.queuePV,
	})
	if err != nil {
		return err
	}
	defer a.pvInf.RemoveEventHandler(pvReg)
	a.inf.Start()
	cache.WaitForCacheSync(ctx.Done(), a.vaInf.HasSynced, a.pvInf.HasSynced, a.nodeInf.HasSynced, vaReg.HasSynced, pvReg.HasSynced)
	var running sync.WaitGroup
	for range workers {
		running.Go(func() { a.work(ctx) })
	}
	if ctx.Err() == nil && synced != nil {
		synced()
	}
	<-ctx.Done()
	// Return only once no worker acts: the Lease is released after this.
	a.queue.ShutDown()
	running.Wait()
	return nil
}

var everything = labels.Everything()

// errorOnly: the update changed nothing but the attach or detach error,
// which the attacher itself just recorded. Queuing it would retry at once,
// not after the backoff (external-attacher's shouldEnqueueVAChange).
func errorOnly(old, cur *storagev1.VolumeAttachment) bool {
	if old == cur || old.ResourceVersion == cur.ResourceVersion && cur.ResourceVersion != "" { // a resync
		return false
	}
	if old.Status.AttachError == nil && old.Status.DetachError == nil && cur.Status.AttachError == nil && cur.Status.DetachError == nil {
		return false
	}
	c := cur.DeepCopy()
	c.ResourceVersion, c.ManagedFields = old.ResourceVersion, old.ManagedFields
	c.Status.AttachError, c.Status.DetachError = old.Status.AttachError, old.Status.DetachError
	return equality.Semantic.DeepEqual(old, c)
}

// pvKey marks queue items that are PVs, not VolumeAttachments.
const pvKey = "pv/"

func (a *Attacher) queuePV(obj any) {
	if pv, ok := obj.(*corev1.PersistentVolume); ok && pv.DeletionTimestamp != nil && pv.Spec.CSI != nil &&
		slices.Contains(pv.Finalizers, Finalizer(pv.Spec.CSI.Driver)) {
		a.queue.Add(pvKey + pv.Name)
	}
}

// queuePVOf queues the PV of a deleted VolumeAttachment: it may now lose
// our finalizer.
func (a *Attacher) queuePVOf(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	if va, ok := obj.(*storagev1.VolumeAttachment); ok && va.Spec.Source.PersistentVolumeName != nil {
		a.queue.Add(pvKey + *va.Spec.Source.PersistentVolumeName)
	}
}

func (a *Attacher) work(ctx context.Context) {
	for {
		key, quit := a.queue.Get()
		if quit {
			return
		}
		if ctx.Err() != nil { // shutting down: the queue is drained unworked
			a.queue.Done(key)
			continue
		}
		var err error
		if name, ok := strings.CutPrefix(key, pvKey); ok {
			err = a.syncPV(ctx, name)
		} else {
			err = a.syncVA(ctx, key)
		}
		if err != nil {
			klog.ErrorS(err, "Retrying", "item", key)
			a.queue.AddRateLimited(key)
		} else {
			a.queue.Forget(key)
		}
		a.queue.Done(key)
	}
}

func (a *Attacher) syncVA(ctx context.Context, name string) error {
	va, err := a.vas.Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	d := a.driver(va.Spec.Attacher)
	if d == nil {
		return nil // not ours
	}
	if va.DeletionTimestamp != nil {
		return a.detach(ctx, d, va)
	}
	if va.Status.Attached {
		return nil
	}
	return a.attach(ctx, d, va)
}

func (a *Attacher) attach(ctx context.Context, d driver.Driver, va *storagev1.VolumeAttachment) error {
	name := va.Spec.Attacher
	fin := Finalizer(name)
	// Before anything is written: without the driver's answer, whether to
	// call ControllerPublishVolume is unknown, and the item is retried.
	caps, err := a.caps.Get(ctx, name, d)
	if err != nil {
		return err
	}
	if va.Spec.Source.PersistentVolumeName == nil {
		return a.attachFailed(ctx, va, fmt.Errorf("only PersistentVolumes can be attached by %s (inline volume specs are not supported)", name))
	}
	pv, err := a.pv(ctx, *va.Spec.Source.PersistentVolumeName)
	if err != nil {
		return a.attachFailed(ctx, va, fmt.Errorf("PersistentVolume %s: %w", *va.Spec.Source.PersistentVolumeName, err))
	}
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != name {
		return a.attachFailed(ctx, va, fmt.Errorf("PersistentVolume %s is not a volume of %s", pv.Name, name))
	}
	if pv.DeletionTimestamp != nil {
		return a.attachFailed(ctx, va, fmt.Errorf("PersistentVolume %s is being deleted", pv.Name))
	}
	if !slices.Contains(pv.Finalizers, fin) {
		patch, err := metaPatch(pv.ResourceVersion, append(slices.Clip(pv.Finalizers), fin), nil)
		if err != nil {
			return err
		}
		if pv, err = a.client.CoreV1().PersistentVolumes().Patch(ctx, pv.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			return err
		}
	}
	nodeID, err := a.nodeID(name, va.Spec.NodeName)
	if err != nil {
		return a.attachFailed(ctx, va, err)
	}
	handle := pv.Spec.CSI.VolumeHandle
	if !slices.Contains(va.Finalizers, fin) || va.Annotations[annNodeID] != nodeID || va.Annotations[annHandle] != handle {
		finalizers := va.Finalizers
		if !slices.Contains(finalizers, fin) {
			finalizers = append(slices.Clip(finalizers), fin)
		}
		patch, err := metaPatch(va.ResourceVersion, finalizers, map[string]string{annNodeID: nodeID, annHandle: handle})
		if err != nil {
			return err
		}
		if va, err = a.client.StorageV1().VolumeAttachments().Patch(ctx, va.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			return err
		}
	}
	var publishCtx map[string]string
	if caps.Controller(csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME) {
		volCap, err := volumeCapability(pv, caps.MultiWriter())
		if err != nil {
			return a.attachFailed(ctx, va, err)
		}
		secrets, err := a.secrets(ctx, pv.Spec.CSI.ControllerPublishSecretRef)
		if err != nil {
			return a.attachFailed(ctx, va, err)
		}
		cctx, cancel := context.WithTimeout(ctx, Timeout)
		start := time.Now()
		resp, err := d.ControllerPublishVolume(cctx, &csi.ControllerPublishVolumeRequest{
			VolumeId: pv.Spec.CSI.VolumeHandle, NodeId: nodeID, VolumeCapability: volCap,
			Readonly: pv.Spec.CSI.ReadOnly, Secrets: secrets, VolumeContext: pv.Spec.CSI.VolumeAttributes,
		})
		cancel()
		opmetrics.Observe(name, "ControllerPublishVolume", start, err)
		if err != nil {
			return a.attachFailed(ctx, va, err)
		}
		publishCtx = resp.GetPublishContext()
	}
	// No PUBLISH_UNPUBLISH_VOLUME: the driver requires attach but does it
	// itself; the VolumeAttachment is only marked, as external-attacher does.
	va = va.DeepCopy()
	va.Status = storagev1.VolumeAttachmentStatus{Attached: true, AttachmentMetadata: publishCtx}
	if _, err := a.client.StorageV1().VolumeAttachments().UpdateStatus(ctx, va, metav1.UpdateOptions{}); err != nil {
		return err
	}
	klog.InfoS("Attached", "driver", name, "volumeAttachment", va.Name, "pv", pv.Name, "node", va.Spec.NodeName)
	return nil
}

// attachFailed and detachFailed record the error in the status (where
// `kubectl describe` and the attach/detach controller's events show it) and
// return it for a retry.
func (a *Attacher) attachFailed(ctx context.Context, va *storagev1.VolumeAttachment, cause error) error {
	return a.failed(ctx, va, cause, func(st *storagev1.VolumeAttachmentStatus, e *storagev1.VolumeError) { st.AttachError = e })
}

func (a *Attacher) detachFailed(ctx context.Context, va *storagev1.VolumeAttachment, cause error) error {
	return a.failed(ctx, va, cause, func(st *storagev1.VolumeAttachmentStatus, e *storagev1.VolumeError) { st.DetachError = e })
}

func (a *Attacher) failed(ctx context.Context, va *storagev1.VolumeAttachment, cause error, set func(*storagev1.VolumeAttachmentStatus, *storagev1.VolumeError)) error {
	va = va.DeepCopy()
	set(&va.Status, &storagev1.VolumeError{Time: metav1.Now(), Message: cause.Error()})
	if _, err := a.client.StorageV1().VolumeAttachments().UpdateStatus(ctx, va, metav1.UpdateOptions{}); err != nil {
		klog.ErrorS(err, "Cannot record the error in the VolumeAttachment", "volumeAttachment", va.Name)
	}
	return cause
}

func (a *Attacher) detach(ctx context.Context, d driver.Driver, va *storagev1.VolumeAttachment) error {
	name := va.Spec.Attacher
	fin := Finalizer(name)
	if !slices.Contains(va.Finalizers, fin) {
		return nil
	}
	// Without the driver's answer, whether ControllerUnpublishVolume must be
	// called first is unknown: the finalizer stays, and the item is retried.
	caps, err := a.caps.Get(ctx, name, d)
	if err != nil {
		return err
	}
	if caps.Controller(csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME) {
		nodeID := va.Annotations[annNodeID]
		if nodeID == "" {
			var err error
			if nodeID, err = a.nodeID(name, va.Spec.NodeName); err != nil {
				return a.detachFailed(ctx, va, err)
			}
		}
		// The PV, when it is still there, for its secrets; the handle
		// recorded at attach otherwise.
		handle, secrets := va.Annotations[annHandle], map[string]string(nil)
		if n := va.Spec.Source.PersistentVolumeName; n != nil {
			pv, err := a.pv(ctx, *n)
			switch {
			case err == nil && pv.Spec.CSI != nil:
				handle = pv.Spec.CSI.VolumeHandle
				if secrets, err = a.secrets(ctx, pv.Spec.CSI.ControllerPublishSecretRef); err != nil {
					return a.detachFailed(ctx, va, err)
				}
			case apierrors.IsNotFound(err) && handle != "":
			default:
				return a.detachFailed(ctx, va, fmt.Errorf("PersistentVolume %s: %v, and no volume handle was recorded at attach", *n, err))
			}
		}
		cctx, cancel := context.WithTimeout(ctx, Timeout)
		start := time.Now()
		_, err := d.ControllerUnpublishVolume(cctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: handle, NodeId: nodeID, Secrets: secrets})
		cancel()
		opmetrics.Observe(name, "ControllerUnpublishVolume", start, err)
		if err != nil {
			return a.detachFailed(ctx, va, err)
		}
	}
	va = va.DeepCopy()
	va.Status = storagev1.VolumeAttachmentStatus{Attached: false}
	va, err = a.client.StorageV1().VolumeAttachments().UpdateStatus(ctx, va, metav1.UpdateOptions{})
	if err != nil {
		return err
	}
	if err := dropFinalizer(ctx, a.client.StorageV1().VolumeAttachments().Patch, va.Name, va.ResourceVersion, va.Finalizers, fin); err != nil {
		return err
	}
	klog.InfoS("Detached", "driver", name, "volumeAttachment", va.Name, "node", va.Spec.NodeName)
	return nil
}

// syncPV removes the finalizer from a PV being deleted once no
// VolumeAttachment refers to it.
func (a *Attacher) syncPV(ctx context.Context, name string) error {
	pv, err := a.pvs.Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil || pv.DeletionTimestamp == nil || pv.Spec.CSI == nil || a.driver(pv.Spec.CSI.Driver) == nil {
		return err
	}
	fin := Finalizer(pv.Spec.CSI.Driver)
	if !slices.Contains(pv.Finalizers, fin) {
		return nil
	}
	vas, err := a.vas.List(everything)
	if err != nil {
		return err
	}
	for _, va := range vas {
		if n := va.Spec.Source.PersistentVolumeName; n != nil && *n == name {
			return nil // the VolumeAttachment's deletion queues the PV again
		}
	}
	return dropFinalizer(ctx, a.client.CoreV1().PersistentVolumes().Patch, pv.Name, pv.ResourceVersion, pv.Finalizers, fin)
}

// patchFunc is the Patch method of a typed client.
type patchFunc[T any] func(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (T, error)

// dropFinalizer removes fin from an object at resourceVersion rv.
func dropFinalizer[T any](ctx context.Context, patch patchFunc[T], name, rv string, finalizers []string, fin string) error {
	data, err := metaPatch(rv, slices.DeleteFunc(slices.Clone(finalizers), func(f string) bool { return f == fin }), nil)
	if err != nil {
		return err
	}
	_, err = patch(ctx, name, types.MergePatchType, data, metav1.PatchOptions{})
	return err
}

// metaPatch is a JSON merge patch that sets an object's finalizers and the
// given annotations, and applies only while the object is at resourceVersion
// rv, as an Update of the cached copy would. Unlike that Update it writes
// nothing else: the cache's copies lack what kube.Strip dropped.
func metaPatch(rv string, finalizers []string, annotations map[string]string) ([]byte, error) {
	m := map[string]any{"resourceVersion": rv, "finalizers": finalizers}
	if annotations != nil {
		m["annotations"] = annotations
	}
	return json.Marshal(map[string]any{"metadata": m})
}

// nodeID is the driver's ID of a node, from the node's CSINode.
func (a *Attacher) nodeID(driverName, node string) (string, error) {
	cn, err := a.nodes.Get(node)
	if err != nil {
		return "", fmt.Errorf("CSINode %s: %w", node, err)
	}
	for _, d := range cn.Spec.Drivers {
		if d.Name == driverName {
			return d.NodeID, nil
		}
	}
	return "", fmt.Errorf("CSINode %s does not list driver %s: is it registered on that node?", node, driverName)
}

func (a *Attacher) secrets(ctx context.Context, ref *corev1.SecretReference) (map[string]string, error) {
	s, err := kube.SecretData(ctx, a.client, ref)
	if err != nil {
		return nil, fmt.Errorf("controller publish %w", err)
	}
	return s, nil
}

// volumeCapability is the CSI capability of a PV, as external-attacher
// builds it.
func volumeCapability(pv *corev1.PersistentVolume, multiWriter bool) (*csi.VolumeCapability, error) {
	block := pv.Spec.VolumeMode != nil && *pv.Spec.VolumeMode == corev1.PersistentVolumeBlock
	c, err := capability.Volume(pv.Spec.AccessModes, multiWriter, block, pv.Spec.CSI.FSType, pv.Spec.MountOptions)
	if err != nil {
		return nil, fmt.Errorf("PersistentVolume %s: %w", pv.Name, err)
	}
	return c, nil
}
