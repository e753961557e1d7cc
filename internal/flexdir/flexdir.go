// Package flexdir finds FlexVolume driver executables the way the kubelet
// did (<dir>/<vendor~driver>/<driver>, executable) and reports the set each
// time it changes, so drivers can be added and removed while monocsi runs.
package flexdir

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"k8s.io/klog/v2"
)

// Scan returns the executables found under dir, by directory name
// (<vendor~driver>). A missing dir holds none.
func Scan(dir string) map[string]string {
	found := map[string]string{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return found
	}
	for _, e := range entries {
		vendor, drv, ok := strings.Cut(e.Name(), "~")
		if !ok || vendor == "" || drv == "" || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		exe := filepath.Join(dir, e.Name(), drv)
		// Stat follows a symlinked executable, as the kubelet's exec does.
		if fi, err := os.Stat(exe); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			found[e.Name()] = exe
		}
	}
	return found
}

// Watch calls found with the current set at start, after every change to
// dir or its driver directories (settled for a moment first: a copy in
// progress is one change, not many), and every resync (which catches what
// the watch missed and lets the caller retry drivers that failed), until
// ctx is done.
func Watch(ctx context.Context, dir string, resync time.Duration, found func(map[string]string)) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	rescan := func() {
		// Watch every driver directory too: an executable appears inside one.
		// A directory that does not exist yet is only rescanned.
		entries, _ := os.ReadDir(dir)
		_ = w.Add(dir)
		for _, e := range entries {
			if e.IsDir() {
				_ = w.Add(filepath.Join(dir, e.Name()))
			}
		}
		found(Scan(dir))
	}
	rescan()
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	tick := time.NewTicker(resync)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			klog.V(5).InfoS("FlexVolume directory changed", "event", ev)
			settle.Reset(200 * time.Millisecond)
		case err := <-w.Errors:
			klog.ErrorS(err, "Watching the FlexVolume directory; rescanning")
			settle.Reset(200 * time.Millisecond)
		case <-settle.C:
			rescan()
		case <-tick.C:
			rescan()
		}
	}
}
