// Package provisioner is the embedded external-provisioner: it watches
// PersistentVolumeClaims through sig-storage-lib-external-provisioner and
// provisions and deletes volumes by calling a driver's CreateVolume and
// DeleteVolume in-process. The PVs it writes follow external-provisioner's
// rules (names, annotations, secrets, topology, finalizer), so the rest of
// Kubernetes cannot tell the difference.
package provisioner

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v10/controller"

	"github.com/monocsi/monocsi/driver"
	"github.com/monocsi/monocsi/internal/capability"
	"github.com/monocsi/monocsi/internal/drain"
	"github.com/monocsi/monocsi/internal/kube"
	"github.com/monocsi/monocsi/internal/opmetrics"
)

// Options configure the provisioner of one driver.
type Options struct {
	Driver driver.Driver
	// NodeName, when set, makes this a node deployment: only claims whose
	// selected node is NodeName are provisioned, and only PVs accessible from
	// this node are deleted (external-provisioner's --node-deployment).
	NodeName string
	// ExtraCreateMetadata adds the csi.storage.k8s.io/pvc/name, pvc/namespace
	// and pv/name parameters.
	ExtraCreateMetadata bool
	// VolumeNamePrefix is "pvc" when empty: volumes are named <prefix>-<claim UID>.
	VolumeNamePrefix string
	// Timeout bounds every CSI call; 60 s when zero.
	Timeout time.Duration
	// Snapshots reads the VolumeSnapshots claims restore from; nil: such
	// claims fail with a clear Event.
	Snapshots snapclient.Interface
	// Capabilities is the process's cache of drivers' capabilities, shared
	// with the attacher; nil: one of its own.
	Capabilities *capability.Cache
}

// Provisioner implements the library's Provisioner for one CSI driver.
type Provisioner struct {
	opts       Options
	client     kubernetes.Interface
	name       string // the driver's CSI name
	identity   string // storage.kubernetes.io/csiProvisionerIdentity
	caps       capability.Set
	topology   bool          // the driver has VOLUME_ACCESSIBILITY_CONSTRAINTS
	myTopology *csi.Topology // node deployment: this node's segments
	gate       *drain.Gate   // set by Run: every CreateVolume and DeleteVolume goes through it
	l          listers       // set by Run
}

// listers are the process's caches a provisioner reads instead of asking the
// API server (Run sets them from its informers).
type listers struct {
	claims   corelisters.PersistentVolumeClaimLister
	volumes  corelisters.PersistentVolumeLister
	classes  storagelisters.StorageClassLister
	csiNodes storagelisters.CSINodeLister
	nodes    corelisters.NodeLister
	vas      storagelisters.VolumeAttachmentLister // nil unless a driver has PUBLISH_UNPUBLISH_VOLUME
}

var everything = labels.Everything()

var (
	_ controller.Provisioner      = (*Provisioner)(nil)
	_ controller.Qualifier        = (*Provisioner)(nil)
	_ controller.DeletionGuard    = (*Provisioner)(nil)
	_ controller.BlockProvisioner = (*Provisioner)(nil)
)

// New asks the driver who it is and what it can do.
func New(ctx context.Context, client kubernetes.Interface, o Options) (*Provisioner, error) {
	if o.VolumeNamePrefix == "" {
		o.VolumeNamePrefix = "pvc"
	}
	if o.Timeout == 0 {
		o.Timeout = 60 * time.Second
	}
	info, err := o.Driver.GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
	if err != nil {
		return nil, fmt.Errorf("GetPluginInfo: %w", err)
	}
	p := &Provisioner{opts: o, client: client, name: info.GetName()}
	// <start time in ms>-<4 random digits>-<driver>[-<node>], as external-provisioner.
	p.identity = strconv.FormatInt(time.Now().UnixMilli(), 10) + "-" + strconv.Itoa(rand.IntN(10000)) + "-" + p.name
	if o.NodeName != "" {
		p.identity += "-" + o.NodeName
	}
	if o.Capabilities == nil {
		o.Capabilities = &capability.Cache{}
	}
	if p.caps, err = o.Capabilities.Get(ctx, p.name, o.Driver); err != nil {
		return nil, err
	}
	p.topology = p.caps.Plugin(csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS)
	if !p.has(csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME) {
		return nil, fmt.Errorf("driver %s cannot create volumes", p.name)
	}
	if o.NodeName != "" {
		ni, err := o.Driver.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
		if err != nil {
			return nil, fmt.Errorf("NodeGetInfo: %w", err)
		}
		p.myTopology = ni.GetAccessibleTopology()
	}
	return p, nil
}

// Name is the provisioner name a StorageClass uses: the driver's name.
func (p *Provisioner) Name() string { return p.name }

