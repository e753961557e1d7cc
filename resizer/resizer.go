// Package resizer is the embedded external-resizer: it expands the volumes
// of claims whose requested size grew past their volume's, by calling the
// driver's ControllerExpandVolume in-process, and records the outcome on the
// PV and the claim exactly as external-resizer does with
// RecoverVolumeExpansionFailure (GA): status.allocatedResources,
// status.allocatedResourceStatuses, the Resizing, FileSystemResizePending
// and ControllerResizeError conditions, and its Events.
package resizer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/monocsi/monocsi/driver"
	"github.com/monocsi/monocsi/internal/capability"
	"github.com/monocsi/monocsi/internal/kube"
	"github.com/monocsi/monocsi/internal/opmetrics"
)

// The Events external-resizer records on claims.
const (
	EventResizing        = "Resizing"
	EventResizeFailed    = "VolumeResizeFailed"
	EventResizeSucceeded = "VolumeResizeSuccessful"
	EventFSResizeNeeded  = "FileSystemResizeRequired"
)

// Timeout bounds every ControllerExpandVolume call.
const Timeout = 2 * time.Minute

// Resizer expands the volumes of the drivers it holds.
type Resizer struct {
	client   kubernetes.Interface
	caps     *capability.Cache
	inf      *kube.Informers
	claimInf cache.SharedIndexInformer
	pvInf    cache.SharedIndexInformer
	claims   corelisters.PersistentVolumeClaimLister
	pvs      corelisters.PersistentVolumeLister
	queue    workqueue.TypedRateLimitingInterface[string]
	events   record.EventBroadcaster
	mu       sync.RWMutex
	drivers  map[string]*entry // by CSI name
	// final remembers claims whose last expansion failed with a final
	// error: their next attempt may take the claim's (lowered) request
	// instead of the size that failed (external-resizer's finalErrorPVCs).
	final sync.Map
	// refused is the size each claim's driver last refused as infeasible.
	refused sync.Map
}

type entry struct {
	d   driver.Driver
	rec record.EventRecorder
}

// New returns a resizer with no drivers, reading claims and PVs through the
// process's informers (in a node role: its own claims and PVs only) and
// drivers' capabilities through caps (nil: a cache of its own). The caller
// must have set the informers' filters before: New requests them.
func New(client kubernetes.Interface, inf *kube.Informers, caps *capability.Cache) *Resizer {
	if caps == nil {
		caps = &capability.Cache{}
	}
	c, v := inf.Core().V1().PersistentVolumeClaims(), inf.Core().V1().PersistentVolumes()
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	return &Resizer{client: client, caps: caps, inf: inf,
		claimInf: c.Informer(), pvInf: v.Informer(), claims: c.Lister(), pvs: v.Lister(),
		// Retries: 1 s doubling to 5 min, as external-resizer.
		queue:   workqueue.NewTypedRateLimitingQueue(workqueue.NewTypedItemExponentialFailureRateLimiter[string](time.Second, 5*time.Minute)),
		events:  b,
		drivers: map[string]*entry{}}
}

// Add starts expanding a driver's volumes: those of PVs whose spec.csi.driver
// is name.
func (r *Resizer) Add(name string, d driver.Driver) {
	rec := r.events.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "external-resizer " + name})
	r.mu.Lock()
	r.drivers[name] = &entry{d: d, rec: rec}
	r.mu.Unlock()
}

func (r *Resizer) driver(name string) *entry {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.drivers[name]
}

