package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"

	"github.com/monocsi/monocsi/driver"
)

// The volumes of the rest of the cluster: PVs and claims bound to each other
// through the API, spread over fakeNodes nodes that do not exist as Node
// objects; every other one is a local volume (this cluster's local driver,
// on another node), the rest are of another driver and StorageClass.
const (
	otherNS     = "bench-other"
	otherClass  = "bench-other"
	otherDriver = "other.csi.example.com"
	fakeNodes   = 50
)

// templates are one claim and its PV as monocsi provisioned them; the
// volumes of the rest of the cluster are copies of them.
type templates struct {
	claim *corev1.PersistentVolumeClaim
	pv    *corev1.PersistentVolume
}

// captureTemplates reads claim name's claim and PV, without what the API
// server sets.
func captureTemplates(ctx context.Context, kube kubernetes.Interface, name string) (*templates, error) {
	pvc, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	pv, err := kube.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	for _, m := range []*metav1.ObjectMeta{&pvc.ObjectMeta, &pv.ObjectMeta} {
		m.ResourceVersion, m.UID, m.CreationTimestamp, m.ManagedFields, m.Generation = "", "", metav1.Time{}, nil, 0
	}
	return &templates{claim: pvc, pv: pv}, nil
}

// otherVolumes creates the cluster's other volumes from index from to to
// (from 0: their namespace and StorageClass first), each a claim and a PV bound to each other directly: the claim (naming its
// volume) first, then the PV with the claim's UID in its claimRef, then
// both marked Bound the way the PV controller leaves them (the claim's
// bind-completed annotation, the statuses). Nothing provisions them.
func otherVolumes(ctx context.Context, kube kubernetes.Interface, t *templates, from, to int) error {
	if from == 0 {
		if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: otherNS}}, metav1.CreateOptions{}); err != nil {
			return err
		}
		wffc := storagev1.VolumeBindingWaitForFirstConsumer
		if _, err := kube.StorageV1().StorageClasses().Create(ctx, &storagev1.StorageClass{
			ObjectMeta: metav1.ObjectMeta{Name: otherClass}, Provisioner: otherDriver, VolumeBindingMode: &wffc,
		}, metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	var mu sync.Mutex
	done := 0
	return parallel(to-from, func(i int) error {
		if err := otherVolume(ctx, kube, t, from+i); err != nil {
			return err
		}
		mu.Lock()
		if done++; done%1000 == 0 {
			fmt.Printf("    %d of %d\n", done, to-from)
		}
		mu.Unlock()
		return nil
	})
}

