// Command provision benchmarks monocsi on the test cluster (make bench): the
// memory of its node and controller processes idle, with 200 volumes of
// each role, and with 1,000 and 5,000 volumes of other nodes and drivers in
// the cluster; the provisioning of N claims at once per driver (time to
// Bound, deletion with its stages) against a floor of N PVs and pre-bound
// claims bound by the PV controller alone; and the binary's size. Results
// are written to BENCHMARKS.md and, as JSON, for a later run to compare
// against (-baseline).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/monocsi/monocsi/internal/imagebuild"
	"github.com/monocsi/monocsi/internal/textpages"
	"github.com/monocsi/monocsi/test/cluster"
)

const (
	ns       = "default"
	inFlight = 50
	// The nfs driver's share, served by the test cluster's NFS emulation.
	nfsServer, nfsShare = "127.0.0.1", "/exports/bench"
)

// The memory phases, in the order of the run.
const (
	phaseIdle      = "idle"
	phaseIdleLater = "idle, 2 minutes later"
	idleLater      = 2 * time.Minute
	phaseLocal     = "200 local volumes"
	phaseNFS       = "200 nfs volumes"
	settleLeast    = 20 * time.Second
	settleMost     = 2 * time.Minute
	quietMost      = 5 * time.Minute
	deletionLimit  = 10 * time.Minute
)

// The memory phases with volumes of other nodes and drivers: 1,000 and
// 5,000 by default.
var (
	phaseOther1k = otherPhase(1000)
	phaseOther5k = otherPhase(5000)
)

// snapshotControllerPhase is the last phase: n volumes of other nodes and
// drivers, with the chart's snapshots.controller on.
func snapshotControllerPhase(n int) string {
	return otherPhase(n) + ", snapshot-controller on"
}

func otherPhase(n int) string {
	s := fmt.Sprint(n)
	if n >= 1000 {
		s = fmt.Sprintf("%d,%03d", n/1000, n%1000)
	}
	return s + " volumes of other nodes and drivers"
}

// target is one driver under measurement.
type target struct {
	driver, class string
	mode          storagev1.VolumeBindingMode
	params        map[string]string
	root          string // where its volume directories (pvc-*) appear on the host
	what          string // how it provisions, for the report
	phase         string // the memory phase measured while its volumes exist
}

