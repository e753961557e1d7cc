// Package snapshotter is the embedded csi-snapshotter and, optionally, the
// common snapshot-controller: it runs external-snapshotter's own controllers
// (pkg/sidecar-controller, pkg/common-controller, pinned) in-process, with
// the CSI calls going to the driver values of this process instead of a
// socket. The sidecar part creates and deletes the snapshots of
// VolumeSnapshotContents through CreateSnapshot and DeleteSnapshot and
// writes readyToUse, restoreSize, snapshotHandle and creationTime, with
// csi-snapshotter's annotations and finalizers; the snapshot-controller
// binds VolumeSnapshots to contents.
package snapshotter

import (
	"context"
	"fmt"
	"sync"
	"time"

	clientset "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	snapshotscheme "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned/scheme"
	snapinformers "github.com/kubernetes-csi/external-snapshotter/client/v8/informers/externalversions"
	"github.com/kubernetes-csi/external-snapshotter/v8/pkg/features"
	sidecar "github.com/kubernetes-csi/external-snapshotter/v8/pkg/sidecar-controller"
	"github.com/kubernetes-csi/external-snapshotter/v8/pkg/utils"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/monocsi/monocsi/driver"
	"github.com/monocsi/monocsi/internal/capability"
)

// Defaults of csi-snapshotter's flags.
const (
	Timeout    = time.Minute // --timeout
	Workers    = 10          // --worker-threads
	Resync     = 15 * time.Minute
	NamePrefix = "snapshot" // --snapshot-name-prefix
	retryStart = time.Second
	retryMax   = 5 * time.Minute
)

// ManagedByLabel is the label the snapshot-controller (with
// --enable-distributed-snapshotting) gives a content whose volume is
// reachable from one node only: that node's csi-snapshotter
// (--node-deployment) takes it.
const ManagedByLabel = utils.VolumeSnapshotContentManagedByLabel

var setup sync.Once

// prepare lets Events name snapshot objects, and makes external-snapshotter's
// controllers wait for their workers when stopped
// (ReleaseLeaderElectionOnExit): a replica that loses its Lease must not act
// beside the next leader.
func prepare() error {
	var err error
	setup.Do(func() {
		err = snapshotscheme.AddToScheme(scheme.Scheme)
		if err == nil {
			err = utilfeature.DefaultMutableFeatureGate.SetFromMap(map[string]bool{
				string(features.ReleaseLeaderElectionOnExit): true,
				string(features.VolumeGroupSnapshot):         false,
			})
		}
	})
	return err
}

// Sidecar is the csi-snapshotter of this process's drivers. In a node role
// it sees only the contents labelled ManagedByLabel=<its node>.
type Sidecar struct {
	client  kubernetes.Interface
	snap    clientset.Interface
	node    string
	caps    *capability.Cache
	extra   bool
	life    context.Context
	factory snapinformers.SharedInformerFactory
	// contents is the content informer's factory: in a node role it is
	// filtered by ManagedByLabel, classes are not.
	contents snapinformers.SharedInformerFactory
}

// Options configure a Sidecar.
type Options struct {
	// Node makes this a node deployment (csi-snapshotter --node-deployment).
	Node string
	// Capabilities is the process's cache; nil: one of its own.
	Capabilities *capability.Cache
	// ExtraCreateMetadata passes the VolumeSnapshot's and content's names
	// to CreateSnapshot (csi.storage.k8s.io/volumesnapshot/name, ...);
	// off, as csi-snapshotter's --extra-create-metadata: monocsi's drivers
	// refuse parameters they do not know.
	ExtraCreateMetadata bool
}

// NewSidecar returns a snapshotter whose informers run until ctx ends (the
// leader's term, or the process): drivers come and go within it.
func NewSidecar(ctx context.Context, client kubernetes.Interface, snap clientset.Interface, o Options) (*Sidecar, error) {
	if err := prepare(); err != nil {
		return nil, err
	}
	s := &Sidecar{client: client, snap: snap, node: o.Node, caps: o.Capabilities, extra: o.ExtraCreateMetadata, life: ctx}
	if s.caps == nil {
		s.caps = &capability.Cache{}
	}
	s.factory = snapinformers.NewSharedInformerFactory(snap, Resync)
	s.contents = s.factory
	if o.Node != "" {
		sel := labels.Set{ManagedByLabel: o.Node}.AsSelector().String()
		s.contents = snapinformers.NewSharedInformerFactoryWithOptions(snap, Resync,
			snapinformers.WithTweakListOptions(func(lo *metav1.ListOptions) { lo.LabelSelector = sel }))
	}
	return s, nil
}

// Run handles the contents of driver name (spec.driver) until ctx is done,
// and returns once every worker has: one controller per driver, as one
// csi-snapshotter per driver. A driver without CREATE_DELETE_SNAPSHOT is
// run too: its contents get an error and an Event that say so.
func (s *Sidecar) Run(ctx context.Context, name string, d driver.Driver) error {
	ctrl := sidecar.NewCSISnapshotSideCarController(s.snap, s.client, name,
		s.contents.Snapshot().V1().VolumeSnapshotContents(), s.factory.Snapshot().V1().VolumeSnapshotClasses(),
		&csiCalls{name: name, d: d, caps: s.caps}, nil,
		Timeout, Resync, NamePrefix, -1, "groupsnapshot", -1, s.extra,
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](retryStart, retryMax),
		false, nil, nil,
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](retryStart, retryMax))
	s.factory.Start(s.life.Done())
	s.contents.Start(s.life.Done())
	klog.InfoS("Starting snapshotter", "driver", name, "node", s.node)
	var wg sync.WaitGroup
	ctrl.Run(Workers, ctx.Done(), &wg)
	wg.Wait()
	return nil
}

// CheckCRDs tells whether the snapshot API is served: without it the
// snapshotter waits instead of failing the role.
func CheckCRDs(ctx context.Context, snap clientset.Interface) error {
	if _, err := snap.SnapshotV1().VolumeSnapshotClasses().List(ctx, metav1.ListOptions{Limit: 1}); err != nil {
		return fmt.Errorf("the snapshot.storage.k8s.io/v1 API (VolumeSnapshot CRDs): %w", err)
	}
	return nil
}