func otherVolume(ctx context.Context, kube kubernetes.Interface, t *templates, i int) error {
	node := fmt.Sprintf("bench-node-%02d", i%fakeNodes)
	local := i%2 == 0
	pvName := fmt.Sprintf("pvc-00000000-0000-4000-8000-%012d", i)
	pvc := t.claim.DeepCopy()
	pvc.Name, pvc.Namespace = fmt.Sprintf("other-%05d", i), otherNS
	pvc.Status = corev1.PersistentVolumeClaimStatus{}
	pvc.Spec.VolumeName = pvName
	if pvc.Annotations == nil {
		pvc.Annotations = map[string]string{}
	}
	bound := map[string]string{}
	for _, k := range []string{"pv.kubernetes.io/bind-completed", "pv.kubernetes.io/bound-by-controller"} {
		if v, ok := pvc.Annotations[k]; ok {
			bound[k] = v
			delete(pvc.Annotations, k)
		}
	}
	bound["pv.kubernetes.io/bind-completed"] = "yes"
	pvc.Annotations["volume.kubernetes.io/selected-node"] = node
	if !local {
		class := otherClass
		pvc.Spec.StorageClassName = &class
		pvc.Annotations["volume.kubernetes.io/storage-provisioner"] = otherDriver
		pvc.Annotations["volume.beta.kubernetes.io/storage-provisioner"] = otherDriver
	}
	// The claim names its volume before the PV exists: the PV controller
	// waits for it (no bind-completed annotation yet) and writes nothing.
	pvc, err := kube.CoreV1().PersistentVolumeClaims(otherNS).Create(ctx, pvc, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	pv := t.pv.DeepCopy()
	pv.Name = pvName
	pv.Status = corev1.PersistentVolumeStatus{}
	if pv.Annotations == nil {
		pv.Annotations = map[string]string{}
	}
	pv.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1",
		Namespace: otherNS, Name: pvc.Name, UID: pvc.UID, ResourceVersion: pvc.ResourceVersion}
	pv.Spec.CSI.VolumeHandle = pvName
	pv.Spec.NodeAffinity = &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
		MatchExpressions: []corev1.NodeSelectorRequirement{{Key: driver.TopologyKeyNode, Operator: corev1.NodeSelectorOpIn, Values: []string{node}}}}}}}
	if !local {
		pv.Spec.CSI.Driver = otherDriver
		pv.Spec.StorageClassName = otherClass
		pv.Annotations["pv.kubernetes.io/provisioned-by"] = otherDriver
		pv.Spec.NodeAffinity.Required.NodeSelectorTerms[0].MatchExpressions[0].Key = "topology.kubernetes.io/hostname"
	}
	if pv, err = kube.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil {
		return err
	}
	// The PV controller may get there first: on a conflict, read and retry.
	// (A failed call returns an empty object: keep the last good one.)
	claimName := pvc.Name
	rereadPV := func() error {
		got, err := kube.CoreV1().PersistentVolumes().Get(ctx, pvName, metav1.GetOptions{})
		if err == nil {
			pv = got
		}
		return err
	}
	rereadClaim := func() error {
		got, err := kube.CoreV1().PersistentVolumeClaims(otherNS).Get(ctx, claimName, metav1.GetOptions{})
		if err == nil {
			pvc = got
		}
		return err
	}
	if err := update(func() error {
		if pv.Status.Phase == corev1.VolumeBound {
			return nil
		}
		pv.Status.Phase = corev1.VolumeBound
		_, err := kube.CoreV1().PersistentVolumes().UpdateStatus(ctx, pv, metav1.UpdateOptions{})
		return err
	}, rereadPV); err != nil {
		return err
	}
	if err := update(func() error {
		if pvc.Annotations["pv.kubernetes.io/bind-completed"] != "" {
			return nil
		}
		for k, v := range bound {
			pvc.Annotations[k] = v
		}
		got, err := kube.CoreV1().PersistentVolumeClaims(otherNS).Update(ctx, pvc, metav1.UpdateOptions{})
		if err == nil {
			pvc = got
		}
		return err
	}, rereadClaim); err != nil {
		return err
	}
	return update(func() error {
		if pvc.Status.Phase == corev1.ClaimBound {
			return nil
		}
		pvc.Status = *t.claim.Status.DeepCopy()
		pvc.Status.Phase = corev1.ClaimBound
		// What the pvc-protection controller (Kubernetes 1.37+) would add.
		pvc.Status.Conditions = []corev1.PersistentVolumeClaimCondition{{Type: "Unused", Status: corev1.ConditionTrue,
			Reason: "NoPodsUsingPVC", Message: "No pods are currently referencing this PVC", LastTransitionTime: metav1.Now()}}
		_, err := kube.CoreV1().PersistentVolumeClaims(otherNS).UpdateStatus(ctx, pvc, metav1.UpdateOptions{})
		return err
	}, rereadClaim)
}

// update runs write, and on a conflict reread then write again.
func update(write, reread func() error) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		err := write()
		if apierrors.IsConflict(err) {
			if rerr := reread(); rerr != nil {
				return rerr
			}
		}
		return err
	})
}

// quiet waits until no claim or PV of the other namespace has changed for
// 5 s (the controllers are done with them), at most limit; it checks that
// every one is Bound and returns how many changes it saw.
func quiet(ctx context.Context, kube kubernetes.Interface, n int, limit time.Duration) (int, error) {
	var mu sync.Mutex
	last, changes := time.Now(), 0
	touch := func(any, any) {
		mu.Lock()
		last = time.Now()
		changes++
		mu.Unlock()
	}
	stop := make(chan struct{})
	defer close(stop)
	f := informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithNamespace(otherNS))
	g := informers.NewSharedInformerFactoryWithOptions(kube, 0)
	claims := f.Core().V1().PersistentVolumeClaims().Informer()
	pvs := g.Core().V1().PersistentVolumes().Informer()
	for _, inf := range []cache.SharedIndexInformer{claims, pvs} {
		_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{UpdateFunc: touch})
	}
	f.Start(stop)
	g.Start(stop)
	f.WaitForCacheSync(stop)
	g.WaitForCacheSync(stop)
	deadline := time.Now().Add(limit)
	for {
		mu.Lock()
		idle := time.Since(last)
		mu.Unlock()
		if idle > 5*time.Second || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	bound := 0
	for _, o := range claims.GetStore().List() {
		if c := o.(*corev1.PersistentVolumeClaim); c.Status.Phase == corev1.ClaimBound && c.Annotations["pv.kubernetes.io/bind-completed"] != "" {
			bound++
		}
	}
	if bound != n {
		return changes, fmt.Errorf("%d of %d claims of namespace %s Bound", bound, n, otherNS)
	}
	return changes, nil
}
