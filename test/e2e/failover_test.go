package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The controller Deployment the chart installs, its Lease and selector.
const (
	monocsiNS          = "monocsi"
	controllerName     = "monocsi-controller"
	controllerSelector = "app.kubernetes.io/name=monocsi,app.kubernetes.io/component=controller"
)

// leaseHolder returns the pod and the full identity holding the controller
// Lease ("" when released).
func leaseHolder(ctx context.Context) (pod, identity string, err error) {
	l, err := kube.CoordinationV1().Leases(monocsiNS).Get(ctx, controllerName, metav1.GetOptions{})
	if err != nil {
		return "", "", err
	}
	if l.Spec.HolderIdentity == nil {
		return "", "", nil
	}
	pod, _, _ = strings.Cut(*l.Spec.HolderIdentity, "_")
	return pod, *l.Spec.HolderIdentity, nil
}

// scaleController sets the chart's controller Deployment to n replicas and
// waits for the rollout.
func scaleController(t *testing.T, n int) {
	t.Helper()
	ctx := context.Background()
	if _, err := tc.Kubectl(ctx, "-n", monocsiNS, "scale", "deployment/"+controllerName, fmt.Sprintf("--replicas=%d", n)); err != nil {
		t.Fatal(err)
	}
	if err := tc.WaitRollout(ctx, "deployment/"+controllerName, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		eventually(t, time.Minute, "controller pods gone", func() error {
			pods, err := kube.CoreV1().Pods(monocsiNS).List(ctx, metav1.ListOptions{LabelSelector: controllerSelector})
			if err != nil || len(pods.Items) > 0 {
				return fmt.Errorf("%d pods left (%v)", len(pods.Items), err)
			}
			return nil
		})
	}
}

// controllerPID finds the host PID of the monocsi process in a pod (the
// test runs on the node, as root).
func controllerPID(pod string) (int, error) {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		env, err := os.ReadFile(d + "/environ")
		if err != nil || !slices.Contains(strings.Split(string(env), "\x00"), "POD_NAME="+pod) {
			continue
		}
		if cmd, _ := os.ReadFile(d + "/cmdline"); strings.Contains(string(cmd), "controller\x00") {
			return strconv.Atoi(filepath.Base(d))
		}
	}
	return 0, fmt.Errorf("no monocsi controller process of pod %s", pod)
}

// signalLeader sends sig to the process holding the Lease and waits for it
// to be gone; it returns the process's identity and when it was gone.
func signalLeader(t *testing.T, sig syscall.Signal) (string, time.Time) {
	t.Helper()
	ctx := context.Background()
	var pod, id string
	eventually(t, time.Minute, "a lease holder", func() (err error) {
		if pod, id, err = leaseHolder(ctx); err == nil && pod == "" {
			err = fmt.Errorf("no holder")
		}
		return err
	})
	pid, err := controllerPID(pod)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, sig); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Minute, fmt.Sprintf("process %d of %s gone after %v", pid, pod, sig), func() error {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d/environ", pid)); err == nil {
			if st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); !strings.Contains(string(st), ") Z ") {
				return fmt.Errorf("still running")
			}
		}
		return nil
	})
	t.Logf("%v sent to the leader %s (pid %d)", sig, id, pid)
	return id, time.Now()
}

// controllerLogs collects the log lines of the containers of the pods whose
// names start with a prefix, by reading the kubelet's CRI log files as they
// grow (including those of restarted containers), with their timestamps.
type controllerLogs struct {
	mu    sync.Mutex
	lines map[string]bool // "<RFC 3339 time> <line>"
}

