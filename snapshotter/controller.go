package snapshotter

import (
	"context"
	"sync"
	"time"

	clientset "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	snapinformers "github.com/kubernetes-csi/external-snapshotter/client/v8/informers/externalversions"
	common "github.com/kubernetes-csi/external-snapshotter/v8/pkg/common-controller"
	"github.com/kubernetes-csi/external-snapshotter/v8/pkg/metrics"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
)

// RunController is the common snapshot-controller (there must be one per
// cluster: the caller runs it under its Lease) until ctx is done, returning
// once its workers have. It labels the contents of node-local volumes with
// ManagedByLabel (--enable-distributed-snapshotting) so that the node that
// holds the volume takes them, and keeps restores in the source's volume
// mode (--prevent-volume-mode-conversion, upstream's default).
//
// It reads every claim, PV and node of the cluster, which the roles'
// filtered caches do not hold: it has informers of its own, made and
// stopped with it.
func RunController(ctx context.Context, client kubernetes.Interface, snap clientset.Interface) error {
	if err := prepare(); err != nil {
		return err
	}
	sf := snapinformers.NewSharedInformerFactory(snap, Resync)
	// Unstripped (kube.Strip): it writes claims back with Update.
	cf := informers.NewSharedInformerFactory(client, Resync)
	limiter := func() workqueue.TypedRateLimiter[string] {
		return workqueue.NewTypedItemExponentialFailureRateLimiter[string](100*time.Millisecond, retryMax)
	}
	ctrl := common.NewCSISnapshotCommonController(snap, client,
		sf.Snapshot().V1().VolumeSnapshots(), sf.Snapshot().V1().VolumeSnapshotContents(), sf.Snapshot().V1().VolumeSnapshotClasses(),
		nil, nil, nil,
		cf.Core().V1().PersistentVolumeClaims(), cf.Core().V1().PersistentVolumes(), cf.Core().V1().Nodes(),
		metrics.NewMetricsManager(), Resync,
		limiter(), limiter(), limiter(), limiter(),
		true, true, false)
	sf.Start(ctx.Done())
	cf.Start(ctx.Done())
	defer sf.Shutdown()
	defer cf.Shutdown()
	klog.InfoS("Starting snapshot-controller")
	var wg sync.WaitGroup
	ctrl.Run(Workers, ctx.Done(), &wg)
	wg.Wait()
	return nil
}
