// Package e2e tests monocsi inside a real single-node Kubernetes (see
// test/cluster): the kubelet finds our registration socket, writes CSINode,
// and mounts our volumes into running containers.
package e2e

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/monocsi/monocsi/test/cluster"
)

var (
	tc   *cluster.Cluster
	kube kubernetes.Interface
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
		fmt.Printf("==> teardown: %s\n", time.Since(stop).Round(100*time.Millisecond))
	}()
	fmt.Printf("==> cluster up in %s\n", time.Since(start).Round(100*time.Millisecond))
	cfg, err := clientcmd.BuildConfigFromFlags("", tc.Kubeconfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: FAIL:", err)
		return 1
	}
	kube = kubernetes.NewForConfigOrDie(cfg)
	install := time.Now()
	if err := tc.InstallMonocsi(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: FAIL: install monocsi:", err)
		return 1
	}
	fmt.Printf("==> monocsi installed from manifests/ in %s\n", time.Since(install).Round(100*time.Millisecond))
	tests := time.Now()
	code = m.Run()
	fmt.Printf("==> e2e tests: %s\n", time.Since(tests).Round(100*time.Millisecond))
	return code
}