func followLogs(t *testing.T, podPrefix string) *controllerLogs {
	ctx, cancel := context.WithCancel(context.Background())
	l := &controllerLogs{lines: map[string]bool{}}
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	pattern := filepath.Join(tc.Dir, "pod-logs", monocsiNS+"_"+podPrefix+"*", "monocsi", "*.log")
	read := map[string]int64{} // bytes of each file already read
	go func() {
		defer close(done)
		for {
			files, _ := filepath.Glob(pattern)
			for _, f := range files {
				read[f] += l.readFrom(f, read[f])
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	return l
}

// readFrom adds the whole lines of file f after offset and returns how many
// bytes they took.
func (l *controllerLogs) readFrom(f string, offset int64) int64 {
	fh, err := os.Open(f)
	if err != nil {
		return 0
	}
	defer fh.Close()
	b, err := io.ReadAll(io.NewSectionReader(fh, offset, 1<<40))
	if err != nil {
		return 0
	}
	end := bytes.LastIndexByte(b, '\n') + 1
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range strings.Split(string(b[:end]), "\n") {
		// CRI format: <time> <stream> <F|P> <text>
		if f := strings.SplitN(line, " ", 4); len(f) == 4 {
			l.lines[f[0]+" "+f[3]] = true
		}
	}
	return int64(end)
}

// contains reports whether one line holds every one of subs.
func (l *controllerLogs) contains(subs ...string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for line := range l.lines {
		if !slices.ContainsFunc(subs, func(s string) bool { return !strings.Contains(line, s) }) {
			return true
		}
	}
	return false
}

// match returns the submatches of re in the first line that matches it, or
// nil.
func (l *controllerLogs) match(re *regexp.Regexp) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	for line := range l.lines {
		if m := re.FindStringSubmatch(line); m != nil {
			return m
		}
	}
	return nil
}

var actingLine = regexp.MustCompile(`^(\S+) .*"(Acting|Stopped acting: every worker returned)".* identity="([^"]+)"`)

// actingSpan is when one process (an elector identity) acted.
type actingSpan struct {
	id         string
	start, end time.Time // end is zero while it still acts
}

// spans reads the acting spans from the logs; killed maps the identities of
// processes killed without a chance to log to when they were gone.
func (l *controllerLogs) spans(t *testing.T, killed map[string]time.Time) []actingSpan {
	l.mu.Lock()
	defer l.mu.Unlock()
	byID := map[string]*actingSpan{}
	var events []string
	for line := range l.lines {
		if strings.Contains(line, "leader") || strings.Contains(line, "Lease") || strings.Contains(line, "acting") {
			events = append(events, line)
		}
		m := actingLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		ts, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil {
			t.Fatalf("log timestamp %q: %v", m[1], err)
		}
		s := byID[m[3]]
		if s == nil {
			s = &actingSpan{id: m[3]}
			byID[m[3]] = s
		}
		at := &s.end
		if m[2] == "Acting" {
			at = &s.start
		}
		if !at.IsZero() {
			t.Errorf("%s logged %q twice", m[3], m[2])
		}
		*at = ts
	}
	slices.Sort(events)
	t.Logf("leader election in the logs:\n%s", strings.Join(events, "\n"))
	var out []actingSpan
	for id, s := range byID {
		if s.end.IsZero() {
			s.end = killed[id]
		}
		out = append(out, *s)
	}
	slices.SortFunc(out, func(a, b actingSpan) int { return a.start.Compare(b.start) })
	return out
}

// assertNeverTwoActing fails if two processes' acting spans overlap.
func assertNeverTwoActing(t *testing.T, spans []actingSpan) {
	t.Helper()
	for i, s := range spans {
		t.Logf("acting: %s from %s to %s", s.id, s.start.Format("15:04:05.000"), s.end.Format("15:04:05.000"))
		if s.start.IsZero() {
			t.Errorf("%s stopped acting without a start in the logs", s.id)
		}
		if i > 0 {
			prev := spans[i-1]
			if prev.end.IsZero() || s.start.Before(prev.end) {
				t.Errorf("two replicas acted at once: %s (until %s) and %s (from %s)", prev.id, prev.end, s.id, s.start)
			}
		}
	}
}

// TestControllerFailoverBurst: two controller replicas, a burst of 200 nfs
// claims, and during it a SIGTERM to the leader and then kill -9 of the next
// one. Every claim binds, the share holds exactly one directory per PV, and
// the logs show that no two replicas ever acted at once.
func TestControllerFailoverBurst(t *testing.T) {
	ctx := context.Background()
	share := nfsShare(t)
	nfsClass(t, "e2e-nfs-burst", "delete")
	logs := followLogs(t, controllerName+"-")
	scaleController(t, 2)
	t.Cleanup(func() { scaleController(t, 1) })

	const n = 200
	killed := map[string]time.Time{}
	var terminated string
	start := time.Now()
	for i := range n {
		claim(t, fmt.Sprintf("burst-%03d", i), "e2e-nfs-burst")
		switch i {
		case n / 4:
			// A graceful stop (a drain or rollout): the leader finishes
			// its calls, releases the Lease, and exits.
			terminated, _ = signalLeader(t, syscall.SIGTERM)
		case n / 2:
			// A crash: no release; the other waits for the Lease to expire.
			eventually(t, time.Minute, "another replica acting", func() error {
				_, id, err := leaseHolder(ctx)
				if err != nil || id == "" || id == terminated || !logs.contains(`"Acting"`, id) {
					return fmt.Errorf("lease held by %q (%v)", id, err)
				}
				return nil
			})
			id, gone := signalLeader(t, syscall.SIGKILL)
			killed[id] = gone
		}
	}
	eventually(t, 5*time.Minute, "every claim bound", func() error {
		pvcs, err := kube.CoreV1().PersistentVolumeClaims(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		bound := 0
		for _, c := range pvcs.Items {
			if strings.HasPrefix(c.Name, "burst-") && c.Status.Phase == corev1.ClaimBound {
				bound++
			}
		}
		if bound != n {
			return fmt.Errorf("%d of %d bound", bound, n)
		}
		return nil
	})
	t.Logf("all %d claims bound %s after the burst began", n, time.Since(start).Round(100*time.Millisecond))

	// Exactly one directory per PV: nothing made twice, nothing stray.
	pvs, err := kube.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, pv := range pvs.Items {
		if pv.Spec.StorageClassName == "e2e-nfs-burst" {
			want = append(want, pv.Spec.ClaimRef.Name)
		}
	}
	got := entries(t, filepath.Join(share, ns))
	var dirs []string
	for _, e := range got {
		if strings.HasPrefix(e, "burst-") {
			dirs = append(dirs, e)
		}
	}
	slices.Sort(want)
	if len(want) != n || !slices.Equal(dirs, want) {
		t.Errorf("%d PVs, %d burst directories on the share; they differ: PVs %v, directories %v", len(want), len(dirs), want, dirs)
	}

	if !logs.contains("Released the Lease after every worker returned", terminated) {
		t.Errorf("%s exited on SIGTERM without logging the release", terminated)
	}
	spans := logs.spans(t, killed)
	if len(spans) < 3 {
		t.Errorf("%d acting spans in the logs, want at least 3 (before the SIGTERM, before the kill, after)", len(spans))
	}
	assertNeverTwoActing(t, spans)
}

// entries lists the names in dir, sorted.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range des {
		out = append(out, d.Name())
	}
	return out
}

// deniedReplica runs a second controller Deployment, like the chart's but
// with a service account that may not touch CSIDriver objects and without a
// liveness probe: a replica that can win the Lease but never act. Its
// /healthz and /metrics are on 127.0.0.1:19809 of the node.
func deniedReplica(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	const name = "monocsi-denied"
	role, err := kube.RbacV1().ClusterRoles().Get(ctx, controllerName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var rules []rbacv1.PolicyRule
	for _, r := range role.Rules {
		if !slices.Contains(r.Resources, "csidrivers") {
			rules = append(rules, r)
		}
	}
	sa := []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: monocsiNS}}
	meta := metav1.ObjectMeta{Name: name}
	nsMeta := metav1.ObjectMeta{Name: name, Namespace: monocsiNS}
	create := func(what string, err error) {
		if err != nil {
			t.Fatalf("create %s: %v", what, err)
		}
	}
	_, err = kube.CoreV1().ServiceAccounts(monocsiNS).Create(ctx, &corev1.ServiceAccount{ObjectMeta: nsMeta}, metav1.CreateOptions{})
	create("service account", err)
	_, err = kube.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: meta, Rules: rules}, metav1.CreateOptions{})
	create("cluster role", err)
	_, err = kube.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: meta, Subjects: sa,
		RoleRef: rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: name}}, metav1.CreateOptions{})
	create("cluster role binding", err)
	_, err = kube.RbacV1().RoleBindings(monocsiNS).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: nsMeta, Subjects: sa,
		RoleRef: rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: controllerName + "-lease"}}, metav1.CreateOptions{})
	create("role binding", err)

	healthy, err := kube.AppsV1().Deployments(monocsiNS).Get(ctx, controllerName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"app": name}
	one := int32(1)
	spec := healthy.Spec.Template.Spec.DeepCopy()
	spec.ServiceAccountName = name
	c := &spec.Containers[0]
	c.LivenessProbe = nil // it must step down by itself
	c.Args = append(slices.Clone(c.Args), "--http-endpoint=127.0.0.1:19809")
	d := &appsv1.Deployment{ObjectMeta: nsMeta, Spec: appsv1.DeploymentSpec{Replicas: &one,
		Selector: &metav1.LabelSelector{MatchLabels: labels},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: *spec}}}
	_, err = kube.AppsV1().Deployments(monocsiNS).Create(ctx, d, metav1.CreateOptions{})
	create("deployment", err)
	t.Cleanup(func() {
		fg := metav1.DeletePropagationForeground
		_ = kube.AppsV1().Deployments(monocsiNS).Delete(ctx, name, metav1.DeleteOptions{PropagationPolicy: &fg})
		eventually(t, 2*time.Minute, "denied replica gone", func() error {
			if _, err := kube.AppsV1().Deployments(monocsiNS).Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return fmt.Errorf("still there (%v)", err)
			}
			pods, _ := kube.CoreV1().Pods(monocsiNS).List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
			if len(pods.Items) > 0 {
				return fmt.Errorf("%d pods left", len(pods.Items))
			}
			return nil
		})
		_ = kube.RbacV1().RoleBindings(monocsiNS).Delete(ctx, name, metav1.DeleteOptions{})
		_ = kube.RbacV1().ClusterRoleBindings().Delete(ctx, name, metav1.DeleteOptions{})
		_ = kube.RbacV1().ClusterRoles().Delete(ctx, name, metav1.DeleteOptions{})
		_ = kube.CoreV1().ServiceAccounts(monocsiNS).Delete(ctx, name, metav1.DeleteOptions{})
	})
}

