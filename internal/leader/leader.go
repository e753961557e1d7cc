// Package leader runs a controller's work only while this process holds a
// Lease, so two replicas are safe: one Lease per process for all its drivers,
// not one per driver as with the sidecars. A leader that cannot act gives the
// Lease up, and the Lease is released only after the work has returned.
package leader

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"

	"github.com/monocsi/monocsi/internal/drain"
)

// Config is the sidecars' leader-election flags, and how long a leader may
// fail to start acting.
type Config struct {
	Namespace     string
	Name          string
	LeaseDuration time.Duration
	RenewDeadline time.Duration
	RetryPeriod   time.Duration
	// ActTimeout bounds the time from taking the Lease (or starting, without
	// election) to acting; failed starts are retried with backoff until then.
	ActTimeout time.Duration
}

// Work starts the controller's workers and returns only once every one of
// them has returned. It calls acting when they run; an error before that is
// retried.
type Work func(ctx context.Context, acting func()) error

var (
	// ErrLost is returned when leadership is lost: the caller must exit,
	// because another replica may now act (as the sidecars do).
	ErrLost = errors.New("leader election lost")
	// ErrCannotAct is returned when the work did not start within ActTimeout.
	ErrCannotAct = errors.New("cannot act")
	// ErrWorkEnded is returned when the work ended while it should run.
	ErrWorkEnded = errors.New("the controller's work ended")
)

var (
	actingGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "monocsi_controller_acting",
		Help: "1 while this replica acts: it leads (or runs without election) and its workers run.",
	})
	leadingGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "monocsi_controller_leading",
		Help: "1 while this replica holds the Lease (or runs without election).",
	})
)

// Collectors are the gauges to register with the process's registry.
func Collectors() []prometheus.Collector { return []prometheus.Collector{actingGauge, leadingGauge} }

// Elector runs work under a Lease and reports whether it can act.
type Elector struct {
	c      Config
	client kubernetes.Interface // used for the Lease alone, not throttled by the work
	id     string

	mu      sync.Mutex
	leading bool
	acting  bool
	lastErr error // why the last start failed, while leading and not acting
}

// New returns an Elector whose identity is the pod's name (a pod on the host
// network has the node's host name) and a unique suffix, so the Lease says
// which replica leads.
func New(client kubernetes.Interface, c Config) *Elector {
	host := os.Getenv("POD_NAME")
	if host == "" {
		host, _ = os.Hostname()
	}
	return &Elector{c: c, client: client, id: host + "_" + string(uuid.NewUUID())}
}

// Healthy is nil while standing by or acting, and an error while this
// replica leads but its last start failed.
func (e *Elector) Healthy(context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.leading && !e.acting && e.lastErr != nil {
		return fmt.Errorf("leading but cannot act: %w", e.lastErr)
	}
	return nil
}

func (e *Elector) set(leading, acting bool, lastErr error) {
	e.mu.Lock()
	e.leading, e.acting, e.lastErr = leading, acting, lastErr
	e.mu.Unlock()
	leadingGauge.Set(b2f(leading))
	actingGauge.Set(b2f(acting))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// RunAlone runs work without election (a single replica): it returns nil
// when ctx ends, and an error when the work cannot start or ends by itself.
func (e *Elector) RunAlone(ctx context.Context, work Work) error {
	err := e.act(ctx, work)
	e.set(false, false, nil)
	return err
}

// Run campaigns for the Lease until ctx ends, and runs work while leading.
// It returns nil when ctx ended, ErrLost when the Lease was lost, and the
// work's error when it could not act or ended by itself; in the last two
// cases the Lease has been released after the work returned. Every non-nil
// return means the process must exit.
func (e *Elector) Run(ctx context.Context, work Work) error {
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, e.c.Namespace, e.c.Name,
		e.client.CoreV1(), e.client.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: e.id})
	if err != nil {
		return err
	}
	// The election outlives ctx while the work runs: the Lease is renewed
	// until every worker has returned, then released (by release, not by
	// client-go's ReleaseOnCancel, so that stuck work can keep it).
	electCtx, stopElecting := context.WithCancel(context.WithoutCancel(ctx))
	defer stopElecting()
	var (
		mu      sync.Mutex
		started bool // OnStartedLeading ran the work
		stopped bool // the election was ended by this process, not by a failed renewal
		result  = make(chan error, 1)
	)
	stop := func() {
		stopped = true
		stopElecting()
	}
	stopStandby := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if !started {
			stop() // not leading: nothing to wait for
		}
	})
	defer stopStandby()
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: lock, LeaseDuration: e.c.LeaseDuration, RenewDeadline: e.c.RenewDeadline, RetryPeriod: e.c.RetryPeriod,
		Name: e.c.Name,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(leading context.Context) {
				mu.Lock()
				if stopped {
					mu.Unlock()
					return // shutting down as the Lease was won: it is released unused
				}
				started = true
				mu.Unlock()
				klog.InfoS("Became leader", "lease", e.c.Namespace+"/"+e.c.Name, "identity", e.id)
				wctx, cancel := context.WithCancel(leading)
				defer context.AfterFunc(ctx, cancel)()
				err := e.act(wctx, work)
				cancel()
				mu.Lock()
				defer mu.Unlock()
				// leading ends only when the election does: if it has,
				// the renewal failed and Run reports ErrLost.
				if leading.Err() == nil {
					result <- err
					stop()
				}
			},
			OnStoppedLeading: func() { e.set(false, false, nil) },
			OnNewLeader: func(who string) {
				if who != e.id {
					klog.InfoS("Another replica leads", "leader", who)
				}
			},
		},
	})
	if err != nil {
		return fmt.Errorf("leader election: %w", err)
	}
	le.Run(electCtx)
	mu.Lock()
	defer mu.Unlock()
	if !stopped {
		// The renewal failed: the work's context is cancelled, but another
		// replica may act once the Lease expires, so the process must go now.
		return ErrLost
	}
	select {
	case err := <-result:
		if errors.Is(err, drain.ErrStuck) {
			// Work that outlived the wait still runs in this process: the
			// Lease is left to expire after the process (and the work) died.
			klog.ErrorS(err, "Exiting without releasing the Lease", "lease", e.c.Namespace+"/"+e.c.Name)
			return err
		}
		if rerr := e.release(); rerr != nil {
			klog.ErrorS(rerr, "Releasing the Lease; it expires by itself", "lease", e.c.Namespace+"/"+e.c.Name)
		}
		if err == nil {
			klog.InfoS("Released the Lease after every worker returned", "lease", e.c.Namespace+"/"+e.c.Name, "identity", e.id)
			return nil
		}
		klog.ErrorS(err, "Stepped down: released the Lease for another replica", "lease", e.c.Namespace+"/"+e.c.Name)
		e.awaitSuccessor(ctx)
		return err
	default:
		return nil // stood by until ctx ended
	}
}

