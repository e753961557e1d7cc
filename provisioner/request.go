package provisioner

import (
	"context"
	"fmt"
	"sort"

	"github.com/container-storage-interface/spec/lib/go/csi"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v10/controller"

	"github.com/monocsi/monocsi/driver"
	"github.com/monocsi/monocsi/internal/capability"
)

// createRequest builds the CreateVolume request for a claim, as
// external-provisioner does. It also returns the parsed class parameters.
func (p *Provisioner) createRequest(ctx context.Context, o controller.ProvisionOptions) (*csi.CreateVolumeRequest, *classParams, error) {
	pvc, sc := o.PVC, o.StorageClass
	cp, err := parseParams(sc.Parameters)
	if err != nil {
		return nil, nil, err
	}
	name := p.opts.VolumeNamePrefix + "-" + string(pvc.UID)
	req := &csi.CreateVolumeRequest{Name: name, Parameters: cp.driver}
	if p.opts.ExtraCreateMetadata {
		req.Parameters[driver.ParamPVCName] = pvc.Name
		req.Parameters[driver.ParamPVCNamespace] = pvc.Namespace
		req.Parameters[driver.ParamPVName] = name
	}
	q, ok := pvc.Spec.Resources.Requests[corev1.ResourceStorage]
	if !ok {
		return nil, nil, fmt.Errorf("claim %s/%s requests no storage size", pvc.Namespace, pvc.Name)
	}
	req.CapacityRange = &csi.CapacityRange{RequiredBytes: q.Value()}
	if l, ok := pvc.Spec.Resources.Limits[corev1.ResourceStorage]; ok {
		req.CapacityRange.LimitBytes = l.Value()
	}
	block := pvc.Spec.VolumeMode != nil && *pvc.Spec.VolumeMode == corev1.PersistentVolumeBlock
	// One capability per access mode of the claim, as external-provisioner.
	for _, m := range pvc.Spec.AccessModes {
		c, err := capability.Volume([]corev1.PersistentVolumeAccessMode{m}, p.caps.MultiWriter(), block, cp.fsType, sc.MountOptions)
		if err != nil {
			return nil, nil, fmt.Errorf("claim %s/%s: %w", pvc.Namespace, pvc.Name, err)
		}
		req.VolumeCapabilities = append(req.VolumeCapabilities, c)
	}
	if req.VolumeContentSource, err = p.contentSource(ctx, pvc, sc, q.Value()); err != nil {
		return nil, nil, err
	}
	if p.topology {
		if req.AccessibilityRequirements, err = p.requirements(o); err != nil {
			return nil, nil, err
		}
	}
	ref, err := cp.secretRef(secretKinds[0], name, pvc)
	if err != nil {
		return nil, nil, err
	}
	if req.Secrets, err = p.readSecret(ctx, ref); err != nil {
		return nil, nil, err
	}
	return req, cp, nil
}

// requirements builds the topology requirement: the selected node's segment
// (late binding), else the StorageClass's allowedTopologies, else every
// segment of the nodes running the driver.
func (p *Provisioner) requirements(o controller.ProvisionOptions) (*csi.TopologyRequirement, error) {
	if n := o.SelectedNode; n != nil {
		keys, err := p.topologyKeys(n.Name)
		if err != nil {
			return nil, err
		}
		seg := map[string]string{}
		for _, k := range keys {
			v, ok := n.Labels[k]
			if !ok {
				return nil, fmt.Errorf("selected node %s has no label %s: is the %s node plugin running there?", n.Name, k, p.name)
			}
			seg[k] = v
		}
		if terms := o.StorageClass.AllowedTopologies; len(terms) > 0 && !allowed(terms, n.Labels) {
			return nil, fmt.Errorf("selected node %s is outside the StorageClass's allowedTopologies", n.Name)
		}
		t := []*csi.Topology{{Segments: seg}}
		return &csi.TopologyRequirement{Requisite: t, Preferred: t}, nil
	}
	var segs []map[string]string
	if terms := o.StorageClass.AllowedTopologies; len(terms) > 0 {
		for _, term := range terms {
			seg := map[string]string{}
			for _, e := range term.MatchLabelExpressions {
				if len(e.Values) != 1 {
					return nil, fmt.Errorf("allowedTopologies: key %s must have exactly one value for CSI drivers", e.Key)
				}
				seg[e.Key] = e.Values[0]
			}
			segs = append(segs, seg)
		}
	} else {
		// Every node running the driver (a node deployment's cache has
		// only its own node).
		nodes, err := p.l.csiNodes.List(everything)
		if err != nil {
			return nil, err
		}
		for _, cn := range nodes {
			for _, d := range cn.Spec.Drivers {
				if d.Name != p.name {
					continue
				}
				node, err := p.l.nodes.Get(cn.Name)
				if err != nil {
					continue
				}
				seg := map[string]string{}
				for _, k := range d.TopologyKeys {
					seg[k] = node.Labels[k]
				}
				segs = append(segs, seg)
			}
		}
	}
	if len(segs) == 0 {
		return nil, nil
	}
	sort.Slice(segs, func(i, j int) bool { return fmt.Sprint(segs[i]) < fmt.Sprint(segs[j]) })
	req := &csi.TopologyRequirement{}
	for _, s := range segs {
		req.Requisite = append(req.Requisite, &csi.Topology{Segments: s})
	}
	req.Preferred = req.Requisite
	return req, nil
}

