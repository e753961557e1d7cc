package main

import (
	"testing"
)

// `monocsi <cmd> --help` prints the command's flags and succeeds; a bad
// flag or command fails.
func TestHelpExitsZero(t *testing.T) {
	for _, cmd := range []string{"node", "serve", "controller"} {
		for _, h := range []string{"--help", "-h"} {
			if code := exitCode(run([]string{cmd, h})); code != 0 {
				t.Errorf("monocsi %s %s: exit %d, want 0", cmd, h, code)
			}
		}
		if code := exitCode(run([]string{cmd, "--no-such-flag"})); code != 1 {
			t.Errorf("monocsi %s --no-such-flag: exit %d, want 1", cmd, code)
		}
	}
	if code := exitCode(run([]string{"no-such-command"})); code != 1 {
		t.Errorf("unknown command: exit %d, want 1", code)
	}
}