func main() {
	n := flag.Int("n", 200, "number of claims")
	out := flag.String("out", "BENCHMARKS.md", "where to write the results")
	js := flag.String("json", "", "where to write the results as JSON too (for -baseline of a later run)")
	baseline := flag.String("baseline", "", "JSON results of an earlier run to report beside these (\"before\")")
	other := flag.Int("other", 5000, "volumes of other nodes and drivers to create at the end (a fifth of them first); 0: none")
	keepLogs := flag.String("keep-logs", "", "copy the cluster's component and pod logs into this directory before stopping it")
	render := flag.String("render", "", "write the report from these JSON results instead of running the benchmark")
	flag.Parse()
	var base *Results
	if *baseline != "" {
		var err error
		if base, err = readResults(*baseline); err != nil {
			fmt.Fprintln(os.Stderr, "bench: baseline:", err)
			os.Exit(1)
		}
	}
	var res *Results
	var err error
	if *render != "" {
		res, err = readResults(*render)
	} else {
		res, err = run(*n, *other, *keepLogs)
	}
	if err == nil && *js != "" && *render == "" {
		var b []byte
		if b, err = json.MarshalIndent(res, "", "  "); err == nil {
			err = os.WriteFile(*js, append(b, '\n'), 0o644)
		}
	}
	if err == nil {
		err = report(*out, res, base)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func readResults(file string) (*Results, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	r := &Results{}
	return r, json.Unmarshal(b, r)
}

// Results are one run's figures.
type Results struct {
	Date        string      `json:"date"`
	Commit      string      `json:"commit"` // git describe of the tree benchmarked
	Machine     string      `json:"machine"`
	K8sVersion  string      `json:"k8sVersion"`
	N           int         `json:"n"`
	BinaryBytes int64       `json:"binaryBytes"` // the linux/amd64 binary the cluster ran
	Memory      []MemPhase  `json:"memory"`
	Targets     []*result   `json:"targets"`
	Floor       *result     `json:"floor"`
	Other       OtherResult `json:"other"`
	SizeTable   string      `json:"sizeTable"`
	// Disturbed says when another test cluster ran beside this one.
	Disturbed string `json:"disturbed,omitempty"`
}

// OtherResult is how the volumes of other nodes and drivers went in.
type OtherResult struct {
	Created float64 `json:"createdSeconds"` // creating all of them, bound
	Changes int     `json:"changes"`        // updates seen after the bench's own writes began, by anyone
}

// Phase returns the memory phase called name.
func (r *Results) Phase(name string) *MemPhase {
	for i := range r.Memory {
		if r.Memory[i].Name == name {
			return &r.Memory[i]
		}
	}
	return nil
}

type result struct {
	Driver   string   `json:"driver"`
	What     string   `json:"what"`
	AllBound float64  `json:"allBound"`
	P50      float64  `json:"p50"`
	P99      float64  `json:"p99"`
	ToPV50   float64  `json:"toPV50"` // claim created → PV object created
	ToPV99   float64  `json:"toPV99"`
	Deleted  float64  `json:"deleted"` // claims deleted → every PV and directory gone
	Stages   []Stage  `json:"stages"`
	Evidence Evidence `json:"evidence"`
}

func run(n, other int, keepLogs string) (res *Results, err error) {
	ctx := context.Background()
	host, _ := os.Hostname()
	res = &Results{Date: time.Now().UTC().Format("2006-01-02 15:04 MST"), Commit: commit(), N: n, K8sVersion: cluster.K8sVersion,
		Machine: fmt.Sprintf("%s, %d CPUs, %s", host, runtime.NumCPU(), runtime.GOARCH)}
	images, err := cluster.BuildImages(os.Stdout)
	if err != nil {
		return nil, err
	}
	if err := waitAlone(time.Hour); err != nil {
		return nil, err
	}
	if st, err := os.Stat(filepath.Join(cluster.RepoRoot(), "bin", "linux-amd64", "monocsi")); err == nil {
		res.BinaryBytes = st.Size()
	}
	if res.SizeTable, err = imagebuild.ArchiveSizeTable(cluster.MonocsiArchive()); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "monocsi-bench-")
	if err != nil {
		return nil, err
	}
	c, err := cluster.Start(ctx, cluster.Options{Dir: dir, Images: images, Log: os.Stdout})
	if err != nil {
		return nil, err
	}
	defer func() {
		if keepLogs != "" {
			copyLogs(c, keepLogs)
		}
		if stopErr := c.Stop(err != nil); stopErr != nil && err == nil {
			err = stopErr
		}
	}()
	ours := map[string]bool{}
	for _, p := range c.Procs {
		ours[strconv.Itoa(p.PID)] = true
	}
	stopWatch, watchDone := make(chan struct{}), make(chan struct{})
	defer func() { close(stopWatch); <-watchDone }()
	go func() {
		defer close(watchDone)
		for {
			select {
			case <-stopWatch:
				return
			case <-time.After(5 * time.Second):
			}
			for _, pid := range kubelets() {
				if !ours[pid] && res.Disturbed == "" {
					res.Disturbed = fmt.Sprintf("another test cluster's kubelet (pid %s) ran from %s on", pid, time.Now().Format("15:04:05"))
					fmt.Println("!!!", res.Disturbed)
				}
			}
		}
	}()
	// The chart's defaults: no snapshot-controller (a cluster has one at
	// most, and it is opt-in); its cost is measured as a last phase.
	if err := c.InstallMonocsi(ctx, "--set=snapshots.controller=false"); err != nil {
		return nil, err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = 1000, 2000 // the bench client must not be the bottleneck
	kube := kubernetes.NewForConfigOrDie(cfg)
	// mem records a phase once memory settles, at least `after` later.
	mem := func(name string, after time.Duration) {
		res.Memory = append(res.Memory, settle(c.APIPort, name, after+settleLeast, after+settleMost))
	}
	fmt.Println("==> memory, idle")
	// Idle is a started role: past the moment it drops the pages only its
	// start used (textpages.StartDelay after the process began).
	mem(phaseIdle, textpages.StartDelay)
	// A second look: does idle memory keep growing (resyncs, renewals)?
	time.Sleep(idleLater)
	res.Memory = append(res.Memory, MemPhase{Name: phaseIdleLater, Procs: sampleMem(c.APIPort)})
	targets := []target{
		{driver: "local.csi.monocsi.io", class: "bench-local", mode: storagev1.VolumeBindingWaitForFirstConsumer, root: c.LocalRoot(), phase: phaseLocal,
			what: "node role, node-deployment mode; claims carry the selected-node annotation the scheduler would set"},
		{driver: "nfs.csi.monocsi.io", class: "bench-nfs", mode: storagev1.VolumeBindingImmediate, phase: phaseNFS,
			params: map[string]string{"server": nfsServer, "share": nfsShare}, root: filepath.Join(c.NFSRoot(), nfsServer, nfsShare),
			what: "controller role under its Lease; every volume is a mount of the share, a mkdir and an unmount (test/nfsemu's emulated server)"},
	}
	if err := os.MkdirAll(targets[1].root, 0o777); err != nil {
		return nil, err
	}
	podLogs := filepath.Join(c.Dir, "pod-logs")
	var tmpl *templates
	for _, tg := range targets {
		del := corev1.PersistentVolumeReclaimDelete
		if _, err := kube.StorageV1().StorageClasses().Create(ctx, &storagev1.StorageClass{
			ObjectMeta: metav1.ObjectMeta{Name: tg.class}, Provisioner: tg.driver, Parameters: tg.params, VolumeBindingMode: &tg.mode, ReclaimPolicy: &del,
		}, metav1.CreateOptions{}); err != nil {
			return nil, err
		}
		fmt.Printf("==> monocsi, %s: %d claims\n", tg.driver, n)
		r, err := provisioned(ctx, kube, tg, n, func(names []string) error {
			if tmpl == nil {
				var err error
				if tmpl, err = captureTemplates(ctx, kube, names[0]); err != nil {
					return err
				}
			}
			mem(tg.phase, 0)
			return nil
		}, func(from, to time.Time) Evidence { return evidence(ctx, kube, c.Logs, podLogs, from, to) })
		if err != nil {
			return nil, err
		}
		res.Targets = append(res.Targets, r)
	}
	fmt.Printf("==> floor: %d PVs and pre-bound claims from a bare client\n", n)
	if res.Floor, err = bare(ctx, kube, n, func(from, to time.Time) Evidence { return evidence(ctx, kube, c.Logs, podLogs, from, to) }); err != nil {
		return nil, err
	}
	start := time.Now()
	for _, step := range []struct {
		from, to int
		phase    string
	}{{0, other / 5, otherPhase(other / 5)}, {other / 5, other, otherPhase(other)}} {
		if step.to == step.from {
			continue
		}
		fmt.Printf("==> %d volumes of other nodes and drivers, bound through the API\n", step.to-step.from)
		if err := otherVolumes(ctx, kube, tmpl, step.from, step.to); err != nil {
			return nil, err
		}
		changes, err := quiet(ctx, kube, step.to, quietMost)
		if err != nil {
			return nil, err
		}
		res.Other.Changes += changes
		fmt.Printf("    created in %s, %d later changes\n", time.Since(start).Round(time.Second), changes)
		mem(step.phase, 0)
	}
	res.Other.Created = time.Since(start).Seconds()
	if other > 0 {
		fmt.Println("==> the controller with the snapshot-controller (snapshots.controller=true)")
		if err := c.InstallMonocsi(ctx); err != nil {
			return nil, err
		}
		mem(snapshotControllerPhase(other), 0)
	}
	return res, nil
}

// provisioned measures claims provisioned by monocsi. Claims of a
// WaitForFirstConsumer class carry the selected-node annotation the scheduler
// would set for their pods, so the measurement is the provisioner's, not the
// scheduler's. whileBound runs once every claim is Bound, before the
// deletion.
func provisioned(ctx context.Context, kube kubernetes.Interface, tg target, n int, whileBound func([]string) error, ev func(from, to time.Time) Evidence) (*result, error) {
	tr := track(kube)
	defer tr.stop()
	names := numbered(tg.class, n)
	sc := tg.class
	res, created, err := bindAll(tr, names, func(name string) error {
		pvc := claim(name, &sc, "")
		if tg.mode == storagev1.VolumeBindingWaitForFirstConsumer {
			pvc.Annotations = map[string]string{"volume.kubernetes.io/selected-node": cluster.NodeName}
		}
		_, err := kube.CoreV1().PersistentVolumeClaims(ns).Create(ctx, pvc, metav1.CreateOptions{})
		return err
	})
	if err != nil {
		return nil, err
	}
	var toPV []time.Duration
	tr.mu.Lock()
	for _, name := range names {
		toPV = append(toPV, tr.pv[name].Sub(created[name]))
	}
	tr.mu.Unlock()
	res.ToPV50, res.ToPV99 = percentile(toPV, .5), percentile(toPV, .99)
	fmt.Printf("    all Bound after %.2f s\n", res.AllBound)
	if err := whileBound(names); err != nil {
		return nil, err
	}

	dt := traceDeletes(kube)
	start := time.Now()
	if err := forEach(names, func(name string) error {
		return kube.CoreV1().PersistentVolumeClaims(ns).Delete(ctx, name, metav1.DeleteOptions{})
	}); err != nil {
		return nil, err
	}
	if err := waitGone(ctx, kube, tg.root, deletionLimit); err != nil {
		return nil, err
	}
	end := time.Now()
	res.Deleted = end.Sub(start).Seconds()
	res.Stages = dt.stages(names, start, true)
	res.Driver, res.What = tg.driver, tg.what
	fmt.Printf("    all PVs and directories gone after %.2f s\n", res.Deleted)
	printStages(res.Stages)
	res.Evidence = ev(start, end)
	return res, nil
}

// bare measures the floor: the same number of PVs and claims bound by the
// PV controller alone, created with a bare client.
func bare(ctx context.Context, kube kubernetes.Interface, n int, ev func(from, to time.Time) Evidence) (*result, error) {
	tr := track(kube)
	defer tr.stop()
	names := numbered("floor", n)
	empty := ""
	res, _, err := bindAll(tr, names, func(name string) error {
		_, err := kube.CoreV1().PersistentVolumes().Create(ctx, &corev1.PersistentVolume{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PersistentVolumeSpec{
				Capacity:    corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Mi")},
				AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
				PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: "floor.bench.invalid", VolumeHandle: name}},
			},
		}, metav1.CreateOptions{})
		if err == nil {
			_, err = kube.CoreV1().PersistentVolumeClaims(ns).Create(ctx, claim(name, &empty, name), metav1.CreateOptions{})
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	fmt.Printf("    all Bound after %.2f s\n", res.AllBound)
	dt := traceDeletes(kube)
	start := time.Now()
	if err := forEach(names, func(name string) error {
		if err := kube.CoreV1().PersistentVolumeClaims(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			return err
		}
		return kube.CoreV1().PersistentVolumes().Delete(ctx, name, metav1.DeleteOptions{})
	}); err != nil {
		return nil, err
	}
	if err := waitGone(ctx, kube, "", deletionLimit); err != nil {
		return nil, err
	}
	end := time.Now()
	res.Deleted = end.Sub(start).Seconds()
	res.Stages = dt.stages(names, start, false)
	fmt.Printf("    all PVs gone after %.2f s\n", res.Deleted)
	printStages(res.Stages)
	res.Evidence = ev(start, end)
	return res, nil
}

func printStages(st []Stage) {
	for _, s := range st {
		fmt.Printf("    %-22s n=%d first %.2f s, median %.2f s, last %.2f s\n", s.Name, s.N, s.First, s.P50, s.Last)
	}
}

func numbered(prefix string, n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("%s-%04d", prefix, i)
	}
	return names
}

func claim(name string, class *string, volume string) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, StorageClassName: class, VolumeName: volume,
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Mi")}},
		},
	}
}

