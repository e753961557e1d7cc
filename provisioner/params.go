package provisioner

import (
	"fmt"
	"regexp"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// The reserved StorageClass parameters external-provisioner understands.
// They are removed before the driver sees the parameters.
const (
	prefix          = "csi.storage.k8s.io/"
	paramFSType     = prefix + "fstype"
	legacyFSType    = "fstype"
	annDeletionName = "volume.kubernetes.io/provisioner-deletion-secret-name"
	annDeletionNS   = "volume.kubernetes.io/provisioner-deletion-secret-namespace"
	annSelectedNode = "volume.kubernetes.io/selected-node"
	// annProvisionedBy names the provisioner of a PV (written by the library).
	annProvisionedBy = "pv.kubernetes.io/provisioned-by"
	// IdentityKey is the volume attribute naming the provisioner instance.
	IdentityKey = "storage.kubernetes.io/csiProvisionerIdentity"
)

// secretKind is one of the secret references a StorageClass may carry.
type secretKind struct {
	name string // e.g. "provisioner" → csi.storage.k8s.io/provisioner-secret-name
	// annotations: the name template may use ${pvc.annotations['key']}, as
	// external-provisioner allows for every kind but the provisioner secret.
	annotations bool
}

var secretKinds = []secretKind{
	{"provisioner", false},
	{"controller-publish", true},
	{"node-stage", true},
	{"node-publish", true},
	{"controller-expand", true},
	{"node-expand", true},
}

func (k secretKind) nameKey() string { return prefix + k.name + "-secret-name" }
func (k secretKind) nsKey() string   { return prefix + k.name + "-secret-namespace" }

// classParams splits StorageClass parameters into the driver's and the
// reserved ones, and rejects unknown reserved keys.
type classParams struct {
	driver  map[string]string
	fsType  string
	secrets map[string][2]string // kind → {name template, namespace template}
}

func parseParams(params map[string]string) (*classParams, error) {
	cp := &classParams{driver: map[string]string{}, secrets: map[string][2]string{}}
	known := map[string]bool{paramFSType: true}
	for _, k := range secretKinds {
		known[k.nameKey()], known[k.nsKey()] = true, true
	}
	for key, v := range params {
		lk := strings.ToLower(key)
		switch {
		case lk == legacyFSType:
			if _, both := params[paramFSType]; both {
				return nil, fmt.Errorf("StorageClass parameters %q and %q both set the filesystem type; keep %q", legacyFSType, paramFSType, paramFSType)
			}
			cp.fsType = v
		case strings.HasPrefix(lk, prefix):
			if !known[lk] {
				return nil, fmt.Errorf("invalid StorageClass parameter %q: unknown csi.storage.k8s.io/ key", key)
			}
			if lk == paramFSType {
				cp.fsType = v
			}
		default:
			cp.driver[key] = v
		}
	}
	for _, k := range secretKinds {
		name, hasName := params[k.nameKey()]
		ns, hasNS := params[k.nsKey()]
		if hasName != hasNS {
			return nil, fmt.Errorf("StorageClass parameters %q and %q must be set together", k.nameKey(), k.nsKey())
		}
		if hasName {
			cp.secrets[k.name] = [2]string{name, ns}
		}
	}
	return cp, nil
}

var tokenRE = regexp.MustCompile(`\$\{([^}]*)\}`)
var annotationToken = regexp.MustCompile(`^pvc\.annotations\['([^']+)'\]$`)

// resolveTemplate fills ${pv.name}, ${pvc.name}, ${pvc.namespace} and, where
// allowed, ${pvc.annotations['key']}. An unknown token is an error.
func resolveTemplate(tmpl, pvName string, pvc *corev1.PersistentVolumeClaim, allowClaim, allowAnnotations bool) (string, error) {
	var bad error
	out := tokenRE.ReplaceAllStringFunc(tmpl, func(tok string) string {
		inner := tok[2 : len(tok)-1]
		switch {
		case inner == "pv.name":
			return pvName
		case inner == "pvc.namespace":
			return pvc.Namespace
		case inner == "pvc.name" && allowClaim:
			return pvc.Name
		}
		if m := annotationToken.FindStringSubmatch(inner); m != nil && allowAnnotations {
			return pvc.Annotations[m[1]]
		}
		if bad == nil {
			bad = fmt.Errorf("%q: token %s is not allowed here", tmpl, tok)
		}
		return tok
	})
	return out, bad
}

// secretRef resolves a secret reference of the given kind, or nil when the
// StorageClass names none.
func (cp *classParams) secretRef(kind secretKind, pvName string, pvc *corev1.PersistentVolumeClaim) (*corev1.SecretReference, error) {
	t, ok := cp.secrets[kind.name]
	if !ok {
		return nil, nil
	}
	ns, err := resolveTemplate(t[1], pvName, pvc, false, false)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", kind.nsKey(), err)
	}
	name, err := resolveTemplate(t[0], pvName, pvc, true, kind.annotations)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", kind.nameKey(), err)
	}
	if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
		return nil, fmt.Errorf("%s resolves to %q, not a valid namespace: %s", kind.nsKey(), ns, strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return nil, fmt.Errorf("%s resolves to %q, not a valid secret name: %s", kind.nameKey(), name, strings.Join(errs, "; "))
	}
	return &corev1.SecretReference{Name: name, Namespace: ns}, nil
}