// deniedEndpoint fetches a path of the denied replica's HTTP endpoint.
func deniedEndpoint(path string) (int, string, error) {
	resp, err := http.Get("http://127.0.0.1:19809" + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// bindsWithin creates an nfs claim and fails unless it binds within limit.
func bindsWithin(t *testing.T, name string, limit time.Duration) {
	t.Helper()
	start := time.Now()
	claim(t, name, "e2e-nfs-denied")
	eventually(t, limit, "claim "+name+" bound", func() error {
		pvc, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if pvc.Status.Phase != corev1.ClaimBound {
			return fmt.Errorf("phase %s", pvc.Status.Phase)
		}
		return nil
	})
	t.Logf("claim %s bound in %s", name, time.Since(start).Round(100*time.Millisecond))
}

// TestControllerDeniedReplica: one replica whose RBAC denies CSIDriver
// objects and one healthy replica. Whichever starts first, a claim binds
// within two minutes: a denied leader reports unhealthy, retries, then steps
// down by itself (no liveness probe), releasing the Lease and exiting
// non-zero, and never acts.
func TestControllerDeniedReplica(t *testing.T) {
	ctx := context.Background()
	nfsShare(t)
	nfsClass(t, "e2e-nfs-denied", "delete")
	denied := followLogs(t, "monocsi-denied-")

	// The healthy replica leads first: the denied one stands by, healthy.
	deniedReplica(t)
	eventually(t, time.Minute, "the denied replica standing by", func() error {
		code, body, err := deniedEndpoint("/healthz")
		if err != nil || code != http.StatusOK {
			return fmt.Errorf("/healthz %d %q %v", code, body, err)
		}
		if !denied.contains("Another replica leads") {
			return fmt.Errorf("not standing by yet")
		}
		return nil
	})
	bindsWithin(t, "denied-healthy-first", 2*time.Minute)

	// The denied replica leads first: the healthy one comes up while it
	// holds the Lease.
	scaleController(t, 0)
	eventually(t, time.Minute, "the denied replica leading and reporting it cannot act", func() error {
		pod, _, err := leaseHolder(ctx)
		if err != nil || !strings.HasPrefix(pod, "monocsi-denied-") {
			return fmt.Errorf("lease held by %q (%v)", pod, err)
		}
		code, body, err := deniedEndpoint("/healthz")
		if err != nil || code != http.StatusInternalServerError || !strings.Contains(body, "cannot act") {
			return fmt.Errorf("/healthz %d %q %v", code, body, err)
		}
		if _, m, _ := deniedEndpoint("/metrics"); !strings.Contains(m, "monocsi_controller_leading 1") || !strings.Contains(m, "monocsi_controller_acting 0") {
			return fmt.Errorf("gauges: %s", grepLines(m, "monocsi_controller_"))
		}
		return nil
	})
	scaleController(t, 1)
	bindsWithin(t, "denied-denied-first", 2*time.Minute)
	if !denied.contains("Stepped down") {
		t.Error("the denied replica did not log that it stepped down")
	}
	if denied.contains(`"Acting"`) {
		t.Error("the denied replica acted")
	}
	eventually(t, time.Minute, "the denied replica's container exited non-zero", func() error {
		pods, err := kube.CoreV1().Pods(monocsiNS).List(ctx, metav1.ListOptions{LabelSelector: "app=monocsi-denied"})
		if err != nil || len(pods.Items) != 1 || len(pods.Items[0].Status.ContainerStatuses) != 1 {
			return fmt.Errorf("pods %v", err)
		}
		last := pods.Items[0].Status.ContainerStatuses[0].LastTerminationState.Terminated
		if last == nil || last.ExitCode == 0 {
			return fmt.Errorf("last termination %+v", last)
		}
		return nil
	})
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "; ")
}

// claimsBound waits until every claim whose name starts with prefix (n of
// them) is bound.
func claimsBound(t *testing.T, prefix string, n int, limit time.Duration) {
	t.Helper()
	eventually(t, limit, fmt.Sprintf("%d %s* claims bound", n, prefix), func() error {
		pvcs, err := kube.CoreV1().PersistentVolumeClaims(ns).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return err
		}
		bound := 0
		for _, c := range pvcs.Items {
			if strings.HasPrefix(c.Name, prefix) && c.Status.Phase == corev1.ClaimBound {
				bound++
			}
		}
		if bound != n {
			return fmt.Errorf("%d of %d bound", bound, n)
		}
		return nil
	})
}