// bindAll runs create for every name at once, then waits until every claim
// is Bound; it returns the timings and when each create returned.
func bindAll(tr *tracker, names []string, create func(string) error) (*result, map[string]time.Time, error) {
	var mu sync.Mutex
	created := map[string]time.Time{}
	start := time.Now()
	if err := forEach(names, func(name string) error {
		err := create(name)
		mu.Lock()
		created[name] = time.Now()
		mu.Unlock()
		return err
	}); err != nil {
		return nil, nil, err
	}
	bound, err := tr.waitBound(names, deletionLimit)
	if err != nil {
		return nil, nil, err
	}
	res := &result{AllBound: time.Since(start).Seconds()}
	var perClaim []time.Duration
	for _, name := range names {
		perClaim = append(perClaim, bound[name].Sub(created[name]))
	}
	res.P50, res.P99 = percentile(perClaim, .5), percentile(perClaim, .99)
	return res, created, nil
}

// forEach runs f for every name, inFlight at a time; the first error wins.
func forEach(names []string, f func(string) error) error {
	return parallel(len(names), func(i int) error {
		if err := f(names[i]); err != nil {
			return fmt.Errorf("%s: %w", names[i], err)
		}
		return nil
	})
}

// parallel runs f(0) … f(n-1), inFlight at a time; the first error wins and
// stops what has not started.
func parallel(n int, f func(int) error) error {
	sem := make(chan struct{}, inFlight)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for i := range n {
		mu.Lock()
		failed := first != nil
		mu.Unlock()
		if failed {
			break
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := f(i); err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return first
}

// tracker records when each claim is first seen Bound, from an informer
// (which re-establishes its watch by itself).
type tracker struct {
	mu    sync.Mutex
	bound map[string]time.Time
	pv    map[string]time.Time // claim name → when its PV appeared
	done  chan struct{}
}

func track(kube kubernetes.Interface) *tracker {
	t := &tracker{bound: map[string]time.Time{}, pv: map[string]time.Time{}, done: make(chan struct{})}
	f := informers.NewSharedInformerFactoryWithOptions(kube, 0)
	inf := f.Core().V1().PersistentVolumeClaims().Informer()
	_, _ = f.Core().V1().PersistentVolumes().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: func(obj any) {
		if pv, ok := obj.(*corev1.PersistentVolume); ok && pv.Spec.ClaimRef != nil {
			t.mu.Lock()
			t.pv[pv.Spec.ClaimRef.Name] = time.Now()
			t.mu.Unlock()
		}
	}})
	see := func(obj any) {
		if pvc, ok := obj.(*corev1.PersistentVolumeClaim); ok && pvc.Status.Phase == corev1.ClaimBound {
			t.mu.Lock()
			if _, seen := t.bound[pvc.Name]; !seen {
				t.bound[pvc.Name] = time.Now()
			}
			t.mu.Unlock()
		}
	}
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: see, UpdateFunc: func(_, obj any) { see(obj) }})
	f.Start(t.done)
	f.WaitForCacheSync(t.done)
	return t
}

