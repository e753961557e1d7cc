package e2e

import (
	"fmt"
	"regexp"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

var droppedLine = regexp.MustCompile(`"Dropped the executable's read-only pages from this process" spanMB=(\d+) rssFileMBBefore=(\d+) rssFileMBAfter=(\d+)`)

// TestRolesDropStartPages: in the image the chart runs (overlayfs root,
// containerd), each role drops its binary's read-only pages once started,
// and its resident file pages fall; then a volume is provisioned, mounted,
// written and read through those processes.
func TestRolesDropStartPages(t *testing.T) {
	for _, prefix := range []string{"monocsi-node-", controllerName + "-"} {
		logs := followLogs(t, prefix)
		eventually(t, 2*time.Minute, prefix+" logs the dropped pages", func() error {
			if logs.contains("Cannot drop the executable's read-only pages") {
				t.Fatalf("%s could not drop its pages", prefix)
			}
			m := logs.match(droppedLine)
			if m == nil {
				return fmt.Errorf("no line yet")
			}
			span, _ := strconv.Atoi(m[1])
			before, _ := strconv.Atoi(m[2])
			after, _ := strconv.Atoi(m[3])
			t.Logf("%s: dropped the pages of %d MB of mappings, RssFile %d MB -> %d MB", prefix, span, before, after)
			if span < 10 || after >= before {
				t.Fatalf("%s: %s", prefix, m[0])
			}
			return nil
		})
	}
	storageClass(t, "e2e-textpages", corev1.PersistentVolumeReclaimDelete, nil)
	claim(t, "e2e-textpages", "e2e-textpages")
	checkPod(t, "e2e-textpages", claimVolume("e2e-textpages"), "echo after > /data/f && test \"$(cat /data/f)\" = after")
	boundPV(t, "e2e-textpages")
}
