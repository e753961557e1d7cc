// Package capacity is external-provisioner's storage capacity tracking
// (--enable-capacity) for node-local drivers, as a node deployment runs it:
// each node publishes CSIStorageCapacity objects (storage.k8s.io/v1) for its
// own topology segment, one per StorageClass of each driver, from the
// driver's GetCapacity, so the scheduler puts a WaitForFirstConsumer claim
// only on a node with room. They are refreshed on a poll interval, when a
// class changes, and after every volume created or deleted on the node.
package capacity

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/monocsi/monocsi/driver"
	"github.com/monocsi/monocsi/internal/kube"
	"github.com/monocsi/monocsi/internal/opmetrics"
)

// The labels external-provisioner puts on the objects it manages.
const (
	LabelDriver    = "csi.storage.k8s.io/drivername"
	LabelManagedBy = "csi.storage.k8s.io/managed-by"
)

// DefaultPoll is external-provisioner's --capacity-poll-interval.
const DefaultPoll = time.Minute

// Timeout bounds every GetCapacity and NodeGetInfo call.
const Timeout = 30 * time.Second

// Driver is one node-local driver whose capacity is published.
type Driver struct {
	Name   string
	Driver driver.Driver
}

// Publisher keeps one node's CSIStorageCapacity objects.
type Publisher struct {
	Client kubernetes.Interface
	// Namespace holds the objects (the node pod's).
	Namespace string
	// Node is the node's name: its objects are labelled managed-by
	// external-provisioner-<node>, as a node deployment's.
	Node string
	// Owner, when set, owns every object (the node's pod): they go with it,
	// so none is left once monocsi is uninstalled; the next pod adopts them.
	Owner   *metav1.OwnerReference
	Drivers []Driver
	// Poll is the refresh interval (DefaultPoll when 0).
	Poll time.Duration

	kick    chan struct{}
	classes storagelisters.StorageClassLister
	have    map[key]*storagev1.CSIStorageCapacity
	segs    map[string]map[string]string // driver → its topology segment on this node
}

// key names one object: a class of a driver.
type key struct{ driver, class string }

// ManagedBy is the managed-by label value of a node's objects (a hash when
// the node's name makes it longer than a label value may be).
func ManagedBy(node string) string {
	v := "external-provisioner-" + node
	if len(v) > 63 {
		h := sha256.Sum256([]byte(node))
		v = "external-provisioner-" + hex.EncodeToString(h[:])[:40]
	}
	return v
}

// Run publishes until ctx is done. It reads StorageClasses and the node's
// PVs through inf, whose filters (a node role's) must be set already.
func (p *Publisher) Run(ctx context.Context, inf *kube.Informers) error {
	if p.Poll <= 0 {
		p.Poll = DefaultPoll
	}
	p.kick = make(chan struct{}, 1)
	p.have = map[key]*storagev1.CSIStorageCapacity{}
	p.segs = map[string]map[string]string{}
	sc := inf.Storage().V1().StorageClasses()
	p.classes = sc.Lister()
	kick := func(any) { p.Kick() }
	creg, err := sc.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: kick, DeleteFunc: kick, UpdateFunc: func(_, o any) { p.Kick() },
	})
	if err != nil {
		return err
	}
	defer sc.Informer().RemoveEventHandler(creg)
	// A volume created or deleted on this node changes its free space.
	pvInf := inf.Core().V1().PersistentVolumes().Informer()
	preg, err := pvInf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: kick, DeleteFunc: kick})
	if err != nil {
		return err
	}
	defer pvInf.RemoveEventHandler(preg)
	inf.Start()
	if !cache.WaitForCacheSync(ctx.Done(), sc.Informer().HasSynced, pvInf.HasSynced, creg.HasSynced, preg.HasSynced) {
		return nil
	}
	klog.InfoS("Publishing storage capacity", "node", p.Node, "namespace", p.Namespace, "poll", p.Poll)
	listed := false
	t := time.NewTicker(p.Poll)
	defer t.Stop()
	for wait := time.Second; ; {
		var err error
		if !listed { // never write before knowing what an earlier pod left
			err = p.list(ctx)
			listed = err == nil
		}
		if err == nil {
			err = p.refresh(ctx)
		}
		var retry <-chan time.Time
		if err != nil {
			klog.ErrorS(err, "Publishing storage capacity; retrying", "in", wait)
			retry = time.After(wait)
			wait = min(2*wait, p.Poll)
		} else {
			wait = time.Second
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-p.kick:
		case <-retry:
		}
	}
}

