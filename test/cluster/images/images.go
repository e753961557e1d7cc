// Package images builds the test cluster's helper images (pause and
// busybox) as `docker save` tarballs for `ctr images import`, with
// internal/imagebuild, the code that builds monocsi's own image (which the
// test cluster imports from `make image`). Rebuilding an unchanged image
// gives the same bytes.
package images

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/monocsi/monocsi/internal/imagebuild"
)

// File is one entry of an image's root filesystem.
type File = imagebuild.File

// PATH is the search path set in the images' environment.
const PATH = imagebuild.PATH

// Write writes a single-layer image for this machine's architecture,
// tagged tag, with the given entrypoint, environment and root filesystem,
// to out as a `docker save` tarball. Parent directories of files are added
// as needed. The file appears atomically: a failed write leaves any
// previous out in place.
func Write(out, tag string, entrypoint, env []string, files []File) error {
	return write(out, tag, imagebuild.Config{Entrypoint: entrypoint, Env: env}, files)
}

func write(out, tag string, cfg imagebuild.Config, files []File) error {
	img, err := imagebuild.Image(v1.Platform{OS: "linux", Architecture: runtime.GOARCH}, cfg, files)
	if err == nil {
		err = imagebuild.WriteDockerArchive(out, tag, img)
	}
	if err != nil {
		return fmt.Errorf("image %s: %w", tag, err)
	}
	return nil
}

// Pause writes the pod sandbox image localhost/pause:local running the
// static binary pauseBin (built from ./pause) as /pause.
func Pause(out, pauseBin string) error {
	return Write(out, "localhost/pause:local", []string{"/pause"}, nil, []File{
		{Path: "/pause", Mode: 0o755, Src: pauseBin},
	})
}

// busyboxBin is where Debian's busybox-static package installs busybox.
const busyboxBin = "/usr/bin/busybox"

// Busybox writes localhost/busybox:local from the host's static busybox:
// /bin/busybox with a symlink per applet (so /bin/sh works), and /tmp. Like
// the upstream busybox image it runs sh unless the pod sets a command.
func Busybox(out string) error {
	if _, err := os.Stat(busyboxBin); err != nil {
		return fmt.Errorf("busybox image: %w (install the Debian package busybox-static)", err)
	}
	// Debian's plain busybox package installs a dynamic binary at the same
	// path, which would not run without libraries in the image.
	if static, err := imagebuild.IsStatic(busyboxBin); err != nil {
		return fmt.Errorf("busybox image: %w", err)
	} else if !static {
		return fmt.Errorf("busybox image: %s is dynamically linked (install the Debian package busybox-static)", busyboxBin)
	}
	list, err := exec.Command(busyboxBin, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox image: %s --list: %w", busyboxBin, err)
	}
	files := []File{
		{Path: "/bin/busybox", Mode: 0o755, Src: busyboxBin},
		{Path: "/tmp", Mode: os.ModeDir | os.ModeSticky | 0o777},
	}
	for _, name := range strings.Fields(string(list)) {
		if name != "busybox" && !strings.Contains(name, "/") {
			files = append(files, File{Path: "/bin/" + name, Link: "busybox"})
		}
	}
	return write(out, "localhost/busybox:local", imagebuild.Config{Cmd: []string{"sh"}, Env: []string{PATH}}, files)
}
