// Package kube is the Kubernetes layer every monocsi role shares: the client,
// the one informer cache of a process (Informers) with its transform and
// node filters, and the secrets reader.
package kube

import (
	"flag"
	"fmt"

	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Flags are the client settings the CSI sidecars expose as flags.
type Flags struct {
	Kubeconfig string
	QPS        float64
	Burst      int
}

// DefaultQPS and DefaultBurst let a burst of a few hundred claims through
// without client-side throttling (the sidecars' 5/10 made 200 claims wait ~50 s).
const (
	DefaultQPS   = 100
	DefaultBurst = 200
)

// Register adds --kubeconfig, --kube-api-qps and --kube-api-burst to fs.
func (f *Flags) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.Kubeconfig, "kubeconfig", "", "kubeconfig file; empty: the in-cluster configuration")
	fs.Float64Var(&f.QPS, "kube-api-qps", DefaultQPS, "queries per second to the Kubernetes API")
	fs.IntVar(&f.Burst, "kube-api-burst", DefaultBurst, "burst of queries to the Kubernetes API")
}

// Client returns a client from the kubeconfig file, or the in-cluster
// configuration when none is given.
func (f Flags) Client() (kubernetes.Interface, error) {
	cfg, err := f.config()
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

// LeaseClient returns a client of its own for leader election, so renewing
// the Lease never waits behind the work's throttled requests.
func (f Flags) LeaseClient() (kubernetes.Interface, error) {
	cfg, err := f.config()
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = 5, 10
	cfg.UserAgent = "monocsi-leader-election"
	return kubernetes.NewForConfig(cfg)
}

// SnapshotClient returns a client of the snapshot.storage.k8s.io API.
func (f Flags) SnapshotClient() (snapclient.Interface, error) {
	cfg, err := f.config()
	if err != nil {
		return nil, err
	}
	return snapclient.NewForConfig(cfg)
}

func (f Flags) config() (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if f.Kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", f.Kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client configuration: %w", err)
	}
	cfg.QPS, cfg.Burst = float32(f.QPS), f.Burst
	cfg.UserAgent = "monocsi"
	return cfg, nil
}
