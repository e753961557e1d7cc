package e2e

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/monocsi/monocsi/test/cluster"
)

// TestKubernetesVersion: the cluster's binaries carry their release, as a
// user's would (kubectl version fails on an unstamped build).
func TestKubernetesVersion(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := tc.Kubectl(ctx, "version", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Client struct{ GitVersion string } `json:"clientVersion"`
		Server struct{ GitVersion string } `json:"serverVersion"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("kubectl version -o json: %v\n%s", err, out)
	}
	if v.Client.GitVersion != cluster.K8sVersion || v.Server.GitVersion != cluster.K8sVersion {
		t.Errorf("kubectl %q, server %q; want %s", v.Client.GitVersion, v.Server.GitVersion, cluster.K8sVersion)
	}
	node, err := tc.Kubectl(ctx, "get", "node", cluster.NodeName, "-o", "jsonpath={.status.nodeInfo.kubeletVersion}")
	if err != nil || node != cluster.K8sVersion {
		t.Errorf("kubelet version %q (%v), want %s", node, err, cluster.K8sVersion)
	}
}
