package kube

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	coreinformers "k8s.io/client-go/informers/core/v1"
	storageinformers "k8s.io/client-go/informers/storage/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Resync is how often the informers hand every cached object to their
// handlers again (the attacher's retry net; the provisioner library asks
// for its own 15 minutes).
const Resync = 10 * time.Minute

// Informers is a process's one view of the cluster: a SharedInformerFactory
// that every role (provisioner, attacher, flex wiring) reads through, so each
// kind is cached once per process, stripped of what no role reads (Strip).
// The caller makes it and passes it to the roles; a role requests the
// informers it reads, then calls Start.
type Informers struct {
	informers.SharedInformerFactory
	client kubernetes.Interface
	ctx    context.Context
	node   string
}

// NewInformers returns the cluster-wide cache of the controller role. Its
// informers run until ctx ends, whichever role started them: a role that
// stops (a failed start of the leader's work, retried) leaves them filled
// for the next attempt.
func NewInformers(ctx context.Context, client kubernetes.Interface) *Informers {
	return &Informers{
		SharedInformerFactory: informers.NewSharedInformerFactoryWithOptions(client, Resync, informers.WithTransform(Strip)),
		client:                client, ctx: ctx,
	}
}

// NodeInformers returns the cache of a node role: Nodes and CSINodes are
// only this node's (a field selector, so the API server sends no other), and
// FilterClaims and FilterVolumes keep claims and PVs to the node's own.
func NodeInformers(ctx context.Context, client kubernetes.Interface, node string) *Informers {
	i := NewInformers(ctx, client)
	i.node = node
	onlyNode := func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", node).String()
	}
	i.InformerFor(&corev1.Node{}, func(c kubernetes.Interface, resync time.Duration) cache.SharedIndexInformer {
		return coreinformers.NewFilteredNodeInformer(c, resync, cache.Indexers{}, onlyNode)
	})
	i.InformerFor(&storagev1.CSINode{}, func(c kubernetes.Interface, resync time.Duration) cache.SharedIndexInformer {
		return storageinformers.NewFilteredCSINodeInformer(c, resync, cache.Indexers{}, onlyNode)
	})
	return i
}

// Node is the node a node role's cache is scoped to; empty for the controller's.
func (i *Informers) Node() string { return i.node }

// Start starts every informer requested so far that is not running yet; they
// run until the context given to NewInformers ends.
func (i *Informers) Start() { i.SharedInformerFactory.Start(i.ctx.Done()) }

// FilterClaims makes the claim informer keep only the claims keep accepts:
// others never reach the store, and a claim that stops being accepted is
// deleted from it (its handlers see a delete). It must be called before the
// claim informer is first requested. Claims are listed only once the
// informers after are filled (keep reads them).
func (i *Informers) FilterClaims(keep func(*corev1.PersistentVolumeClaim) bool, after ...cache.InformerSynced) error {
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return i.client.CoreV1().PersistentVolumeClaims("").List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return i.client.CoreV1().PersistentVolumeClaims("").Watch(ctx, o)
		},
	}
	f := NewFilter(lw, i.client, func(obj runtime.Object) bool {
		c, ok := obj.(*corev1.PersistentVolumeClaim)
		return ok && keep(c)
	})
	f.After(after...)
	return i.install(&corev1.PersistentVolumeClaim{}, f, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
}

// FilterVolumes is FilterClaims for PersistentVolumes.
func (i *Informers) FilterVolumes(keep func(*corev1.PersistentVolume) bool) error {
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return i.client.CoreV1().PersistentVolumes().List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return i.client.CoreV1().PersistentVolumes().Watch(ctx, o)
		},
	}
	f := NewFilter(lw, i.client, func(obj runtime.Object) bool {
		v, ok := obj.(*corev1.PersistentVolume)
		return ok && keep(v)
	})
	return i.install(&corev1.PersistentVolume{}, f, cache.Indexers{})
}

// install makes lw the source of the factory's informer of obj's type, which
// must not exist yet: the typed accessors (Core().V1()...) then return it.
func (i *Informers) install(obj runtime.Object, lw cache.ListerWatcher, indexers cache.Indexers) error {
	created := false
	i.InformerFor(obj, func(_ kubernetes.Interface, resync time.Duration) cache.SharedIndexInformer {
		created = true
		return cache.NewSharedIndexInformer(lw, obj, resync, indexers)
	})
	if !created {
		return fmt.Errorf("the %T informer was requested before its filter was set", obj)
	}
	return nil
}