// Run watches claims and PVs until ctx is done and returns once every
// worker has. The informers are the process's: they keep running after Run
// returns (its handlers are removed).
func (r *Resizer) Run(ctx context.Context, workers int) error {
	defer r.events.Shutdown()
	defer r.queue.ShutDown()
	enqueue := func(obj any) {
		if c, ok := obj.(*corev1.PersistentVolumeClaim); ok && wantsResize(c) {
			r.queue.Add(c.Namespace + "/" + c.Name)
		}
	}
	// As external-resizer: an update is work when the request changed or
	// it is the informer's resync; the resizer's own status patches are not
	// (a failure keeps its backoff).
	update := func(o, n any) {
		oc, ok1 := o.(*corev1.PersistentVolumeClaim)
		nc, ok2 := n.(*corev1.PersistentVolumeClaim)
		if !ok1 || !ok2 {
			return
		}
		oldReq, newReq := oc.Spec.Resources.Requests[corev1.ResourceStorage], nc.Spec.Resources.Requests[corev1.ResourceStorage]
		if oldReq.Cmp(newReq) != 0 || oc.ResourceVersion == nc.ResourceVersion || oc.Status.Phase != nc.Status.Phase {
			enqueue(n)
		}
	}
	creg, err := r.claimInf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: enqueue, UpdateFunc: update})
	if err != nil {
		return err
	}
	defer r.claimInf.RemoveEventHandler(creg)
	// A PV that enters the cache after its claim (a node's filtered cache)
	// queues the claim.
	onPV := func(obj any) {
		if pv, ok := obj.(*corev1.PersistentVolume); ok && pv.Spec.ClaimRef != nil {
			if c, err := r.claims.PersistentVolumeClaims(pv.Spec.ClaimRef.Namespace).Get(pv.Spec.ClaimRef.Name); err == nil {
				enqueue(c)
			}
		}
	}
	preg, err := r.pvInf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: onPV})
	if err != nil {
		return err
	}
	defer r.pvInf.RemoveEventHandler(preg)
	r.mu.RLock()
	names := slices.Sorted(maps.Keys(r.drivers))
	r.mu.RUnlock()
	klog.InfoS("Starting resizer", "drivers", names)
	r.inf.Start()
	cache.WaitForCacheSync(ctx.Done(), r.claimInf.HasSynced, r.pvInf.HasSynced, creg.HasSynced, preg.HasSynced)
	var running sync.WaitGroup
	for range workers {
		running.Go(func() { r.work(ctx) })
	}
	<-ctx.Done()
	r.queue.ShutDown()
	running.Wait()
	return nil
}

func (r *Resizer) work(ctx context.Context) {
	for {
		key, quit := r.queue.Get()
		if quit {
			return
		}
		if ctx.Err() != nil {
			r.queue.Done(key)
			continue
		}
		err := r.sync(ctx, key)
		switch {
		case err == nil || errors.Is(err, errInfeasible):
			// An infeasible size is not retried until the claim changes.
			r.queue.Forget(key)
		default:
			klog.ErrorS(err, "Resizing failed; retrying", "claim", key)
			r.queue.AddRateLimited(key)
		}
		r.queue.Done(key)
	}
}

// wantsResize: a bound claim asking for more than it has (its
// status.capacity), external-resizer's trigger.
func wantsResize(c *corev1.PersistentVolumeClaim) bool {
	if c.Status.Phase != corev1.ClaimBound || c.Spec.VolumeName == "" {
		return false
	}
	want, ok := c.Spec.Resources.Requests[corev1.ResourceStorage]
	if !ok {
		return false
	}
	have, ok := c.Status.Capacity[corev1.ResourceStorage]
	return ok && want.Cmp(have) > 0
}

// errInfeasible marks an expansion the driver refused for good (its size):
// recorded on the claim, retried only when the claim changes.
var errInfeasible = errors.New("infeasible")

