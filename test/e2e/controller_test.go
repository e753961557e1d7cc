package e2e

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/monocsi/monocsi/test/testbin"
)

// Two controller replicas: exactly one leads through the Lease; when the
// leader dies without releasing it, the other takes over once it expires.
func TestControllerLeaderElection(t *testing.T) {
	ctx := context.Background()
	args := []string{"controller", "--kubeconfig=" + tc.Kubeconfig, "--leader-election-namespace=default",
		"--leader-election-lease-name=e2e-controller", "--leader-election-lease-duration=4s",
		"--leader-election-renew-deadline=3s", "--leader-election-retry-period=500ms", "--v=2"}
	a, b := testbin.Start(t, args...), testbin.Start(t, args...)
	leading := func() ([]*testbin.Process, error) {
		var l []*testbin.Process
		for _, p := range []*testbin.Process{a, b} {
			if _, exited := p.Exited(0); !exited && strings.Contains(p.Log(), "Became leader") {
				l = append(l, p)
			}
		}
		if len(l) != 1 {
			return nil, fmt.Errorf("%d leaders", len(l))
		}
		return l, nil
	}
	var first *testbin.Process
	eventually(t, 30*time.Second, "one leader", func() error {
		l, err := leading()
		if err == nil {
			first = l[0]
		}
		return err
	})
	lease, err := kube.CoordinationV1().Leases("default").Get(ctx, "e2e-controller", metav1.GetOptions{})
	if err != nil || lease.Spec.HolderIdentity == nil || !strings.Contains(first.Log(), *lease.Spec.HolderIdentity) {
		t.Fatalf("lease holder does not match the leader's log: %v %v", lease, err)
	}
	holder := *lease.Spec.HolderIdentity
	other := a
	if first == a {
		other = b
	}
	// SIGKILL: no release; the other must wait for the lease to expire.
	if err := first.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the other replica takes over", func() error {
		if !strings.Contains(other.Log(), "Became leader") {
			return fmt.Errorf("not yet")
		}
		l, err := kube.CoordinationV1().Leases("default").Get(ctx, "e2e-controller", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == holder {
			return fmt.Errorf("lease still held by %v", l.Spec.HolderIdentity)
		}
		return nil
	})
}
