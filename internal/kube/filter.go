package kube

import (
	"context"
	"sync"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/watchlist"
)

// Filter is a ListerWatcher that hands on only the objects keep accepts, so
// an informer built on it stores nothing else: the API server still sends
// every object, but each one that is not kept is dropped as soon as it is
// decoded. An object that stops being kept (an update moves it away) becomes
// a delete, and one that starts being kept an update the informer takes as
// an add.
//
// It remembers the keys it handed on since the last full list, so a delete
// reaches the informer only for an object the informer has.
type Filter struct {
	lw          cache.ListerWatcherWithContext
	keep        func(runtime.Object) bool
	unsupported bool // the client cannot stream lists (a fake): the reflector lists
	after       []cache.InformerSynced

	mu     sync.Mutex
	passed map[string]bool
}

var _ cache.ListerWatcherWithContext = (*Filter)(nil)

// NewFilter filters lw, whose objects come from client (it tells the
// reflector whether the client can stream the initial list).
func NewFilter(lw cache.ListerWatcher, client any, keep func(runtime.Object) bool) *Filter {
	return &Filter{lw: cache.ToListerWatcherWithContext(lw), keep: keep, passed: map[string]bool{},
		unsupported: watchlist.DoesClientNotSupportWatchListSemantics(client)}
}

// After makes lists and watches wait until the informers are filled: keep
// reads their caches (a claim is kept when its PV is).
func (f *Filter) After(informers ...cache.InformerSynced) { f.after = append(f.after, informers...) }

func (f *Filter) waitAfter(ctx context.Context) error {
	if len(f.after) > 0 && !cache.WaitForCacheSync(ctx.Done(), f.after...) {
		return ctx.Err()
	}
	return nil
}

// IsWatchListSemanticsUnSupported is what client-go asks a ListerWatcher
// before streaming the initial list through a watch.
func (f *Filter) IsWatchListSemanticsUnSupported() bool { return f.unsupported }

// List lists with context.Background (the reflector's old interface).
func (f *Filter) List(o metav1.ListOptions) (runtime.Object, error) {
	return f.ListWithContext(context.Background(), o)
}

// Watch watches with context.Background (the reflector's old interface).
func (f *Filter) Watch(o metav1.ListOptions) (watch.Interface, error) {
	return f.WatchWithContext(context.Background(), o)
}

// PageSize is how many objects a Filter's list decodes at once.
const PageSize = 500

// ListWithContext lists page by page and drops the objects not kept. A list
// from the API server's watch cache (resourceVersion "0", a reflector's first
// list, or NotOlderThan) comes whole whatever the limit: all of it would be
// decoded at once to keep a few objects, and the process's memory would
// peak with the cluster's size. So the pages are read from one consistent
// snapshot (resourceVersion "", as kubectl get reads), each dropped as soon
// as it is filtered. The informer's store is replaced by the result, so the
// keys handed on are exactly these.
func (f *Filter) ListWithContext(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
	if err := f.waitAfter(ctx); err != nil {
		return nil, err
	}
	if o.ResourceVersionMatch != metav1.ResourceVersionMatchExact {
		o.ResourceVersion, o.ResourceVersionMatch = "", ""
	}
	if o.Limit == 0 || o.Limit > PageSize {
		o.Limit = PageSize
	}
	var first runtime.Object
	var kept []runtime.Object
	passed := map[string]bool{}
	for {
		list, err := f.lw.ListWithContext(ctx, o)
		if err != nil {
			return nil, err
		}
		// Each item its own copy: a kept one does not hold its page.
		items, err := meta.ExtractListWithAlloc(list)
		if err != nil {
			return nil, err
		}
		for _, obj := range items {
			if f.keep(obj) {
				kept = append(kept, obj)
				if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
					passed[key] = true
				}
			}
		}
		lm, err := meta.ListAccessor(list)
		if err != nil {
			return nil, err
		}
		if first == nil {
			first = list
		}
		if o.Continue = lm.GetContinue(); o.Continue == "" {
			break
		}
	}
	// The first page's list metadata (every page has the snapshot's
	// resourceVersion), with every kept item and nothing to continue.
	if lm, err := meta.ListAccessor(first); err == nil {
		lm.SetContinue("")
		lm.SetRemainingItemCount(nil)
	}
	if err := meta.SetList(first, kept); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.passed = passed
	f.mu.Unlock()
	return first, nil
}

// WatchWithContext watches and filters the events: see Filter.
func (f *Filter) WatchWithContext(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
	if err := f.waitAfter(ctx); err != nil {
		return nil, err
	}
	w, err := f.lw.WatchWithContext(ctx, o)
	if err != nil {
		return nil, err
	}
	if o.SendInitialEvents != nil && *o.SendInitialEvents {
		// A streamed list: the store is replaced by what this watch sends
		// up to its initial-events bookmark.
		f.mu.Lock()
		f.passed = map[string]bool{}
		f.mu.Unlock()
	}
	return watch.Filter(w, f.event), nil
}

// event decides what the informer sees of one watch event.
func (f *Filter) event(e watch.Event) (watch.Event, bool) {
	switch e.Type {
	case watch.Added, watch.Modified, watch.Deleted:
	default: // bookmarks and errors
		return e, true
	}
	key, err := cache.MetaNamespaceKeyFunc(e.Object)
	if err != nil {
		return e, true
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	had := f.passed[key]
	if e.Type != watch.Deleted && f.keep(e.Object) {
		f.passed[key] = true
		return e, true
	}
	if !had {
		return e, false // never handed on: the informer does not have it
	}
	delete(f.passed, key)
	return watch.Event{Type: watch.Deleted, Object: e.Object}, true
}