// Kick asks for a refresh soon (a volume was created or deleted).
func (p *Publisher) Kick() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// list reads the node's existing objects (an earlier pod's, adopted).
func (p *Publisher) list(ctx context.Context) error {
	sel := labels.Set{LabelManagedBy: ManagedBy(p.Node)}.String()
	l, err := p.Client.StorageV1().CSIStorageCapacities(p.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return fmt.Errorf("list CSIStorageCapacity objects: %w", err)
	}
	for i := range l.Items {
		o := &l.Items[i]
		k := key{o.Labels[LabelDriver], o.StorageClassName}
		if _, dup := p.have[k]; dup {
			p.delete(ctx, o)
			continue
		}
		p.have[k] = o
	}
	return nil
}

// refresh makes the objects what the drivers report now.
func (p *Publisher) refresh(ctx context.Context) error {
	classes, err := p.classes.List(labels.Everything())
	if err != nil {
		return err
	}
	want := map[key]bool{}
	var errs []error
	for _, d := range p.Drivers {
		seg, err := p.segment(ctx, d)
		if err != nil {
			errs = append(errs, err)
			// Keep this driver's objects as they are until it answers.
			for k := range p.have {
				if k.driver == d.Name {
					want[k] = true
				}
			}
			continue
		}
		for _, sc := range classes {
			if sc.Provisioner != d.Name {
				continue
			}
			k := key{d.Name, sc.Name}
			want[k] = true
			if err := p.publish(ctx, d, sc, seg); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for k, o := range p.have {
		if !want[k] {
			if err := p.delete(ctx, o); err != nil {
				errs = append(errs, err)
			} else {
				delete(p.have, k)
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%d errors, the first: %w", len(errs), errs[0])
	}
	return nil
}

// segment is the driver's topology on this node (NodeGetInfo), asked once.
func (p *Publisher) segment(ctx context.Context, d Driver) (map[string]string, error) {
	if s, ok := p.segs[d.Name]; ok {
		return s, nil
	}
	cctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	info, err := d.Driver.NodeGetInfo(cctx, &csi.NodeGetInfoRequest{})
	if err != nil {
		return nil, fmt.Errorf("driver %s: NodeGetInfo: %w", d.Name, err)
	}
	s := info.GetAccessibleTopology().GetSegments()
	if len(s) == 0 {
		return nil, fmt.Errorf("driver %s reports no topology on node %s: its capacity cannot be told apart from other nodes'", d.Name, p.Node)
	}
	p.segs[d.Name] = s
	return s, nil
}

// publish creates or updates the object of one class.
func (p *Publisher) publish(ctx context.Context, d Driver, sc *storagev1.StorageClass, seg map[string]string) error {
	params := map[string]string{}
	for k, v := range sc.Parameters {
		if !strings.HasPrefix(k, "csi.storage.k8s.io/") {
			params[k] = v
		}
	}
	fsType := sc.Parameters["csi.storage.k8s.io/fstype"]
	req := &csi.GetCapacityRequest{
		// Capacity does not depend on the capability here; the spec wants
		// one, and external-provisioner sends this one.
		VolumeCapabilities: []*csi.VolumeCapability{{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType, MountFlags: sc.MountOptions}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		}},
		Parameters:         params,
		AccessibleTopology: &csi.Topology{Segments: seg},
	}
	cctx, cancel := context.WithTimeout(ctx, Timeout)
	start := time.Now()
	resp, err := d.Driver.GetCapacity(cctx, req)
	cancel()
	opmetrics.Observe(d.Name, "GetCapacity", start, err)
	if err != nil {
		return fmt.Errorf("driver %s: GetCapacity for class %s: %w", d.Name, sc.Name, err)
	}
	k := key{d.Name, sc.Name}
	capQ := resource.NewQuantity(resp.GetAvailableCapacity(), resource.BinarySI)
	var maxQ *resource.Quantity
	if m := resp.GetMaximumVolumeSize(); m != nil {
		maxQ = resource.NewQuantity(m.GetValue(), resource.BinarySI)
	}
	topo := &metav1.LabelSelector{MatchLabels: maps.Clone(seg)}
	api := p.Client.StorageV1().CSIStorageCapacities(p.Namespace)
	if o, ok := p.have[k]; ok {
		if sameQ(o.Capacity, capQ) && sameQ(o.MaximumVolumeSize, maxQ) && sameTopology(o.NodeTopology, seg) && p.owned(o) {
			return nil
		}
		u := o.DeepCopy()
		u.Capacity, u.MaximumVolumeSize, u.NodeTopology = capQ, maxQ, topo
		if p.Owner != nil {
			u.OwnerReferences = []metav1.OwnerReference{*p.Owner}
		}
		got, err := api.Update(ctx, u, metav1.UpdateOptions{})
		if err == nil {
			p.have[k] = got
			return nil
		}
		if !apierrors.IsNotFound(err) {
			if apierrors.IsConflict(err) { // changed by someone else: read it again
				if cur, gerr := api.Get(ctx, o.Name, metav1.GetOptions{}); gerr == nil {
					p.have[k] = cur
				}
			}
			return fmt.Errorf("update CSIStorageCapacity %s/%s: %w", p.Namespace, o.Name, err)
		}
		delete(p.have, k) // gone (its old owner's collection): create it anew
	}
	o := &storagev1.CSIStorageCapacity{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: "csisc-",
			Namespace:    p.Namespace,
			Labels:       map[string]string{LabelDriver: d.Name, LabelManagedBy: ManagedBy(p.Node)},
		},
		NodeTopology:      topo,
		StorageClassName:  sc.Name,
		Capacity:          capQ,
		MaximumVolumeSize: maxQ,
	}
	if p.Owner != nil {
		o.OwnerReferences = []metav1.OwnerReference{*p.Owner}
	}
	got, err := api.Create(ctx, o, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create CSIStorageCapacity for class %s: %w", sc.Name, err)
	}
	klog.V(2).InfoS("Published storage capacity", "driver", d.Name, "class", sc.Name, "object", got.Name, "capacity", capQ.String())
	p.have[k] = got
	return nil
}

func (p *Publisher) owned(o *storagev1.CSIStorageCapacity) bool {
	if p.Owner == nil {
		return true
	}
	return len(o.OwnerReferences) == 1 && o.OwnerReferences[0].UID == p.Owner.UID
}

func (p *Publisher) delete(ctx context.Context, o *storagev1.CSIStorageCapacity) error {
	err := p.Client.StorageV1().CSIStorageCapacities(o.Namespace).Delete(ctx, o.Name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete CSIStorageCapacity %s/%s: %w", o.Namespace, o.Name, err)
	}
	return nil
}

func sameQ(a, b *resource.Quantity) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Cmp(*b) == 0
}

func sameTopology(t *metav1.LabelSelector, seg map[string]string) bool {
	return t != nil && len(t.MatchExpressions) == 0 && maps.Equal(t.MatchLabels, seg)
}

// PodOwner is the owner reference of the pod named name with uid (the
// downward API's metadata.name and metadata.uid), or nil when either is
// unknown.
func PodOwner(name, uid string) *metav1.OwnerReference {
	if name == "" || uid == "" {
		return nil
	}
	return &metav1.OwnerReference{APIVersion: "v1", Kind: "Pod", Name: name, UID: types.UID(uid)}
}