func (t *tracker) stop() { close(t.done) }

func (t *tracker) waitBound(names []string, limit time.Duration) (map[string]time.Time, error) {
	deadline := time.Now().Add(limit)
	for {
		t.mu.Lock()
		got := map[string]time.Time{}
		for _, n := range names {
			if at, ok := t.bound[n]; ok {
				got[n] = at
			}
		}
		t.mu.Unlock()
		if len(got) == len(names) {
			return got, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%d of %d claims bound after %s", len(got), len(names), limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitGone waits until no PV is left and, when root is set, no volume
// directory under it.
func waitGone(ctx context.Context, kube kubernetes.Interface, root string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		pvs, err := kube.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		dirs := 0
		if root != "" {
			entries, _ := os.ReadDir(root)
			for _, e := range entries {
				if strings.HasPrefix(e.Name(), "pvc-") {
					dirs++
				}
			}
		}
		if len(pvs.Items) == 0 && dirs == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d PVs and %d directories left after %s", len(pvs.Items), dirs, limit)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func percentile(d []time.Duration, p float64) float64 {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[int(p*float64(len(s)-1))].Seconds()
}

// waitAlone waits until no other kubelet runs on this machine: two test
// clusters' kubelets share the cgroup root (cgroupfs, /kubepods) and each
// removes the other's pod cgroups as orphans, killing its pods (seen while
// an e2e run overlapped a benchmark).
func waitAlone(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for said := false; ; said = true {
		others := kubelets()
		if len(others) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("another test cluster's kubelet (pid %s) still runs after %s", strings.Join(others, ", "), limit)
		}
		if !said {
			fmt.Printf("==> waiting for another test cluster to stop (kubelet pid %s): two kubelets on one machine kill each other's pods\n", strings.Join(others, ", "))
		}
		time.Sleep(10 * time.Second)
	}
}

// kubelets lists the PIDs of the kubelets running on this machine.
func kubelets() []string {
	var pids []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe")); err == nil && filepath.Base(exe) == "kubelet" {
			pids = append(pids, e.Name())
		}
	}
	return pids
}

// commit names the tree benchmarked: git describe, and "+changes" when
// files other than the benchmark's own differ from it (make image builds
// the working tree).
func commit() string {
	git := func(args ...string) string {
		cmd := exec.Command("git", args...)
		cmd.Dir = cluster.RepoRoot()
		out, _ := cmd.Output()
		return strings.TrimSpace(string(out))
	}
	c := git("describe", "--always")
	if c == "" {
		return "unknown"
	}
	if git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench", ":!BENCHMARKS.md") != "" {
		c += "+changes"
	}
	return c
}

// copyLogs copies the cluster's component and pod logs into dir.
func copyLogs(c *cluster.Cluster, dir string) {
	for _, from := range []string{c.Logs, filepath.Join(c.Dir, "pod-logs")} {
		if err := os.MkdirAll(dir, 0o755); err == nil {
			if out, err := exec.Command("cp", "-a", from, dir+"/").CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "bench: copy %s: %v %s\n", from, err, out)
			}
		}
	}
}