// topologyKeys are the keys the node's kubelet registered for the driver.
func (p *Provisioner) topologyKeys(node string) ([]string, error) {
	cn, err := p.l.csiNodes.Get(node)
	if err != nil {
		return nil, fmt.Errorf("CSINode %s: %w", node, err)
	}
	for _, d := range cn.Spec.Drivers {
		if d.Name == p.name {
			return d.TopologyKeys, nil
		}
	}
	return nil, fmt.Errorf("driver %s is not registered on node %s", p.name, node)
}

func allowed(terms []corev1.TopologySelectorTerm, labels map[string]string) bool {
	for _, t := range terms {
		ok := true
		for _, e := range t.MatchLabelExpressions {
			ok = ok && contains(e.Values, labels[e.Key])
		}
		if ok {
			return true
		}
	}
	return false
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

func termMatches(term corev1.NodeSelectorTerm, seg map[string]string) bool {
	if len(term.MatchExpressions) == 0 {
		return false
	}
	for _, e := range term.MatchExpressions {
		if e.Operator != corev1.NodeSelectorOpIn || !contains(e.Values, seg[e.Key]) {
			return false
		}
	}
	return true
}

// buildPV writes the PV as external-provisioner does. The library adds the
// claim reference, class name, provisioned-by annotation and finalizer.
func (p *Provisioner) buildPV(o controller.ProvisionOptions, req *csi.CreateVolumeRequest, cp *classParams, vol *csi.Volume, size int64) (*corev1.PersistentVolume, error) {
	pvc, sc := o.PVC, o.StorageClass
	attrs := map[string]string{}
	for k, v := range vol.GetVolumeContext() {
		attrs[k] = v
	}
	attrs[IdentityKey] = p.identity
	src := &corev1.CSIPersistentVolumeSource{Driver: p.name, VolumeHandle: vol.GetVolumeId(), VolumeAttributes: attrs}
	if pvc.Spec.VolumeMode == nil || *pvc.Spec.VolumeMode == corev1.PersistentVolumeFilesystem {
		src.FSType = cp.fsType
	}
	for _, k := range secretKinds[1:] {
		ref, err := cp.secretRef(k, req.Name, pvc)
		if err != nil {
			return nil, err
		}
		switch k.name {
		case "controller-publish":
			src.ControllerPublishSecretRef = ref
		case "node-stage":
			src.NodeStageSecretRef = ref
		case "node-publish":
			src.NodePublishSecretRef = ref
		case "controller-expand":
			src.ControllerExpandSecretRef = ref
		case "node-expand":
			src.NodeExpandSecretRef = ref
		}
	}
	del, _ := cp.secretRef(secretKinds[0], req.Name, pvc)
	if del == nil {
		del = &corev1.SecretReference{}
	}
	reclaim := corev1.PersistentVolumeReclaimDelete
	if sc.ReclaimPolicy != nil {
		reclaim = *sc.ReclaimPolicy
	}
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name:        req.Name,
			Annotations: map[string]string{annDeletionName: del.Name, annDeletionNS: del.Namespace},
		},
		Spec: corev1.PersistentVolumeSpec{
			AccessModes:                   pvc.Spec.AccessModes,
			MountOptions:                  sc.MountOptions,
			PersistentVolumeReclaimPolicy: reclaim,
			VolumeMode:                    pvc.Spec.VolumeMode,
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: quantity(size)},
			PersistentVolumeSource:        corev1.PersistentVolumeSource{CSI: src},
		},
	}
	if terms := nodeSelectorTerms(vol.GetAccessibleTopology()); len(terms) > 0 {
		pv.Spec.NodeAffinity = &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: terms}}
	}
	return pv, nil
}

// nodeSelectorTerms turns accessible topology into one term per segment set.
func nodeSelectorTerms(topo []*csi.Topology) []corev1.NodeSelectorTerm {
	var terms []corev1.NodeSelectorTerm
	for _, t := range topo {
		keys := make([]string, 0, len(t.GetSegments()))
		for k := range t.GetSegments() {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var term corev1.NodeSelectorTerm
		for _, k := range keys {
			term.MatchExpressions = append(term.MatchExpressions, corev1.NodeSelectorRequirement{
				Key: k, Operator: corev1.NodeSelectorOpIn, Values: []string{t.GetSegments()[k]}})
		}
		terms = append(terms, term)
	}
	return terms
}