// enter admits a driver call unless Run is shutting down.
func (p *Provisioner) enter() (func(), error) {
	if p.gate == nil {
		return func() {}, nil
	}
	return p.gate.Enter()
}

func (p *Provisioner) has(c csi.ControllerServiceCapability_RPC_Type) bool {
	return p.caps.Controller(c)
}

// ShouldProvision: in a node deployment, only claims scheduled to this node,
// and claims of Immediate-binding classes this node manages to take.
func (p *Provisioner) ShouldProvision(ctx context.Context, pvc *corev1.PersistentVolumeClaim) bool {
	if p.opts.NodeName == "" {
		return true
	}
	switch pvc.Annotations[annSelectedNode] {
	case p.opts.NodeName:
		return true
	case "":
		return p.takeImmediate(ctx, pvc)
	}
	return false
}

// immediateJitter spreads the nodes' attempts to take an Immediate claim.
const immediateJitter = 2 * time.Second

// takeImmediate handles a claim that no scheduler will place (its class binds
// immediately), as external-provisioner --node-deployment-immediate-binding
// does: a node with room for it waits a random moment, then writes itself as
// the selected node; the API's optimistic concurrency lets one node win.
func (p *Provisioner) takeImmediate(ctx context.Context, pvc *corev1.PersistentVolumeClaim) bool {
	if provisionerOf(pvc) != p.name || pvc.Spec.StorageClassName == nil {
		return false
	}
	sc, err := p.l.classes.Get(*pvc.Spec.StorageClassName)
	if err != nil || sc.VolumeBindingMode != nil && *sc.VolumeBindingMode == storagev1.VolumeBindingWaitForFirstConsumer {
		return false
	}
	if terms := sc.AllowedTopologies; len(terms) > 0 && !allowed(terms, p.myTopology.GetSegments()) {
		return false
	}
	if q, ok := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; ok && p.has(csi.ControllerServiceCapability_RPC_GET_CAPACITY) {
		c, err := p.opts.Driver.GetCapacity(ctx, &csi.GetCapacityRequest{AccessibleTopology: p.myTopology, Parameters: sc.Parameters})
		if err != nil || c.GetAvailableCapacity() < q.Value() {
			return false
		}
	}
	select {
	case <-ctx.Done():
		return false
	case <-time.After(rand.N(immediateJitter)):
	}
	// The claim as the cache has it, if nothing changed it since: another
	// node that took it meanwhile made it newer, and the patch fails.
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{
		"resourceVersion": pvc.ResourceVersion,
		"annotations":     map[string]string{annSelectedNode: p.opts.NodeName}}})
	if err != nil {
		return false
	}
	if _, err := p.client.CoreV1().PersistentVolumeClaims(pvc.Namespace).Patch(ctx, pvc.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		klog.V(3).InfoS("Another node took the claim, or it changed", "claim", klog.KObj(pvc), "error", err)
		return false
	}
	klog.V(2).InfoS("Took claim of an Immediate-binding class", "claim", klog.KObj(pvc), "node", p.opts.NodeName)
	return true
}

func provisionerOf(pvc *corev1.PersistentVolumeClaim) string {
	if n, ok := pvc.Annotations["volume.kubernetes.io/storage-provisioner"]; ok {
		return n
	}
	return pvc.Annotations["volume.beta.kubernetes.io/storage-provisioner"]
}

// ShouldDelete: in a node deployment, only PVs accessible from this node.
func (p *Provisioner) ShouldDelete(_ context.Context, pv *corev1.PersistentVolume) bool {
	return p.opts.NodeName == "" || p.pinnedHere(pv)
}

// pinnedHere: the PV's node affinity is satisfied by this node's topology.
func (p *Provisioner) pinnedHere(pv *corev1.PersistentVolume) bool {
	if pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil {
		return false
	}
	for _, term := range pv.Spec.NodeAffinity.Required.NodeSelectorTerms {
		if termMatches(term, p.myTopology.GetSegments()) {
			return true
		}
	}
	return false
}

// owns: the PV is this driver's, as the library decides which PVs its
// controller handles (the provisioned-by annotation, or for a PV made by
// hand, the CSI driver).
func (p *Provisioner) owns(pv *corev1.PersistentVolume) bool {
	if by, ok := pv.Annotations[annProvisionedBy]; ok {
		return by == p.name
	}
	return pv.Spec.CSI != nil && pv.Spec.CSI.Driver == p.name
}

// SupportsBlock: monocsi drivers declare block support through their capabilities check
// at CreateVolume; the claim is passed on and a driver that cannot serve it says so.
func (p *Provisioner) SupportsBlock(context.Context) bool { return true }

