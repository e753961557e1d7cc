package provisioner

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v10/controller"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v10/controller/metrics"
)

// Workers is how many claims each driver's controller handles at once
// (external-provisioner's --worker-threads default).
const Workers = 100

// Run runs one ProvisionController per provisioner until ctx is done. All of
// them share one informer cache of claims, volumes and classes: one copy of
// the cluster's PVCs per process, not per driver. The library's own leader
// election is off: a process elects once for all its drivers (or, in a node
// deployment, needs none).
// The library's metrics (controller_persistentvolume*) are registered in
// reg; the caller registers opmetrics.Operations.
func Run(ctx context.Context, client kubernetes.Interface, provs []*Provisioner, reg prometheus.Registerer) error {
	m := metrics.New("controller")
	for _, c := range []prometheus.Collector{
		m.PersistentVolumeClaimProvisionTotal, m.PersistentVolumeClaimProvisionFailedTotal, m.PersistentVolumeClaimProvisionDurationSeconds,
		m.PersistentVolumeDeleteTotal, m.PersistentVolumeDeleteFailedTotal, m.PersistentVolumeDeleteDurationSeconds} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	factory := informers.NewSharedInformerFactory(client, 15*time.Minute)
	claims := factory.Core().V1().PersistentVolumeClaims().Informer()
	volumes := factory.Core().V1().PersistentVolumes().Informer()
	classes := factory.Storage().V1().StorageClasses().Informer()
	var ctrls []*controller.ProvisionController
	for _, p := range provs {
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
	for i, c := range ctrls {
		klog.InfoS("Starting provisioner", "driver", provs[i].Name(), "node", provs[i].opts.NodeName)
		go c.Run(ctx)
	}
	<-ctx.Done()
	factory.Shutdown()
	return nil
}
