// Package e2e tests monocsi inside a real single-node Kubernetes (see
// test/cluster): the kubelet finds our registration socket, writes CSINode,
// and mounts our volumes into running containers.
package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/monocsi/monocsi/test/cluster"
)

var (
	tc   *cluster.Cluster
	kube kubernetes.Interface
	// snaps is the snapshot.storage.k8s.io client (the CRDs come with the chart here).
	snaps snapclient.Interface
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e: FAIL: the test cluster needs root (kubelet, containerd, mounts); run `make e2e` as root")
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	start := time.Now()
	images, err := cluster.BuildImages(os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: FAIL: build images:", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "monocsi-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: FAIL:", err)
		return 1
	}
	tc, err = cluster.Start(ctx, cluster.Options{Dir: dir, Images: images, Log: os.Stdout})
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: FAIL: start cluster:", err)
		return 1
	}
	code := 1
	defer func() {
		if code != 0 {
			fmt.Printf("e2e failed; component logs kept in %s\n%s", tc.Logs, tc.LogTails(40))
		}
		stop := time.Now()
		if err := tc.Stop(code != 0); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: FAIL: teardown:", err)
			code = 1
		}
		if left := leftovers(tc.Dir); len(left) > 0 {
			fmt.Fprintln(os.Stderr, "e2e: FAIL: teardown left:", strings.Join(left, "; "))
			code = 1
		}
		fmt.Printf("==> teardown: %s\n", time.Since(stop).Round(100*time.Millisecond))
	}()
	fmt.Printf("==> cluster up in %s\n", time.Since(start).Round(100*time.Millisecond))
	cfg, err := clientcmd.BuildConfigFromFlags("", tc.Kubeconfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: FAIL:", err)
		return 1
	}
	kube = kubernetes.NewForConfigOrDie(cfg)
	snaps = snapclient.NewForConfigOrDie(cfg)
	install := time.Now()
	if err := tc.InstallMonocsi(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: FAIL: install monocsi:", err)
		return 1
	}
	fmt.Printf("==> monocsi installed with its chart in %s\n", time.Since(install).Round(100*time.Millisecond))
	tests := time.Now()
	code = m.Run()
	fmt.Printf("==> e2e tests: %s\n", time.Since(tests).Round(100*time.Millisecond))
	return code
}

// leftovers lists what a torn-down run left behind: processes whose command
// line names the run directory, mounts under it.
func leftovers(dir string) []string {
	var left []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), dir) {
			left = append(left, "process "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
				left = append(left, "mount "+f[4])
			}
		}
	}
	return left
}