// sync is external-resizer's expandAndRecover for one claim.
func (r *Resizer) sync(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	pvc, err := r.claims.PersistentVolumeClaims(ns).Get(name)
	if apierrors.IsNotFound(err) {
		r.final.Delete(key)
		r.refused.Delete(key)
		return nil
	}
	if err != nil {
		return err
	}
	if !wantsResize(pvc) {
		return nil
	}
	pv, err := r.pvs.Get(pvc.Spec.VolumeName)
	if apierrors.IsNotFound(err) {
		klog.V(4).InfoS("The claim's PV is not in this process's cache: not resizing", "claim", key, "pv", pvc.Spec.VolumeName)
		return nil // not one of ours (a node role caches only its own PVs)
	}
	if err != nil {
		return err
	}
	if pv.Spec.CSI == nil || pv.Spec.ClaimRef == nil || pv.Spec.ClaimRef.UID != pvc.UID || pv.Spec.ClaimRef.Namespace != pvc.Namespace {
		return nil
	}
	e := r.driver(pv.Spec.CSI.Driver)
	if e == nil {
		return nil
	}
	newSize, skip := r.target(key, pvc, pv)
	if skip {
		return nil
	}
	if alloc, ok := pvc.Status.AllocatedResources[corev1.ResourceStorage]; !ok || alloc.Cmp(newSize) != 0 ||
		pvc.Status.AllocatedResourceStatuses[corev1.ResourceStorage] != corev1.PersistentVolumeClaimControllerResizeInProgress ||
		!hasCondition(pvc, corev1.PersistentVolumeClaimResizing) {
		if pvc, err = r.patchClaim(ctx, pvc, func(s *corev1.PersistentVolumeClaimStatus) {
			s.Conditions = mergeConditions(s.Conditions, corev1.PersistentVolumeClaimCondition{Type: corev1.PersistentVolumeClaimResizing})
			setStatus(s, corev1.PersistentVolumeClaimControllerResizeInProgress)
			if s.AllocatedResources == nil {
				s.AllocatedResources = corev1.ResourceList{}
			}
			s.AllocatedResources[corev1.ResourceStorage] = newSize
		}); err != nil {
			return fmt.Errorf("mark claim %s as resizing: %w", key, err)
		}
	}
	e.rec.Event(pvc, corev1.EventTypeNormal, EventResizing, "External resizer is resizing volume "+pv.Name)
	got, nodeExpand, err := r.expand(ctx, pv.Spec.CSI.Driver, e.d, pv, newSize)
	if err != nil {
		err = fmt.Errorf("resize volume %q by resizer %q failed: %w", pv.Name, pv.Spec.CSI.Driver, err)
		e.rec.Event(pvc, corev1.EventTypeWarning, EventResizeFailed, err.Error())
		if !finalError(err) {
			r.final.Delete(key)
			return err
		}
		r.final.Store(key, true)
		infeasible := infeasibleError(err)
		if _, perr := r.patchClaim(ctx, pvc, func(s *corev1.PersistentVolumeClaimStatus) {
			s.Conditions = mergeConditions(s.Conditions, corev1.PersistentVolumeClaimCondition{
				Type: corev1.PersistentVolumeClaimControllerResizeError, Message: err.Error()})
			if infeasible {
				setStatus(s, corev1.PersistentVolumeClaimControllerResizeInfeasible)
			}
		}); perr != nil {
			return fmt.Errorf("%w; and recording it on the claim: %w", err, perr)
		}
		if infeasible {
			r.refused.Store(key, &newSize)
			return fmt.Errorf("%w: %w", errInfeasible, err)
		}
		return err
	}
	r.final.Delete(key)
	r.refused.Delete(key)
	if q := pv.Spec.Capacity[corev1.ResourceStorage]; q.Cmp(got) != 0 {
		patch, _ := json.Marshal(map[string]any{
			"metadata": map[string]any{"resourceVersion": pv.ResourceVersion},
			"spec":     map[string]any{"capacity": map[string]any{string(corev1.ResourceStorage): got.String()}},
		})
		if _, err := r.client.CoreV1().PersistentVolumes().Patch(ctx, pv.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("update the capacity of PV %s: %w", pv.Name, err)
		}
	}
	if nodeExpand {
		if _, err := r.patchClaim(ctx, pvc, func(s *corev1.PersistentVolumeClaimStatus) {
			s.Conditions = mergeConditions(s.Conditions, corev1.PersistentVolumeClaimCondition{
				Type:    corev1.PersistentVolumeClaimFileSystemResizePending,
				Message: "Waiting for user to (re-)start a pod to finish file system resize of volume on node."})
			setStatus(s, corev1.PersistentVolumeClaimNodeResizePending)
		}); err != nil {
			return fmt.Errorf("mark claim %s as waiting for node expansion: %w", key, err)
		}
		e.rec.Event(pvc, corev1.EventTypeNormal, EventFSResizeNeeded, "Require file system resize of volume on node")
		return nil
	}
	if _, err := r.patchClaim(ctx, pvc, func(s *corev1.PersistentVolumeClaimStatus) {
		if s.Capacity == nil {
			s.Capacity = corev1.ResourceList{}
		}
		s.Capacity[corev1.ResourceStorage] = got
		s.Conditions = mergeConditions(s.Conditions)
		delete(s.AllocatedResourceStatuses, corev1.ResourceStorage)
	}); err != nil {
		return fmt.Errorf("mark claim %s as resized: %w", key, err)
	}
	e.rec.Event(pvc, corev1.EventTypeNormal, EventResizeSucceeded, "Resize volume succeeded")
	klog.InfoS("Resized volume", "claim", key, "pv", pv.Name, "capacity", got.String())
	return nil
}

