// Command loopdev is an attach-capable FlexVolume driver written for
// monocsi's tests. A volume is a backing file <dir>/<volume name>.img
// (options "dir" and "size", default 64Mi); attach sets up a loop device over
// it (creating the file when missing), mountdevice formats the device ext4
// when it is blank and mounts it, detach releases the loop device. Loop
// devices are local, so attach only serves its own node ($NODE_NAME).
// Install it as <flex-dir>/monocsi~loopdev/loopdev.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/monocsi/monocsi/test/flexsamples/reply"
)

var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

func main() {
	if len(os.Args) < 2 {
		reply.Send("Failure", "no command", nil)
	}
	a := os.Args[2:]
	switch os.Args[1] {
	case "init":
		reply.Send("Success", "", map[string]any{"capabilities": map[string]any{"attach": true}})
	case "attach": // <json> <node>
		need(a, 2, "attach <json> <node>")
		if n := os.Getenv("NODE_NAME"); n != "" && a[1] != n {
			reply.Send("Failure", fmt.Sprintf("node %q: loop devices can only be attached on %s", a[1], n), map[string]any{"code": "NotFound"})
		}
		opts := reply.Options(a[0])
		file := backingFile(opts)
		if dev := loopOf(file); dev != "" {
			reply.Send("Success", "", map[string]any{"device": dev})
		}
		if _, err := os.Stat(file); os.IsNotExist(err) {
			size := int64(64 << 20)
			if s := opts["size"]; s != "" {
				var err error
				if size, err = parseSize(s); err != nil {
					reply.Send("Failure", err.Error(), map[string]any{"code": "InvalidArgument"})
				}
			}
			f, err := os.OpenFile(file, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err == nil {
				err = f.Truncate(size)
				f.Close()
			}
			if err != nil {
				reply.Send("Failure", err.Error(), nil)
			}
		}
		dev := strings.TrimSpace(reply.Run("losetup", "-f", "--show", file))
		reply.Send("Success", "", map[string]any{"device": dev})
	case "detach": // <volume name> <node>
		need(a, 2, "detach <volume> <node>")
		for _, dev := range loopsNamed(a[0] + ".img") {
			reply.Run("losetup", "-d", dev)
		}
		reply.Send("Success", "", nil)
	case "waitforattach": // <device> <json>
		need(a, 2, "waitforattach <device> <json>")
		if _, err := os.Stat(a[0]); err != nil {
			reply.Send("Failure", err.Error(), nil)
		}
		reply.Send("Success", "", map[string]any{"device": a[0]})
	case "isattached": // <json> <node>
		need(a, 2, "isattached <json> <node>")
		reply.Send("Success", "", map[string]any{"attached": loopOf(backingFile(reply.Options(a[0]))) != ""})
	case "mountdevice": // <dir> <device> <json>
		need(a, 3, "mountdevice <dir> <device> <json>")
		opts := reply.Options(a[2])
		// blkid -p exits 2 when it finds no filesystem: only then format.
		if err := exec.Command("blkid", "-p", a[1]).Run(); err != nil {
			if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 2 {
				reply.Run("mkfs.ext4", "-q", "-F", a[1])
			} else {
				reply.Send("Failure", "blkid "+a[1]+": "+err.Error(), nil)
			}
		}
		if err := os.MkdirAll(a[0], 0o750); err != nil {
			reply.Send("Failure", err.Error(), nil)
		}
		args := []string{a[1], a[0]}
		if opts["kubernetes.io/readwrite"] == "ro" {
			args = append([]string{"-o", "ro"}, args...)
		}
		reply.Run("mount", args...)
		reply.Send("Success", "", nil)
	case "unmountdevice": // <dir>
		need(a, 1, "unmountdevice <dir>")
		reply.Run("umount", a[0])
		reply.Send("Success", "", nil)
	default:
		reply.Send("Not supported", "", nil)
	}
}

// backingFile is <dir>/<volume name>.img, both validated.
func backingFile(opts map[string]string) string {
	dir, name := opts["dir"], opts["kubernetes.io/pvOrVolumeName"]
	if !filepath.IsAbs(dir) || filepath.Clean(dir) != dir {
		reply.Send("Failure", fmt.Sprintf("option dir %q must be a clean absolute path", dir), map[string]any{"code": "InvalidArgument"})
	}
	if !validName.MatchString(name) {
		reply.Send("Failure", fmt.Sprintf("volume name %q cannot be a file name", name), map[string]any{"code": "InvalidArgument"})
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		reply.Send("Failure", err.Error(), nil)
	}
	return filepath.Join(dir, name+".img")
}

// loopOf is the loop device over file, or "".
func loopOf(file string) string {
	out := strings.TrimSpace(reply.Run("losetup", "-j", file))
	dev, _, _ := strings.Cut(out, ":")
	return dev
}

// loopsNamed lists the loop devices whose backing file is called base.
func loopsNamed(base string) []string {
	var devs []string
	for _, line := range strings.Split(reply.Run("losetup", "-a"), "\n") {
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
		reply.Send("Failure", "usage: "+usage, map[string]any{"code": "InvalidArgument"})
	}
}
