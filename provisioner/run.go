package provisioner

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v10/controller"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v10/controller/metrics"

	"github.com/monocsi/monocsi/driver"
	"github.com/monocsi/monocsi/internal/drain"
	"github.com/monocsi/monocsi/internal/kube"
)

// Workers is how many claims each central driver's controller handles at
// once (external-provisioner's --worker-threads default); NodeWorkers is
// the same for a node's node-local drivers, which serve one node's claims
// with calls that take milliseconds (each worker is a goroutine whose
// stack the process keeps, and the library runs one set for claims and
// one for PVs).
const (
	Workers     = 100
	NodeWorkers = 10
)

// libMetrics are the library's metrics (controller_persistentvolume*), one
// set per process however often Run starts.
var libMetrics = metrics.New("controller")

// Run runs one ProvisionController per provisioner until ctx is done. All of
// them read the process's informers (inf, the caller's, shared with the
// other roles): one copy of each kind per process, not per driver or role,
// holding only the claims and PVs the roles need once the caller has called
// Filter. The library's own leader election is off: a process elects once
// for all its drivers (or, in a node deployment, needs none). synced, if
// set, is called once the caches are filled and the controllers run.
//
// Run returns only after every CSI call it started has returned: a replica
// giving up its Lease must not act beside the next leader. The library's
// metrics are registered in reg; the caller registers opmetrics.Operations.
// Each driver's controller handles up to workers claims and as many PVs at
// once.
func Run(ctx context.Context, client kubernetes.Interface, inf *kube.Informers, provs []*Provisioner, workers int, reg prometheus.Registerer, synced func()) error {
	m := libMetrics
	for _, c := range []prometheus.Collector{
		m.PersistentVolumeClaimProvisionTotal, m.PersistentVolumeClaimProvisionFailedTotal, m.PersistentVolumeClaimProvisionDurationSeconds,
		m.PersistentVolumeDeleteTotal, m.PersistentVolumeDeleteFailedTotal, m.PersistentVolumeDeleteDurationSeconds} {
		var already prometheus.AlreadyRegisteredError
		if err := reg.Register(c); err != nil && !(errors.As(err, &already) && already.ExistingCollector == c) {
			return err
		}
	}
	if len(provs) == 0 { // nothing to provision: no cache either
		if synced != nil {
			synced()
		}
		<-ctx.Done()
		return nil
	}
	l, filled := useCaches(inf, provs)
	core := inf.Core().V1()
	claims := &libInformer{SharedIndexInformer: core.PersistentVolumeClaims().Informer()}
	volumes := &libInformer{SharedIndexInformer: core.PersistentVolumes().Informer()}
	defer claims.removeHandlers()
	defer volumes.removeHandlers()
	classes := inf.Storage().V1().StorageClasses().Informer()
	gate := &drain.Gate{}
	var ctrls []*controller.ProvisionController
	for _, p := range provs {
		p.gate = gate
		ctrls = append(ctrls, controller.NewProvisionController(klog.FromContext(ctx), client, p.Name(), p,
			controller.LeaderElection(false),
			controller.Threadiness(workers),
			// Retry forever, 1 s doubling to 5 min, as external-provisioner.
			controller.FailedProvisionThreshold(0),
			controller.FailedDeleteThreshold(0),
			controller.RateLimiter(workqueue.NewTypedItemExponentialFailureRateLimiter[any](time.Second, 5*time.Minute)),
			controller.CreateProvisionedPVLimiter(workqueue.NewTypedItemExponentialFailureRateLimiter[any](time.Second, 5*time.Minute)),
			controller.AddFinalizer(true),
			controller.MetricsInstance(m),
			controller.ClaimsInformer(claims),
			controller.VolumesInformer(volumes),
			controller.ClassesInformer(classes),
			controller.NodesLister(l.nodes),
		))
	}
	inf.Start()
	var running sync.WaitGroup
	for i, c := range ctrls {
		klog.InfoS("Starting provisioner", "driver", provs[i].Name(), "node", provs[i].opts.NodeName)
		running.Go(func() { c.Run(ctx) })
	}
	if cache.WaitForCacheSync(ctx.Done(), filled...) && synced != nil {
		synced()
	}
	<-ctx.Done()
	// The library's workers outlive ctx until their current claim is done;
	// every driver call goes through the gate, so closing it is the wait.
	gate.Close()
	err := drainDrivers(provs)
	running.Wait()
	return err
}

// useCaches requests the informers the provisioners read, gives them their
// listers, and returns the listers and what tells that they are filled.
func useCaches(inf *kube.Informers, provs []*Provisioner) (listers, []cache.InformerSynced) {
	core, storage := inf.Core().V1(), inf.Storage().V1()
	l := listers{
		claims: core.PersistentVolumeClaims().Lister(), volumes: core.PersistentVolumes().Lister(),
		classes: storage.StorageClasses().Lister(), csiNodes: storage.CSINodes().Lister(), nodes: core.Nodes().Lister(),
	}
	filled := []cache.InformerSynced{core.PersistentVolumeClaims().Informer().HasSynced, core.PersistentVolumes().Informer().HasSynced,
		storage.StorageClasses().Informer().HasSynced, storage.CSINodes().Informer().HasSynced, core.Nodes().Informer().HasSynced}
	for _, p := range provs {
		// Delete waits for a driver's attachments to go; only then are
		// VolumeAttachments watched (the node role may not read them).
		if p.caps.Controller(csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME) && l.vas == nil {
			l.vas = storage.VolumeAttachments().Lister()
			filled = append(filled, storage.VolumeAttachments().Informer().HasSynced)
		}
	}
	for _, p := range provs {
		p.l = l
	}
	return l, filled
}

