package provisioner

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v10/controller"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v10/controller/metrics"

	"github.com/monocsi/monocsi/driver"
	"github.com/monocsi/monocsi/internal/drain"
)

// Workers is how many claims each driver's controller handles at once
// (external-provisioner's --worker-threads default).
const Workers = 100

// libMetrics are the library's metrics (controller_persistentvolume*), one
// set per process however often Run starts.
var libMetrics = metrics.New("controller")

// Run runs one ProvisionController per provisioner until ctx is done. All of
// them share one informer cache of claims, volumes and classes: one copy of
// the cluster's PVCs per process, not per driver. The library's own leader
// election is off: a process elects once for all its drivers (or, in a node
// deployment, needs none). synced, if set, is called once the caches are
// filled and the controllers run.
//
// Run returns only after every CSI call it started has returned: a replica
// giving up its Lease must not act beside the next leader. The library's
// metrics are registered in reg; the caller registers opmetrics.Operations.
func Run(ctx context.Context, client kubernetes.Interface, provs []*Provisioner, reg prometheus.Registerer, synced func()) error {
	m := libMetrics
	for _, c := range []prometheus.Collector{
		m.PersistentVolumeClaimProvisionTotal, m.PersistentVolumeClaimProvisionFailedTotal, m.PersistentVolumeClaimProvisionDurationSeconds,
		m.PersistentVolumeDeleteTotal, m.PersistentVolumeDeleteFailedTotal, m.PersistentVolumeDeleteDurationSeconds} {
		var already prometheus.AlreadyRegisteredError
		if err := reg.Register(c); err != nil && !(errors.As(err, &already) && already.ExistingCollector == c) {
			return err
		}
	}
	gate := &drain.Gate{}
	factory := informers.NewSharedInformerFactory(client, 15*time.Minute)
	claims := factory.Core().V1().PersistentVolumeClaims().Informer()
	volumes := factory.Core().V1().PersistentVolumes().Informer()
	classes := factory.Storage().V1().StorageClasses().Informer()
	var ctrls []*controller.ProvisionController
	for _, p := range provs {
		p.gate = gate
		ctrls = append(ctrls, controller.NewProvisionController(klog.FromContext(ctx), client, p.Name(), p,
			controller.LeaderElection(false),
			controller.Threadiness(Workers),
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
		))
	}
	factory.Start(ctx.Done())
	var running sync.WaitGroup
	for i, c := range ctrls {
		klog.InfoS("Starting provisioner", "driver", provs[i].Name(), "node", provs[i].opts.NodeName)
		running.Go(func() { c.Run(ctx) })
	}
	if factory.WaitForCacheSync(ctx.Done()); ctx.Err() == nil && synced != nil {
		synced()
	}
	<-ctx.Done()
	// The library's workers outlive ctx until their current claim is done;
	// every driver call goes through the gate, so closing it is the wait.
	gate.Close()
	err := drainDrivers(provs)
	running.Wait()
	factory.Shutdown()
	return err
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