// target is the size to expand to, external-resizer's choice between the
// claim's request and the size an earlier attempt recorded in
// allocatedResources (which must finish, or fail for good, first); skip when
// the volume waits for the kubelet.
func (r *Resizer) target(key string, pvc *corev1.PersistentVolumeClaim, pv *corev1.PersistentVolume) (resource.Quantity, bool) {
	spec := pvc.Spec.Resources.Requests[corev1.ResourceStorage]
	pvSize := pv.Spec.Capacity[corev1.ResourceStorage]
	st := pvc.Status.AllocatedResourceStatuses[corev1.ResourceStorage]
	alloc, hasAlloc := pvc.Status.AllocatedResources[corev1.ResourceStorage]
	_, final := r.final.Load(key)
	newSize := spec
	if pvSize.Cmp(spec) < 0 {
		switch st {
		case corev1.PersistentVolumeClaimNodeResizeInfeasible:
			if hasAlloc {
				newSize = alloc
			}
		case corev1.PersistentVolumeClaimNodeResizePending, corev1.PersistentVolumeClaimNodeResizeInProgress:
			if hasAlloc {
				newSize = alloc
			}
			if pvSize.Cmp(newSize) >= 0 {
				return newSize, true
			}
		case corev1.PersistentVolumeClaimControllerResizeInProgress:
			// An uncertain earlier attempt must finish at its size first.
			if !final && hasAlloc {
				newSize = alloc
			}
		}
		// The size the driver refused is not asked again (until the request
		// changes, or once by the next process: external-resizer keeps this
		// in memory too).
		if v, ok := r.refused.Load(key); ok && v.(*resource.Quantity).Cmp(newSize) == 0 {
			return newSize, true
		}
		return newSize, false
	}
	// The PV is already as large as asked: finish what an earlier attempt
	// left unrecorded, or leave node expansion to the kubelet.
	switch st {
	case corev1.PersistentVolumeClaimNodeResizeInProgress, corev1.PersistentVolumeClaimNodeResizePending:
		return newSize, true
	case "":
		if hasAlloc {
			return alloc, false
		}
		if hasCondition(pvc, corev1.PersistentVolumeClaimFileSystemResizePending) {
			return newSize, true
		}
	default:
		if hasAlloc {
			newSize = alloc
		}
	}
	return newSize, false
}

// expand calls ControllerExpandVolume, or, for a driver that expands only
// on nodes, asks the kubelet to (as external-resizer does).
func (r *Resizer) expand(ctx context.Context, name string, d driver.Driver, pv *corev1.PersistentVolume, size resource.Quantity) (resource.Quantity, bool, error) {
	caps, err := r.caps.Get(ctx, name, d)
	if err != nil {
		return resource.Quantity{}, false, status.Error(codes.Unavailable, err.Error())
	}
	if !caps.Controller(csi.ControllerServiceCapability_RPC_EXPAND_VOLUME) {
		ncaps, err := d.NodeGetCapabilities(ctx, &csi.NodeGetCapabilitiesRequest{})
		if err != nil {
			return resource.Quantity{}, false, status.Error(codes.Unavailable, err.Error())
		}
		for _, c := range ncaps.GetCapabilities() {
			if c.GetRpc().GetType() == csi.NodeServiceCapability_RPC_EXPAND_VOLUME {
				return size, true, nil
			}
		}
		return resource.Quantity{}, false, status.Errorf(codes.FailedPrecondition, "driver %s cannot expand volumes (no EXPAND_VOLUME capability)", name)
	}
	req := &csi.ControllerExpandVolumeRequest{
		VolumeId:      pv.Spec.CSI.VolumeHandle,
		CapacityRange: &csi.CapacityRange{RequiredBytes: size.Value()},
	}
	block := pv.Spec.VolumeMode != nil && *pv.Spec.VolumeMode == corev1.PersistentVolumeBlock
	if req.VolumeCapability, err = capability.Volume(pv.Spec.AccessModes, caps.MultiWriter(), block, pv.Spec.CSI.FSType, pv.Spec.MountOptions); err != nil {
		return resource.Quantity{}, false, status.Error(codes.InvalidArgument, err.Error())
	}
	if ref := pv.Spec.CSI.ControllerExpandSecretRef; ref != nil {
		if req.Secrets, err = kube.SecretData(ctx, r.client, ref); err != nil {
			return resource.Quantity{}, false, status.Errorf(codes.Unavailable, "read %v", err)
		}
	}
	cctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	start := time.Now()
	resp, err := d.ControllerExpandVolume(cctx, req)
	opmetrics.Observe(name, "ControllerExpandVolume", start, err)
	if err != nil {
		return resource.Quantity{}, false, err
	}
	got := resp.GetCapacityBytes()
	if got == 0 { // the driver did not say: the request
		got = size.Value()
	}
	if got < size.Value() {
		return resource.Quantity{}, false, status.Errorf(codes.Internal, "driver %s expanded volume %s to %d bytes, less than the %d requested", name, req.VolumeId, got, size.Value())
	}
	q := *resource.NewQuantity(got, resource.BinarySI)
	if got == size.Value() {
		q = size // keep the claim's notation (1Gi, not 1073741824)
	}
	return q, resp.GetNodeExpansionRequired(), nil
}

