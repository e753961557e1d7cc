// Package textpages drops from the process's page tables the executable's
// read-only pages (code, read-only data, the function tables) it no longer
// uses.
//
// One binary carries every driver and both roles. Its start maps most of
// it: every package initialiser runs (client-go registers every API type),
// and the kernel maps up to 64 KiB around each page a fault touches
// (fault-around), so code the role never runs is resident too. Dropping
// those pages once the role has started (madvise MADV_DONTNEED; the
// mappings stay) leaves mapped only the pages it touches afterwards: they
// fault back in on their next use, from the page cache while they are
// still there. The rest stay as clean page cache (charged to the pod's
// memory cgroup until the kernel reclaims it, which it does first).
// Writable mappings (data, heap) are never touched.
package textpages

import (
	"context"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Release drops from this process's page tables the pages of the
// executable's read-only mappings and returns how many bytes those mappings
// span. A mapping that may hold private copies of pages (a dynamic linker's
// relocations, a debugger's breakpoint), resident or swapped out, is left
// alone: dropping would lose them.
func Release() (int64, error) {
	raw, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return 0, err
	}
	// The executable is the file that maps this function's code. Its device
	// and inode, not its path or a stat of /proc/self/exe: on overlayfs (a
	// container's root) the mapping names the lower layer's file.
	pc := uint64(reflect.ValueOf(Release).Pointer())
	ms := parse(string(raw))
	var file string
	for _, m := range ms {
		if m.from <= pc && pc < m.to {
			file = m.file
		}
	}
	if file == "" {
		return 0, errors.New("no mapping of this executable's code in /proc/self/smaps")
	}
	return release(ms, file)
}

// release drops the pages of the mappings of file that are read-only and
// known to hold no private page.
func release(ms []mapping, file string) (int64, error) {
	var n int64
	for _, m := range ms {
		if m.file != file || m.writable || !m.shared() {
			continue
		}
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, uintptr(m.from), uintptr(m.to-m.from), unix.MADV_DONTNEED); errno != 0 {
			return n, fmt.Errorf("madvise %#x-%#x: %w", m.from, m.to, errno)
		}
		n += int64(m.to - m.from)
	}
	return n, nil
}

// mapping is one mapping of /proc/self/smaps.
type mapping struct {
	from, to uint64
	writable bool
	// file is "major:minor inode" of the mapped file, empty for anonymous
	// memory.
	file string
	// anon and swap are its "Anonymous:" and "Swap:" lines, in kB: private
	// copies of pages, in memory and swapped out; -1 if missing.
	anon, swap int64
}

// shared says every page of m is the file's own: smaps showed no private
// page in memory or in swap (a missing line counts as some).
func (m mapping) shared() bool { return m.anon == 0 && m.swap == 0 }

// parse reads smaps: per mapping a line "from-to perms offset major:minor
// inode [path]", then lines "Key: value".
func parse(smaps string) []mapping {
	var ms []mapping
	for line := range strings.Lines(smaps) {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if f[0] == "Anonymous:" || f[0] == "Swap:" {
			if len(ms) == 0 {
				continue
			}
			kb := int64(-1)
			if len(f) == 3 && f[2] == "kB" {
				if v, err := strconv.ParseInt(f[1], 10, 64); err == nil {
					kb = v
				}
			}
			if f[0] == "Swap:" {
				ms[len(ms)-1].swap = kb
			} else {
				ms[len(ms)-1].anon = kb
			}
			continue
		}
		a, b, found := strings.Cut(f[0], "-")
		if !found || len(f) < 5 || len(f[1]) != 4 {
			continue // another "Key: value" line
		}
		from, err1 := strconv.ParseUint(a, 16, 64)
		to, err2 := strconv.ParseUint(b, 16, 64)
		if err1 != nil || err2 != nil || to <= from {
			continue
		}
		m := mapping{from: from, to: to, writable: f[1][1] == 'w', anon: -1, swap: -1}
		if f[4] != "0" {
			m.file = f[3] + " " + f[4]
		}
		ms = append(ms, m)
	}
	return ms
}

// StartDelay is how long after its start a role releases the pages: its
// informers have synced and its workers run by then.
const StartDelay = 30 * time.Second

// ReleaseAfterStart calls Release once, StartDelay after it is called,
// unless ctx ends first, and logs what it did: a role calls it at its
// start, so that the pages only its start touched are let go once it runs.
func ReleaseAfterStart(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(StartDelay):
	}
	before := rssFile()
	n, err := Release()
	if err != nil {
		klog.ErrorS(err, "Cannot drop the executable's read-only pages")
		return
	}
	klog.InfoS("Dropped the executable's read-only pages from this process", "spanMB", n>>20, "rssFileMBBefore", before>>20, "rssFileMBAfter", rssFile()>>20)
}

// rssFile is RssFile of /proc/self/status in bytes, 0 if unknown.
func rssFile() int64 {
	raw, _ := os.ReadFile("/proc/self/status")
	for line := range strings.Lines(string(raw)) {
		if v, ok := strings.CutPrefix(line, "RssFile:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}
