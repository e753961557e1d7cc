// Command bindmount is a FlexVolume driver written for monocsi's tests, in
// the shape of the classic NFS FlexVolume script: no attach; mount
// bind-mounts the directory named by the "source" option at the target
// (creating it), unmount unmounts. Install it as
// <flex-dir>/monocsi~bindmount/bindmount.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

func main() {
	if len(os.Args) < 2 {
		reply("Failure", "no command", nil)
	}
	switch os.Args[1] {
	case "init":
		reply("Success", "", map[string]any{"capabilities": map[string]any{"attach": false}})
	case "mount":
		if len(os.Args) != 4 {
			reply("Failure", "usage: mount <dir> <json>", nil)
		}
		var opts map[string]string
		if err := json.Unmarshal([]byte(os.Args[3]), &opts); err != nil {
			reply("Failure", "options: "+err.Error(), nil)
		}
		src := opts["source"]
		if !filepath.IsAbs(src) || filepath.Clean(src) != src {
			reply("Failure", fmt.Sprintf("option source %q must be a clean absolute path", src), map[string]any{"code": "InvalidArgument"})
		}
		if err := os.MkdirAll(src, 0o777); err != nil {
			reply("Failure", err.Error(), nil)
		}
		args := []string{"--bind", src, os.Args[2]}
		if opts["kubernetes.io/readwrite"] == "ro" {
			args = []string{"--bind", "-o", "ro", src, os.Args[2]}
		}
		run("mount", args...)
		reply("Success", "", nil)
	case "unmount":
		if len(os.Args) != 3 {
			reply("Failure", "usage: unmount <dir>", nil)
		}
		run("umount", os.Args[2])
		reply("Success", "", nil)
	default:
		reply("Not supported", "", nil)
	}
}

func run(name string, args ...string) {
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		reply("Failure", fmt.Sprintf("%s: %v: %s", name, err, out), nil)
	}
}

func reply(status, msg string, extra map[string]any) {
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
