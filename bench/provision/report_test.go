package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The committed results render beside the committed baseline, with every
// section and no formatting slip.
func TestReportRendersCommittedResults(t *testing.T) {
	r, err := readResults("../results.json")
	if err != nil {
		t.Fatal(err)
	}
	base, err := readResults("../baseline.json")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "BENCHMARKS.md")
	if err := report(out, r, base); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	md := string(b)
	for _, want := range []string{"## Memory", "## Deletes", "## Provisioning: 200 claims, local.csi.monocsi.io",
		"## Binary and image", "| idle |", phaseOther5k, "controller, before", "PV Released (200)"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if strings.Contains(md, "%!") {
		t.Errorf("report has a formatting error: %s", md[strings.Index(md, "%!")-40:strings.Index(md, "%!")+20])
	}
}

func TestLogLinesReadsCRIAndKlogTimes(t *testing.T) {
	now := time.Now()
	at := func(d time.Duration) string { return now.Add(d).Format("0102 15:04:05.000000") }
	file := filepath.Join(t.TempDir(), "0.log")
	lines := []string{
		"2026-11-25T17:27:33.785669839Z stderr F I" + at(-time.Minute) + `   22340 controller.go:1007] "Retrying syncing volume" key="too-early"`,
		"2026-11-25T17:27:33.785669839Z stderr F I" + at(0) + `   22340 controller.go:1007] "Retrying syncing volume" key="in"`,
		"I" + at(time.Second/2) + `   30709 request.go:690] "Waited before sending request" delay="1.2s"`,
		"I" + at(0) + ` unrelated`,
		"not a klog line Retrying syncing volume",
	}
	if err := os.WriteFile(file, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got := logLines(file, now.Add(-5*time.Second), now.Add(5*time.Second), "Retrying syncing volume", "Waited before sending request")
	if len(got) != 2 || !strings.Contains(got[0], `key="in"`) || !strings.Contains(got[1], "Waited") {
		t.Errorf("logLines = %q", got)
	}
}

func TestOtherPhase(t *testing.T) {
	for n, want := range map[int]string{250: "250 volumes", 1000: "1,000 volumes", 5000: "5,000 volumes", 12040: "12,040 volumes"} {
		if got := otherPhase(n); !strings.HasPrefix(got, want+" ") {
			t.Errorf("otherPhase(%d) = %q", n, got)
		}
	}
}
