// Package leader runs a function only while this process holds a Lease, so
// two controller replicas are safe: one Lease per process for all its
// drivers, not one per driver as with the sidecars.
package leader

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"
)

// Config is the sidecars' leader-election flags.
type Config struct {
	Namespace     string
	Name          string
	LeaseDuration time.Duration
	RenewDeadline time.Duration
	RetryPeriod   time.Duration
}

// ErrLost is returned when leadership is lost: the caller must exit, because
// another replica is now acting (as the sidecars do).
var ErrLost = errors.New("leader election lost")

// Run calls work with a context that ends when ctx ends or leadership is
// lost, once this process has become the leader.
func Run(ctx context.Context, client kubernetes.Interface, c Config, work func(context.Context)) error {
	// The pod's name when the manifests pass it (a pod on the host network
	// has the node's host name), so the Lease says which replica leads.
	host := os.Getenv("POD_NAME")
	if host == "" {
		host, _ = os.Hostname()
	}
	id := host + "_" + string(uuid.NewUUID())
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, c.Namespace, c.Name,
		client.CoreV1(), client.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: id})
	if err != nil {
		return err
	}
	lost := make(chan struct{})
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: lock, LeaseDuration: c.LeaseDuration, RenewDeadline: c.RenewDeadline, RetryPeriod: c.RetryPeriod,
		ReleaseOnCancel: true, Name: c.Name,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				klog.InfoS("Became leader", "lease", c.Namespace+"/"+c.Name, "identity", id)
				work(ctx)
			},
			OnStoppedLeading: func() { close(lost) },
			OnNewLeader: func(who string) {
				if who != id {
					klog.InfoS("Another replica leads", "leader", who)
				}
			},
		},
	})
	if err != nil {
		return fmt.Errorf("leader election: %w", err)
	}
	le.Run(ctx)
	select {
	case <-lost:
		if ctx.Err() == nil {
			return ErrLost
		}
	default:
	}
	return nil
}
