// Command loopdev is an attach-capable FlexVolume driver written for
// monocsi's tests. A volume is a backing file <dir>/<volume name>.img
// (options "dir" and "size", default 64Mi); attach sets up a loop device over
// it (creating the file when missing), mountdevice formats the device ext4
// when it is blank and mounts it, detach releases the loop device. Loop
// devices are local, so attach only serves its own node ($NODE_NAME).
// Install it as <flex-dir>/monocsi~loopdev/loopdev.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

func main() {
	if len(os.Args) < 2 {
		reply("Failure", "no command", nil)
	}
	a := os.Args[2:]
	switch os.Args[1] {
	case "init":
		reply("Success", "", map[string]any{"capabilities": map[string]any{"attach": true}})
	case "attach": // <json> <node>
		need(a, 2, "attach <json> <node>")
		if n := os.Getenv("NODE_NAME"); n != "" && a[1] != n {
			reply("Failure", fmt.Sprintf("node %q: loop devices can only be attached on %s", a[1], n), map[string]any{"code": "NotFound"})
		}
		opts := parse(a[0])
		file := backingFile(opts)
		if dev := loopOf(file); dev != "" {
			reply("Success", "", map[string]any{"device": dev})
		}
		if _, err := os.Stat(file); os.IsNotExist(err) {
			size := int64(64 << 20)
			if s := opts["size"]; s != "" {
				var err error
				if size, err = parseSize(s); err != nil {
					reply("Failure", err.Error(), map[string]any{"code": "InvalidArgument"})
				}
			}
			f, err := os.OpenFile(file, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err == nil {
				err = f.Truncate(size)
				f.Close()
			}
			if err != nil {
				reply("Failure", err.Error(), nil)
			}
		}
		dev := strings.TrimSpace(run("losetup", "-f", "--show", file))
		reply("Success", "", map[string]any{"device": dev})
	case "detach": // <volume name> <node>
		need(a, 2, "detach <volume> <node>")
		for _, dev := range loopsNamed(a[0] + ".img") {
			run("losetup", "-d", dev)
		}
		reply("Success", "", nil)
	case "waitforattach": // <device> <json>
		need(a, 2, "waitforattach <device> <json>")
		if _, err := os.Stat(a[0]); err != nil {
			reply("Failure", err.Error(), nil)
		}
		reply("Success", "", map[string]any{"device": a[0]})
	case "isattached": // <json> <node>
		need(a, 2, "isattached <json> <node>")
		reply("Success", "", map[string]any{"attached": loopOf(backingFile(parse(a[0]))) != ""})
	case "mountdevice": // <dir> <device> <json>
		need(a, 3, "mountdevice <dir> <device> <json>")
		opts := parse(a[2])
		// blkid -p exits 2 when it finds no filesystem: only then format.
		if err := exec.Command("blkid", "-p", a[1]).Run(); err != nil {
			if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 2 {
				run("mkfs.ext4", "-q", "-F", a[1])
			} else {
				reply("Failure", "blkid "+a[1]+": "+err.Error(), nil)
			}
		}
		if err := os.MkdirAll(a[0], 0o750); err != nil {
			reply("Failure", err.Error(), nil)
		}
		args := []string{a[1], a[0]}
		if opts["kubernetes.io/readwrite"] == "ro" {
			args = append([]string{"-o", "ro"}, args...)
		}
		run("mount", args...)
		reply("Success", "", nil)
	case "unmountdevice": // <dir>
		need(a, 1, "unmountdevice <dir>")
		run("umount", a[0])
		reply("Success", "", nil)
	default:
		reply("Not supported", "", nil)
	}
}

func parse(s string) map[string]string {
	var opts map[string]string
	if err := json.Unmarshal([]byte(s), &opts); err != nil {
		reply("Failure", "options: "+err.Error(), nil)
	}
	return opts
}

// backingFile is <dir>/<volume name>.img, both validated.
func backingFile(opts map[string]string) string {
	dir, name := opts["dir"], opts["kubernetes.io/pvOrVolumeName"]
	if !filepath.IsAbs(dir) || filepath.Clean(dir) != dir {
		reply("Failure", fmt.Sprintf("option dir %q must be a clean absolute path", dir), map[string]any{"code": "InvalidArgument"})
	}
	if !validName.MatchString(name) {
		reply("Failure", fmt.Sprintf("volume name %q cannot be a file name", name), map[string]any{"code": "InvalidArgument"})
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		reply("Failure", err.Error(), nil)
	}
	return filepath.Join(dir, name+".img")
}

// loopOf is the loop device over file, or "".
func loopOf(file string) string {
	out := strings.TrimSpace(run("losetup", "-j", file))
	dev, _, _ := strings.Cut(out, ":")
	return dev
}

// loopsNamed lists the loop devices whose backing file is called base.
func loopsNamed(base string) []string {
	var devs []string
	for _, line := range strings.Split(run("losetup", "-a"), "\n") {
		dev, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		if i, j := strings.LastIndex(rest, "("), strings.LastIndex(rest, ")"); i >= 0 && j > i && filepath.Base(rest[i+1:j]) == base {
			devs = append(devs, dev)
		}
	}
	return devs
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	for suffix, m := range map[string]int64{"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30} {
		if strings.HasSuffix(s, suffix) {
			s, mult = strings.TrimSuffix(s, suffix), m
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("size %q: want a positive number with Ki, Mi or Gi", s)
	}
	return n * mult, nil
}

func need(a []string, n int, usage string) {
	if len(a) != n {
		reply("Failure", "usage: "+usage, map[string]any{"code": "InvalidArgument"})
	}
}

func run(name string, args ...string) string {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		reply("Failure", fmt.Sprintf("%s %s: %v: %s", name, strings.Join(args, " "), err, out), nil)
	}
	return string(out)
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