// release gives the Lease up if this process still holds it, as client-go's
// ReleaseOnCancel does: no holder, and a duration of one second.
func (e *Elector) release() error {
	ctx, cancel := context.WithTimeout(context.Background(), e.c.RenewDeadline)
	defer cancel()
	leases := e.client.CoordinationV1().Leases(e.c.Namespace)
	l, err := leases.Get(ctx, e.c.Name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != e.id {
		return nil // taken over already
	}
	now := metav1.NowMicro()
	empty, one := "", int32(1)
	l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds, l.Spec.AcquireTime, l.Spec.RenewTime = &empty, &one, &now, &now
	_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
	return err
}

// awaitSuccessor gives a standby up to a Lease duration to take the released
// Lease before this process exits: a restarted replica must not win it back
// at once when it still cannot act.
func (e *Elector) awaitSuccessor(ctx context.Context) {
	deadline := time.Now().Add(e.c.LeaseDuration)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		l, err := e.client.CoordinationV1().Leases(e.c.Namespace).Get(ctx, e.c.Name, metav1.GetOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			klog.V(2).InfoS("Reading the Lease", "err", err)
		} else if err == nil && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" && *l.Spec.HolderIdentity != e.id {
			klog.InfoS("Another replica took the Lease", "leader", *l.Spec.HolderIdentity)
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(e.c.RetryPeriod / 2):
		}
	}
}

// errActTimeout cancels an attempt that has not started acting in time.
var errActTimeout = errors.New("act timeout")

// act runs work until it returns. Until the work says it acts, a failure is
// retried with backoff (1 s doubling to 16 s); an attempt still not acting at
// ActTimeout is cancelled and the whole gives up with ErrCannotAct. Once
// acting, the work must run until ctx ends: returning earlier is an error.
func (e *Elector) act(ctx context.Context, work Work) error {
	e.set(true, false, nil)
	deadline := time.Now().Add(e.c.ActTimeout)
	delay := time.Second
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithCancelCause(ctx)
		var mu sync.Mutex
		acting := false
		timer := time.AfterFunc(time.Until(deadline), func() {
			mu.Lock()
			defer mu.Unlock()
			if !acting {
				cancel(errActTimeout)
			}
		})
		err := work(actx, func() {
			mu.Lock()
			defer mu.Unlock()
			if !acting && actx.Err() == nil {
				acting = true
				e.set(true, true, nil)
				klog.InfoS("Acting", "attempt", attempt, "identity", e.id)
			}
		})
		timer.Stop()
		timedOut := errors.Is(context.Cause(actx), errActTimeout)
		cancel(nil)
		mu.Lock()
		wasActing := acting
		mu.Unlock()
		if wasActing {
			e.set(true, false, nil)
			klog.InfoS("Stopped acting: every worker returned", "identity", e.id, "err", err)
			if ctx.Err() != nil && !errors.Is(err, drain.ErrStuck) {
				return nil
			}
			if err == nil {
				return ErrWorkEnded
			}
			return fmt.Errorf("%w: %w", ErrWorkEnded, err)
		}
		if ctx.Err() != nil {
			return nil
		}
		if err == nil || timedOut {
			err = errors.Join(err, fmt.Errorf("not acting after %s", e.c.ActTimeout))
		}
		e.set(true, false, err)
		if timedOut || time.Now().Add(delay).After(deadline) {
			return fmt.Errorf("%w within %s: %w", ErrCannotAct, e.c.ActTimeout, err)
		}
		klog.ErrorS(err, "Cannot act yet; retrying", "attempt", attempt, "retryIn", delay)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		delay = min(2*delay, 16*time.Second)
	}
}
