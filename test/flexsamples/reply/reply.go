// Package reply is what the sample FlexVolume drivers share: answering the
// caller in the FlexVolume protocol and running the tools they need.
package reply

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// Send prints the reply and exits: 0 unless status is Failure. extra holds
// further fields (device, capabilities, code, ...).
func Send(status, msg string, extra map[string]any) {
	r := map[string]any{"status": status}
	if msg != "" {
		r["message"] = msg
	}
	for k, v := range extra {
		r[k] = v
	}
	json.NewEncoder(os.Stdout).Encode(r)
	if status == "Failure" {
		os.Exit(1)
	}
	os.Exit(0)
}

// Run runs a command and returns its output; a failure is the reply.
func Run(name string, args ...string) string {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		Send("Failure", fmt.Sprintf("%s %s: %v: %s", name, strings.Join(args, " "), err, out), nil)
	}
	return string(out)
}

// Options parses a command's JSON options; bad JSON is the reply.
func Options(s string) map[string]string {
	var opts map[string]string
	if err := json.Unmarshal([]byte(s), &opts); err != nil {
		Send("Failure", "options: "+err.Error(), nil)
	}
	return opts
}
