package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Stage is one step every deleted claim goes through, as seen from a watch:
// when it happened to the first, the median and the last of them, in
// seconds after the first delete call.
type Stage struct {
	Name  string  `json:"name"`
	Who   string  `json:"who"`
	N     int     `json:"n"`
	First float64 `json:"first"`
	P50   float64 `json:"p50"`
	Last  float64 `json:"last"`
}

// deleteTrace records, per claim name, when the claim left the API, when its
// PV was marked Released, when the PV got its deletion timestamp and when
// the PV left the API.
type deleteTrace struct {
	mu                                    sync.Mutex
	claimGone, released, deleting, pvGone map[string]time.Time
	stop                                  chan struct{}
}

func traceDeletes(kube kubernetes.Interface) *deleteTrace {
	t := &deleteTrace{claimGone: map[string]time.Time{}, released: map[string]time.Time{},
		deleting: map[string]time.Time{}, pvGone: map[string]time.Time{}, stop: make(chan struct{})}
	f := informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithNamespace(ns))
	first := func(m map[string]time.Time, key string) {
		t.mu.Lock()
		if _, ok := m[key]; !ok {
			m[key] = time.Now()
		}
		t.mu.Unlock()
	}
	pv := func(obj any) {
		if v, ok := obj.(*corev1.PersistentVolume); ok && v.Spec.ClaimRef != nil {
			if v.Status.Phase == corev1.VolumeReleased {
				first(t.released, v.Spec.ClaimRef.Name)
			}
			if v.DeletionTimestamp != nil {
				first(t.deleting, v.Spec.ClaimRef.Name)
			}
		}
	}
	gone := func(m map[string]time.Time) func(any) {
		return func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			switch o := obj.(type) {
			case *corev1.PersistentVolumeClaim:
				first(m, o.Name)
			case *corev1.PersistentVolume:
				if o.Spec.ClaimRef != nil {
					first(m, o.Spec.ClaimRef.Name)
				}
			}
		}
	}
	_, _ = f.Core().V1().PersistentVolumeClaims().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{DeleteFunc: gone(t.claimGone)})
	// PVs are cluster-scoped: a factory of its own without the namespace.
	g := informers.NewSharedInformerFactoryWithOptions(kube, 0)
	_, _ = g.Core().V1().PersistentVolumes().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: pv, UpdateFunc: func(_, obj any) { pv(obj) }, DeleteFunc: gone(t.pvGone)})
	f.Start(t.stop)
	g.Start(t.stop)
	f.WaitForCacheSync(t.stop)
	g.WaitForCacheSync(t.stop)
	return t
}

// stages returns the four stages of names, relative to start.
func (t *deleteTrace) stages(names []string, start time.Time, monocsi bool) []Stage {
	close(t.stop)
	t.mu.Lock()
	defer t.mu.Unlock()
	deleter := "monocsi: DeleteVolume, then DELETE of the PV"
	goneBy := "monocsi removes its finalizer, pv-protection controller its own"
	if !monocsi {
		deleter, goneBy = "the bench client (DELETE with the claim)", "pv-protection controller (once the PV is not Bound)"
	}
	st := []struct {
		name, who string
		m         map[string]time.Time
	}{
		{"claim gone", "pvc-protection controller (kube-controller-manager) removes its finalizer", t.claimGone},
		{"PV Released", "PV controller (kube-controller-manager): live GET of the claim, status update", t.released},
		{"PV deletion timestamp", deleter, t.deleting},
		{"PV gone", goneBy, t.pvGone},
	}
	var out []Stage
	for _, s := range st {
		var d []float64
		for _, n := range names {
			if at, ok := s.m[n]; ok {
				d = append(d, at.Sub(start).Seconds())
			}
		}
		sort.Float64s(d)
		stage := Stage{Name: s.name, Who: s.who, N: len(d)}
		if len(d) > 0 {
			stage.First, stage.P50, stage.Last = d[0], d[len(d)/2], d[len(d)-1]
		}
		out = append(out, stage)
	}
	return out
}

// klogTime reads the time of a klog line ("I1125 17:14:05.123456 ...").
var klogLine = regexp.MustCompile(`^[IWEF](\d{4} \d{2}:\d{2}:\d{2}\.\d{6})`)

func klogTime(line string) (time.Time, bool) {
	m := klogLine.FindStringSubmatch(line)
	if m == nil {
		return time.Time{}, false
	}
	t, err := time.ParseInLocation("0102 15:04:05.000000", m[1], time.Local)
	if err != nil {
		return time.Time{}, false
	}
	now := time.Now()
	return t.AddDate(now.Year(), 0, 0), true
}

// logLines returns the lines of file between from and to (by their klog
// time) that contain any of the words.
func logLines(file string, from, to time.Time, words ...string) []string {
	f, err := os.Open(file)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		// Container logs carry a CRI prefix: "<RFC3339> stderr F <klog line>".
		if f := strings.SplitN(line, " ", 4); len(f) == 4 && (f[1] == "stdout" || f[1] == "stderr") {
			line = f[3]
		}
		at, ok := klogTime(line)
		if !ok || at.Before(from.Add(-time.Second)) || at.After(to.Add(time.Second)) {
			continue
		}
		for _, w := range words {
			if strings.Contains(line, w) {
				out = append(out, line)
				break
			}
		}
	}
	return out
}

// Evidence is what the components said during a deletion.
type Evidence struct {
	// Throttled are kube-controller-manager's client-side throttling lines
	// (client-go logs a wait over 1 s at most every 10 s at its default
	// verbosity).
	Throttled []string `json:"throttled"`
	// Retries are the provisioner library's retries of a volume in the
	// monocsi pods' logs.
	Retries int `json:"retries"`
	// Events counts the events recorded in the namespace meanwhile, by
	// reason.
	Events map[string]int `json:"events"`
}

// evidence collects the component logs and events of the window.
func evidence(ctx context.Context, kube kubernetes.Interface, logs, podLogs string, from, to time.Time) Evidence {
	ev := Evidence{Events: map[string]int{}}
	ev.Throttled = logLines(filepath.Join(logs, "kube-controller-manager.log"), from, to, "Waited before sending request", "client-side throttling")
	files, _ := filepath.Glob(filepath.Join(podLogs, "*monocsi*", "*", "*.log"))
	for _, f := range files {
		ev.Retries += len(logLines(f, from, to, "Retrying syncing volume"))
	}
	if list, err := kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{}); err == nil {
		for _, e := range list.Items {
			at := e.LastTimestamp.Time
			if at.IsZero() {
				at = e.EventTime.Time
			}
			if !at.Before(from.Add(-time.Second)) && !at.After(to.Add(time.Second)) {
				who := e.Source.Component
				if who == "" {
					who = e.ReportingController
				}
				ev.Events[e.Reason+" ("+who+")"] += int(max(e.Count, 1))
			}
		}
	}
	for _, l := range ev.Throttled {
		fmt.Println("    kube-controller-manager:", l)
	}
	fmt.Printf("    library retries in monocsi logs: %d; events: %v\n", ev.Retries, ev.Events)
	return ev
}