// Provision creates the volume and returns its PV.
func (p *Provisioner) Provision(ctx context.Context, o controller.ProvisionOptions) (*corev1.PersistentVolume, controller.ProvisioningState, error) {
	req, params, err := p.createRequest(ctx, o)
	if err != nil {
		return nil, controller.ProvisioningFinished, err
	}
	leave, err := p.enter()
	if err != nil {
		return nil, controller.ProvisioningInBackground, err
	}
	defer leave()
	cctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	start := time.Now()
	resp, err := p.opts.Driver.CreateVolume(cctx, req)
	opmetrics.Observe(p.name, "CreateVolume", start, err)
	if err != nil {
		// The library prefixes "failed to provision volume with StorageClass":
		// the event reads exactly as external-provisioner's.
		return nil, provisioningState(err, o.SelectedNode != nil), err
	}
	vol := resp.GetVolume()
	requested := req.GetCapacityRange().GetRequiredBytes()
	size := vol.GetCapacityBytes()
	if size == 0 {
		size = requested
	}
	if size < requested {
		// The driver made a smaller volume than asked: undo, and fail.
		return p.undo(ctx, o, req, vol, fmt.Errorf("volume %s has %d bytes, %d requested", vol.GetVolumeId(), size, requested))
	}
	pv, err := p.buildPV(o, req, params, vol, size)
	if err != nil {
		return p.undo(ctx, o, req, vol, fmt.Errorf("volume %s created, but not its PV: %w", vol.GetVolumeId(), err))
	}
	klog.V(2).InfoS("Provisioned", "driver", p.name, "claim", klog.KObj(o.PVC), "pv", pv.Name, "bytes", size)
	return pv, controller.ProvisioningFinished, nil
}

// undo deletes a volume Provision created but cannot hand on as a PV, with
// the mount options that PV would have had, and fails with why. If the
// deletion fails too, the library retries the claim (ProvisioningInBackground),
// which reaches the same volume again.
func (p *Provisioner) undo(ctx context.Context, o controller.ProvisionOptions, req *csi.CreateVolumeRequest, vol *csi.Volume, why error) (*corev1.PersistentVolume, controller.ProvisioningState, error) {
	err := p.deleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId(), Secrets: req.GetSecrets()},
		driver.PVInfo{MountOptions: o.StorageClass.MountOptions})
	if err != nil {
		return nil, controller.ProvisioningInBackground, fmt.Errorf("%w; deleting the volume failed: %w", why, err)
	}
	return nil, controller.ProvisioningFinished, why
}

// deleteVolume is the provisioner's only way to delete a volume: through
// DeleteVolumeForPV when the driver implements driver.DeleteWithPV, so it
// knows the PV's mount options, else through DeleteVolume, as
// external-provisioner would call it. It bounds the call by the timeout and
// records it in the operation metrics.
func (p *Provisioner) deleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest, pv driver.PVInfo) error {
	leave, err := p.enter()
	if err != nil {
		return err
	}
	defer leave()
	ctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	start := time.Now()
	if d, ok := p.opts.Driver.(driver.DeleteWithPV); ok {
		_, err = d.DeleteVolumeForPV(ctx, req, pv)
	} else {
		_, err = p.opts.Driver.DeleteVolume(ctx, req)
	}
	opmetrics.Observe(p.name, "DeleteVolume", start, err)
	return err
}

// provisioningState tells the library whether the driver may still be working
// (retry with the same request) or the error is final, as external-provisioner does.
func provisioningState(err error, selectedNode bool) controller.ProvisioningState {
	st, ok := status.FromError(err)
	if !ok {
		return controller.ProvisioningInBackground
	}
	switch st.Code() {
	case codes.Canceled, codes.DeadlineExceeded, codes.Unavailable, codes.Aborted:
		return controller.ProvisioningInBackground
	case codes.ResourceExhausted:
		if selectedNode {
			return controller.ProvisioningReschedule
		}
	}
	return controller.ProvisioningFinished
}

// Delete deletes the PV's volume (not the PV object: the library does that).
func (p *Provisioner) Delete(ctx context.Context, pv *corev1.PersistentVolume) error {
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != p.name {
		return &controller.IgnoredError{Reason: "the PV is not a volume of " + p.name}
	}
	if p.has(csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME) {
		vas, err := p.l.vas.List(everything)
		if err != nil {
			return err
		}
		for _, va := range vas {
			if n := va.Spec.Source.PersistentVolumeName; n != nil && *n == pv.Name {
				return fmt.Errorf("PV %s is still attached to node %s (VolumeAttachment %s)", pv.Name, va.Spec.NodeName, va.Name)
			}
		}
	}
	secrets, err := p.deletionSecrets(ctx, pv)
	if err != nil {
		return err
	}
	err = p.deleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: pv.Spec.CSI.VolumeHandle, Secrets: secrets},
		driver.PVInfo{MountOptions: pv.Spec.MountOptions})
	if err != nil {
		return err
	}
	klog.V(2).InfoS("Deleted volume", "driver", p.name, "pv", pv.Name, "volume", pv.Spec.CSI.VolumeHandle)
	return nil
}