// Filter sets up the claim and PV informers of inf to hold only what the
// roles of the process need, so its memory grows with its drivers' volumes,
// not with the cluster's; in a node deployment, with the node's own volumes.
// PVs: those of the provisioners provs (volumeFilter) and those alsoVolumes
// accepts (another role's, nil: none). Claims: those provs may provision
// (claimFilter), and those bound to a PV of the cache (what the resizer
// expands, statically provisioned volumes included); claims are listed once
// the PVs are. It must be called once, before any role requests those
// informers. Objects left out are read from the API server when needed (a
// clone source).
func Filter(inf *kube.Informers, provs []*Provisioner, alsoVolumes func(*corev1.PersistentVolume) bool) error {
	node := ""
	for i, p := range provs {
		if i > 0 && p.opts.NodeName != node {
			return fmt.Errorf("provisioners of nodes %q and %q in one process", node, p.opts.NodeName)
		}
		node = p.opts.NodeName
	}
	volumes := volumeFilter(provs)
	if alsoVolumes != nil {
		volumes = func(pv *corev1.PersistentVolume) bool { return volumeFilter(provs)(pv) || alsoVolumes(pv) }
	}
	if err := inf.FilterVolumes(volumes); err != nil {
		return err
	}
	pvs := inf.Core().V1().PersistentVolumes()
	cached, provisionable := pvs.Lister(), claimFilter(node, provs)
	return inf.FilterClaims(func(c *corev1.PersistentVolumeClaim) bool {
		if c.Spec.VolumeName != "" {
			if _, err := cached.Get(c.Spec.VolumeName); err == nil {
				return true
			}
		}
		return provisionable(c)
	}, pvs.Informer().HasSynced)
}

// claimFilter is what provisioners keep of claims: those of their drivers
// (the storage-provisioner annotation the library goes by). A node
// deployment keeps only those scheduled to its node (the selected-node
// annotation) and those no scheduler places (no selected node: Immediate
// binding, see takeImmediate); one scheduled elsewhere, or taken by another
// node, is dropped.
func claimFilter(node string, provs []*Provisioner) func(*corev1.PersistentVolumeClaim) bool {
	mine := map[string]bool{}
	for _, p := range provs {
		mine[p.name] = true
	}
	return func(c *corev1.PersistentVolumeClaim) bool {
		if !mine[provisionerOf(c)] {
			return false
		}
		sel := c.Annotations[annSelectedNode]
		return node == "" || sel == node || sel == ""
	}
}

// volumeFilter is what provisioners keep of PVs: their drivers' (the
// library adds and removes its finalizer on exactly these), in a node
// deployment only those it would delete (ShouldDelete: node affinity this
// node's topology satisfies), the node's own volumes.
func volumeFilter(provs []*Provisioner) func(*corev1.PersistentVolume) bool {
	return func(pv *corev1.PersistentVolume) bool {
		for _, p := range provs {
			if p.owns(pv) && (p.opts.NodeName == "" || p.pinnedHere(pv)) {
				return true
			}
		}
		return false
	}
}

// libInformer hands one of the process's informers to a library controller.
// The library adds its claim UID index to every informer it is given: an
// index another controller added first (one per driver, or an earlier start
// of the leader's work) is no conflict. The event handlers it adds are
// removed when Run returns: the informer outlives the controller.
type libInformer struct {
	cache.SharedIndexInformer
	mu   sync.Mutex
	regs []cache.ResourceEventHandlerRegistration
}

func (i *libInformer) AddIndexers(ix cache.Indexers) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	have := i.GetIndexer().GetIndexers()
	missing := cache.Indexers{}
	for name, f := range ix {
		if _, ok := have[name]; !ok {
			missing[name] = f
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return i.SharedIndexInformer.AddIndexers(missing)
}

func (i *libInformer) AddEventHandler(h cache.ResourceEventHandler) (cache.ResourceEventHandlerRegistration, error) {
	return i.record(i.SharedIndexInformer.AddEventHandler(h))
}

func (i *libInformer) AddEventHandlerWithResyncPeriod(h cache.ResourceEventHandler, resync time.Duration) (cache.ResourceEventHandlerRegistration, error) {
	return i.record(i.SharedIndexInformer.AddEventHandlerWithResyncPeriod(h, resync))
}

func (i *libInformer) AddEventHandlerWithOptions(h cache.ResourceEventHandler, o cache.HandlerOptions) (cache.ResourceEventHandlerRegistration, error) {
	return i.record(i.SharedIndexInformer.AddEventHandlerWithOptions(h, o))
}

func (i *libInformer) record(r cache.ResourceEventHandlerRegistration, err error) (cache.ResourceEventHandlerRegistration, error) {
	if err == nil {
		i.mu.Lock()
		i.regs = append(i.regs, r)
		i.mu.Unlock()
	}
	return r, err
}

func (i *libInformer) removeHandlers() {
	i.mu.Lock()
	defer i.mu.Unlock()
	for _, r := range i.regs {
		if err := i.RemoveEventHandler(r); err != nil {
			klog.V(4).InfoS("Removing an event handler", "err", err)
		}
	}
	i.regs = nil
}

// DrainTimeout bounds the wait for work that cancelled driver calls left
// running (driver.Drainer). Past it the process must exit without releasing
// its Lease: the work dies with it, and the Lease expires.
const DrainTimeout = 2 * time.Minute

func drainDrivers(provs []*Provisioner) error {
	ctx, cancel := context.WithTimeout(context.Background(), DrainTimeout)
	defer cancel()
	var errs []error
	for _, p := range provs {
		if d, ok := p.opts.Driver.(driver.Drainer); ok {
			if err := d.Drain(ctx); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", p.name, err))
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", drain.ErrStuck, errors.Join(errs...))
	}
	return nil
}
