package e2e

import (
	"fmt"
	"regexp"
	"strconv"
	"testing"
	"time"
)

var unmappedLine = regexp.MustCompile(`"Unmapped the executable's read-only pages" spanMB=(\d+) rssFileMBBefore=(\d+) rssFileMBAfter=(\d+)`)

// TestRolesUnmapStartPages: in the image the chart runs (overlayfs root,
// containerd), each role unmaps its binary's read-only pages once started,
// and its resident file pages fall; every test after this one runs against
// those processes.
func TestRolesUnmapStartPages(t *testing.T) {
	for _, prefix := range []string{"monocsi-node-", controllerName + "-"} {
		logs := followLogs(t, prefix)
		eventually(t, 2*time.Minute, prefix+" logs the unmapping", func() error {
			if logs.contains("Cannot unmap the executable's unused pages") {
				t.Fatalf("%s could not unmap its pages", prefix)
			}
			logs.mu.Lock()
			defer logs.mu.Unlock()
			for line := range logs.lines {
				m := unmappedLine.FindStringSubmatch(line)
				if m == nil {
					continue
				}
				span, _ := strconv.Atoi(m[1])
				before, _ := strconv.Atoi(m[2])
				after, _ := strconv.Atoi(m[3])
				t.Logf("%s: unmapped %d MB of mappings, RssFile %d MB -> %d MB", prefix, span, before, after)
				if span < 10 || after >= before {
					t.Fatalf("%s: %s", prefix, line)
				}
				return nil
			}
			return fmt.Errorf("no line yet")
		})
	}
}