// deletionSecrets reads the provisioner secret remembered on the PV.
func (p *Provisioner) deletionSecrets(ctx context.Context, pv *corev1.PersistentVolume) (map[string]string, error) {
	name, ns := pv.Annotations[annDeletionName], pv.Annotations[annDeletionNS]
	if name == "" && ns == "" {
		return nil, nil
	}
	return p.readSecret(ctx, &corev1.SecretReference{Name: name, Namespace: ns})
}

func (p *Provisioner) readSecret(ctx context.Context, ref *corev1.SecretReference) (map[string]string, error) {
	s, err := kube.SecretData(ctx, p.client, ref)
	if err != nil {
		return nil, fmt.Errorf("read %w", err)
	}
	return s, nil
}

// contentSource resolves a claim's data source: a VolumeSnapshot
// (snapshotSource), or a clone source: a bound claim of the same class in
// the same namespace, whose PV belongs to this driver.
func (p *Provisioner) contentSource(ctx context.Context, pvc *corev1.PersistentVolumeClaim, sc *storagev1.StorageClass, size int64) (*csi.VolumeContentSource, error) {
	ds := pvc.Spec.DataSourceRef
	if ds == nil && pvc.Spec.DataSource != nil {
		ds = &corev1.TypedObjectReference{APIGroup: pvc.Spec.DataSource.APIGroup, Kind: pvc.Spec.DataSource.Kind, Name: pvc.Spec.DataSource.Name}
	}
	if ds == nil {
		return nil, nil
	}
	group := ""
	if ds.APIGroup != nil {
		group = *ds.APIGroup
	}
	switch {
	case group == "" && ds.Kind == "PersistentVolumeClaim":
	case group == snapv1.GroupName && ds.Kind == "VolumeSnapshot":
		return p.snapshotSource(ctx, pvc, ds, size)
	default:
		return nil, fmt.Errorf("data source %s %s.%s is not supported", ds.Name, ds.Kind, group)
	}
	if !p.has(csi.ControllerServiceCapability_RPC_CLONE_VOLUME) {
		return nil, fmt.Errorf("driver %s does not support cloning (data source PersistentVolumeClaim %s)", p.name, ds.Name)
	}
	if ds.Namespace != nil && *ds.Namespace != pvc.Namespace {
		return nil, fmt.Errorf("clone source %s/%s must be in the claim's namespace", *ds.Namespace, ds.Name)
	}
	src, err := p.claim(ctx, pvc.Namespace, ds.Name)
	if err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("clone source claim %s/%s not found", pvc.Namespace, ds.Name)
		}
		return nil, err
	}
	if src.Status.Phase != corev1.ClaimBound || src.Spec.VolumeName == "" {
		return nil, fmt.Errorf("clone source claim %s is not bound", ds.Name)
	}
	if src.Spec.StorageClassName == nil || *src.Spec.StorageClassName != sc.Name {
		return nil, fmt.Errorf("clone source claim %s must use StorageClass %s", ds.Name, sc.Name)
	}
	if q, ok := src.Spec.Resources.Requests[corev1.ResourceStorage]; ok && q.Value() > size {
		return nil, fmt.Errorf("the claim asks for %d bytes, less than its clone source %s (%s)", size, ds.Name, q.String())
	}
	pv, err := p.volume(ctx, src.Spec.VolumeName)
	if err != nil {
		return nil, err
	}
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != p.name {
		return nil, fmt.Errorf("clone source claim %s is not a volume of %s", ds.Name, p.name)
	}
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: pv.Spec.CSI.VolumeHandle}}}, nil
}

func quantity(bytes int64) resource.Quantity { return *resource.NewQuantity(bytes, resource.BinarySI) }

// claim is a claim from the cache, or from the API server when the cache
// does not have it: a node's cache holds only the claims it provisions.
func (p *Provisioner) claim(ctx context.Context, namespace, name string) (*corev1.PersistentVolumeClaim, error) {
	c, err := p.l.claims.PersistentVolumeClaims(namespace).Get(name)
	if apierrors.IsNotFound(err) {
		return p.client.CoreV1().PersistentVolumeClaims(namespace).Get(ctx, name, metav1.GetOptions{})
	}
	return c, err
}

// volume is claim for PVs.
func (p *Provisioner) volume(ctx context.Context, name string) (*corev1.PersistentVolume, error) {
	v, err := p.l.volumes.Get(name)
	if apierrors.IsNotFound(err) {
		return p.client.CoreV1().PersistentVolumes().Get(ctx, name, metav1.GetOptions{})
	}
	return v, err
}
