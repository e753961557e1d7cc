package kube

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// SecretData reads the secret ref names (nil: none) as the CSI calls take
// it. Every role reads secrets through it, each time from the API server, as
// the sidecars do: only the secrets a volume names are read, when a call needs
// them. Caching them would mean watching every Secret in the cluster (RBAC to
// list them all, and memory for TLS keys, tokens and Helm releases no role
// reads) to save one GET per CreateVolume, DeleteVolume or ControllerPublish.
func SecretData(ctx context.Context, client kubernetes.Interface, ref *corev1.SecretReference) (map[string]string, error) {
	if ref == nil {
		return nil, nil
	}
	s, err := client.CoreV1().Secrets(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("secret %s/%s: %w", ref.Namespace, ref.Name, err)
	}
	out := make(map[string]string, len(s.Data))
	for k, v := range s.Data {
		out[k] = string(v)
	}
	return out, nil
}