// patchClaim changes the claim's status with a merge patch of the status
// subresource, guarded by the cached resource version (a conflict is
// retried from the next cache state).
func (r *Resizer) patchClaim(ctx context.Context, pvc *corev1.PersistentVolumeClaim, change func(*corev1.PersistentVolumeClaimStatus)) (*corev1.PersistentVolumeClaim, error) {
	s := *pvc.Status.DeepCopy()
	change(&s)
	st := map[string]any{
		"capacity":                  s.Capacity,
		"conditions":                s.Conditions,
		"allocatedResources":        s.AllocatedResources,
		"allocatedResourceStatuses": s.AllocatedResourceStatuses,
	}
	// A merge patch deletes a map's key with null.
	if old := pvc.Status.AllocatedResourceStatuses; len(old) > 0 {
		m := map[string]any{}
		for k := range old {
			m[string(k)] = nil
		}
		for k, v := range s.AllocatedResourceStatuses {
			m[string(k)] = v
		}
		st["allocatedResourceStatuses"] = m
	}
	if s.Conditions == nil {
		st["conditions"] = nil
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"resourceVersion": pvc.ResourceVersion}, "status": st})
	if err != nil {
		return nil, err
	}
	return r.client.CoreV1().PersistentVolumeClaims(pvc.Namespace).Patch(ctx, pvc.Name, types.MergePatchType, patch, metav1.PatchOptions{}, "status")
}

func setStatus(s *corev1.PersistentVolumeClaimStatus, v corev1.ClaimResourceStatus) {
	if s.AllocatedResourceStatuses == nil {
		s.AllocatedResourceStatuses = map[corev1.ResourceName]corev1.ClaimResourceStatus{}
	}
	s.AllocatedResourceStatuses[corev1.ResourceStorage] = v
}

// resizeConditions are the conditions a resizer owns: every one of them is
// replaced by mergeConditions.
var resizeConditions = map[corev1.PersistentVolumeClaimConditionType]bool{
	corev1.PersistentVolumeClaimResizing:                true,
	corev1.PersistentVolumeClaimFileSystemResizePending: true,
	corev1.PersistentVolumeClaimControllerResizeError:   true,
	corev1.PersistentVolumeClaimNodeResizeError:         true,
}

// mergeConditions replaces the resize conditions in have with add (status
// True), keeping the transition time of one that stays, and every other
// condition as it is.
func mergeConditions(have []corev1.PersistentVolumeClaimCondition, add ...corev1.PersistentVolumeClaimCondition) []corev1.PersistentVolumeClaimCondition {
	var out []corev1.PersistentVolumeClaimCondition
	old := map[corev1.PersistentVolumeClaimConditionType]corev1.PersistentVolumeClaimCondition{}
	for _, c := range have {
		if resizeConditions[c.Type] {
			old[c.Type] = c
		} else {
			out = append(out, c)
		}
	}
	now := metav1.Now()
	for _, c := range add {
		c.Status = corev1.ConditionTrue
		c.LastTransitionTime = now
		if o, ok := old[c.Type]; ok && o.Status == corev1.ConditionTrue {
			c.LastTransitionTime = o.LastTransitionTime
		}
		out = append(out, c)
	}
	return out
}

func hasCondition(pvc *corev1.PersistentVolumeClaim, t corev1.PersistentVolumeClaimConditionType) bool {
	for _, c := range pvc.Status.Conditions {
		if c.Type == t && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

// grpcCode is the gRPC code of err or of the error it wraps; false when
// neither has one.
func grpcCode(err error) (codes.Code, bool) {
	st, ok := status.FromError(errors.Unwrap(err))
	if !ok {
		st, ok = status.FromError(err)
	}
	return st.Code(), ok
}

// finalError: the call has ended and failed (external-resizer's
// IsFinalError); the others may still be working or may work on retry.
func finalError(err error) bool {
	code, ok := grpcCode(err)
	if !ok {
		return false
	}
	switch code {
	case codes.Canceled, codes.DeadlineExceeded, codes.Unavailable, codes.ResourceExhausted, codes.Aborted:
		return false
	}
	return true
}

// infeasibleError: the size itself is refused (external-resizer's
// IsInfeasibleError): the claim's status says ControllerResizeInfeasible,
// and a lower request may be retried.
func infeasibleError(err error) bool {
	code, ok := grpcCode(err)
	if !ok {
		return false
	}
	switch code {
	case codes.InvalidArgument, codes.OutOfRange, codes.NotFound:
		return true
	}
	return false
}
