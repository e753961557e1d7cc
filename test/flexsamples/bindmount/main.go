// Command bindmount is a FlexVolume driver written for monocsi's tests, in
// the shape of the classic NFS FlexVolume script: no attach; mount
// bind-mounts the directory named by the "source" option at the target
// (creating it), unmount unmounts. Install it as
// <flex-dir>/monocsi~bindmount/bindmount.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/monocsi/monocsi/test/flexsamples/reply"
)

func main() {
	if len(os.Args) < 2 {
		reply.Send("Failure", "no command", nil)
	}
	switch os.Args[1] {
	case "init":
		reply.Send("Success", "", map[string]any{"capabilities": map[string]any{"attach": false}})
	case "mount":
		if len(os.Args) != 4 {
			reply.Send("Failure", "usage: mount <dir> <json>", nil)
		}
		opts := reply.Options(os.Args[3])
		src := opts["source"]
		if !filepath.IsAbs(src) || filepath.Clean(src) != src {
			reply.Send("Failure", fmt.Sprintf("option source %q must be a clean absolute path", src), map[string]any{"code": "InvalidArgument"})
		}
		if err := os.MkdirAll(src, 0o777); err != nil {
			reply.Send("Failure", err.Error(), nil)
		}
		args := []string{"--bind", src, os.Args[2]}
		if opts["kubernetes.io/readwrite"] == "ro" {
			args = []string{"--bind", "-o", "ro", src, os.Args[2]}
		}
		reply.Run("mount", args...)
		reply.Send("Success", "", nil)
	case "unmount":
		if len(os.Args) != 3 {
			reply.Send("Failure", "usage: unmount <dir>", nil)
		}
		reply.Run("umount", os.Args[2])
		reply.Send("Success", "", nil)
	default:
		reply.Send("Not supported", "", nil)
	}
}
