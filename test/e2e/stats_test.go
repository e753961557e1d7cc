package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/monocsi/monocsi/test/cluster"
)

// kubeletVolumeStats reads the kubelet's kubelet_volume_stats_* gauges of
// a claim from its /metrics, as a scraper on the node does (the test runs
// on the node; the test cluster's kubelet serves a self-signed certificate
// and lets anyone read), by the part of the name after the prefix.
func kubeletVolumeStats(ctx context.Context, claim string) (map[string]float64, error) {
	node, err := kube.CoreV1().Nodes().Get(ctx, cluster.NodeName, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	url := fmt.Sprintf("https://127.0.0.1:%d/metrics", node.Status.DaemonEndpoints.KubeletEndpoint.Port)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s: %.200s", url, resp.Status, raw)
	}
	got := map[string]float64{}
	for _, line := range strings.Split(string(raw), "\n") {
		name, rest, ok := strings.Cut(line, "{")
		if !ok || !strings.HasPrefix(name, "kubelet_volume_stats_") {
			continue
		}
		labels, value, ok := strings.Cut(rest, "} ")
		if !ok || !strings.Contains(labels, `persistentvolumeclaim="`+claim+`"`) || !strings.Contains(labels, `namespace="`+ns+`"`) {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", line, err)
		}
		got[strings.TrimPrefix(name, "kubelet_volume_stats_")] = v
	}
	return got, nil
}

// TestKubeletVolumeStatsLocal: the kubelet's volume stats of a local claim
// are the volume's own figures (its size, what its pod wrote), not the
// filesystem's the root is on.
func TestKubeletVolumeStatsLocal(t *testing.T) {
	storageClass(t, "e2e-stats", corev1.PersistentVolumeReclaimDelete, nil)
	claim(t, "e2e-stats", "e2e-stats") // 16Mi
	runningPod(t, "e2e-stats", claimVolume("e2e-stats"),
		"dd if=/dev/urandom of=/data/f bs=1048576 count=3 && mkdir /data/d && echo hi > /data/d/x && sync; sleep 3600")
	const size, wrote = 16 << 20, 3 << 20
	ctx := context.Background()
	var last map[string]float64
	// The kubelet gathers volume stats once a minute.
	eventually(t, 4*time.Minute, "kubelet volume stats of the claim", func() error {
		s, err := kubeletVolumeStats(ctx, "e2e-stats")
		if err != nil {
			return err
		}
		last = s
		if s["used_bytes"] < wrote {
			return fmt.Errorf("used_bytes %v, below the %d bytes the pod wrote (stats: %v)", s["used_bytes"], wrote, s)
		}
		return nil
	})
	t.Logf("kubelet_volume_stats_* of the claim: %v", last)
	if last["capacity_bytes"] != size {
		t.Errorf("capacity_bytes = %v, want the volume's size %d (not the filesystem's)", last["capacity_bytes"], size)
	}
	if u := last["used_bytes"]; u > wrote+256<<10 {
		t.Errorf("used_bytes = %v, want the %d bytes written plus a few blocks", u, wrote)
	}
	if a, u := last["available_bytes"], last["used_bytes"]; a > size-u || a < 0 {
		t.Errorf("available_bytes = %v, want at most capacity - used = %v", a, size-u)
	}
	// The volume's directory, f, d and d/x.
	if n := last["inodes_used"]; n < 3 || n > 4 {
		t.Errorf("inodes_used = %v, want the volume's 3 or 4 inodes", n)
	}
}