// TestControllerAPIServerPause: the API server freezes for longer than the
// renew deadline while claims come in. The leader loses the Lease and
// exits; after the API server resumes a replica takes over, every claim
// binds, and no two replicas ever acted at once.
func TestControllerAPIServerPause(t *testing.T) {
	nfsShare(t)
	nfsClass(t, "e2e-nfs-pause", "delete")
	logs := followLogs(t, controllerName+"-")
	scaleController(t, 2)
	t.Cleanup(func() { scaleController(t, 1) })
	const n = 20
	for i := range n / 2 {
		claim(t, fmt.Sprintf("pause-%02d", i), "e2e-nfs-pause")
	}
	// The leader renews every retry period (5 s), each round giving up
	// after the renew deadline (10 s) from its start: only a freeze longer
	// than both together is sure to cover a whole round, wherever in the
	// cycle it starts (14 s let a round that began 1 s before its end
	// succeed about one time in five).
	if err := tc.PauseAPIServer(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	for i := n / 2; i < n; i++ {
		claim(t, fmt.Sprintf("pause-%02d", i), "e2e-nfs-pause")
	}
	claimsBound(t, "pause-", n, 3*time.Minute)
	spans := logs.spans(t, nil)
	if len(spans) < 2 {
		t.Errorf("%d acting spans: the leader should have lost the Lease while the API server was frozen", len(spans))
	}
	// The leader that lost the Lease exited without logging "Stopped
	// acting": its span ends when its container did.
	ctx := context.Background()
	pods, err := kube.CoreV1().Pods(monocsiNS).List(ctx, metav1.ListOptions{LabelSelector: controllerSelector})
	if err != nil {
		t.Fatal(err)
	}
	for i := range spans {
		if !spans[i].end.IsZero() || i == len(spans)-1 {
			continue
		}
		for _, p := range pods.Items {
			if last := p.Status.ContainerStatuses[0].LastTerminationState.Terminated; last != nil && strings.HasPrefix(spans[i].id, p.Name+"_") {
				spans[i].end = last.FinishedAt.Time
			}
		}
	}
	assertNeverTwoActing(t, spans)
}

// TestControllerTransientDenial: the controller's RBAC loses CSIDriver
// objects for a while and the leader restarts meanwhile. It retries with
// backoff while it leads, acts as soon as the rule is back, without
// exiting, and a claim made meanwhile binds.
func TestControllerTransientDenial(t *testing.T) {
	ctx := context.Background()
	nfsShare(t)
	nfsClass(t, "e2e-nfs-transient", "delete")
	logs := followLogs(t, controllerName+"-")
	roles := kube.RbacV1().ClusterRoles()
	role, err := roles.Get(ctx, controllerName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	full := role.DeepCopy()
	restore := func() {
		r, err := roles.Get(ctx, controllerName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		r.Rules = full.Rules
		if _, err := roles.Update(ctx, r, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(restore)
	role.Rules = slices.DeleteFunc(role.Rules, func(r rbacv1.PolicyRule) bool { return slices.Contains(r.Resources, "csidrivers") })
	if _, err := roles.Update(ctx, role, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A restart makes the leader create its state anew (CSIDriver first).
	killed, _ := signalLeader(t, syscall.SIGKILL)
	claim(t, "transient", "e2e-nfs-transient")
	var id string
	eventually(t, time.Minute, "the new leader retrying", func() error {
		if !logs.contains("Cannot act yet; retrying", "csidrivers") {
			return fmt.Errorf("no retry logged yet")
		}
		var err error
		if _, id, err = leaseHolder(ctx); err != nil || id == "" || id == killed {
			return fmt.Errorf("lease held by %q (%v)", id, err)
		}
		return nil
	})
	restore()
	claimsBound(t, "transient", 1, time.Minute)
	// The log is read from the container's log file: it may trail the claim.
	eventually(t, 30*time.Second, id+" acting after the rule came back", func() error {
		if !logs.contains(`"Acting"`, id) {
			return fmt.Errorf("no \"Acting\" logged by %s", id)
		}
		return nil
	})
	if logs.contains("Stepped down", id) {
		t.Errorf("%s stepped down although the denial lasted less than --act-timeout", id)
	}
}
