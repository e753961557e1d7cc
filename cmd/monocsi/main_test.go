package main

import (
	"os"
	"path/filepath"
	"strings"
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

// Each role lists only the flags it uses: the controller has no local
// driver, and refuses it before creating anything.
func TestRoleFlags(t *testing.T) {
	for cmd, wantLocal := range map[string]bool{"node": true, "serve": true, "controller": false} {
		fs := newFlags(cmd)
		var df driverFlags
		df.register(fs, wantLocal)
		if got := fs.Lookup("local-root") != nil; got != wantLocal {
			t.Errorf("%s: --local-root listed: %v, want %v", cmd, got, wantLocal)
		}
		if cmd == "serve" {
			continue
		}
		// Capacity is published by the node role only; both roles resize.
		registerSidecarFlags(fs, cmd == "node")
		if fs.Lookup("enable-resizer") == nil || (fs.Lookup("enable-capacity") != nil) != (cmd == "node") {
			t.Errorf("%s: resizer flag %v, capacity flag %v", cmd, fs.Lookup("enable-resizer"), fs.Lookup("enable-capacity"))
		}
	}
	root := filepath.Join(t.TempDir(), "root")
	df := driverFlags{nodeID: "n1", localRoot: root, noLocal: true}
	if _, err := df.build([]string{"local"}); err == nil || !strings.Contains(err.Error(), "node-local") {
		t.Errorf("controller with --drivers=local: %v", err)
	}
	if _, err := os.Stat(root); !os.IsNotExist(err) {
		t.Errorf("refusing the local driver created %s: %v", root, err)
	}
}
