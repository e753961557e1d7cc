package cluster

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/monocsi/monocsi/test/cluster/images"
)

// MonocsiImage is the tag manifests/ deploys (see its kustomization's images).
const MonocsiImage = "localhost/monocsi:dev"

// BuildImages builds the static monocsi and pause binaries from this
// checkout and writes the pause, busybox and monocsi images as docker-save
// tarballs under the cache directory. It returns the tarballs' paths.
func BuildImages(log io.Writer) ([]string, error) {
	start := time.Now()
	// The busybox image is the host's busybox-static: install it first.
	if err := EnsurePackages(log); err != nil {
		return nil, err
	}
	fmt.Fprintln(log, "==> building images (pause, busybox, monocsi)")
	dir := filepath.Join(CacheDir(), "images")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	bin := filepath.Join(dir, "bin")
	for pkg, out := range map[string]string{"./cmd/monocsi": "monocsi", "./test/cluster/images/pause": "pause"} {
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(bin, out), pkg)
		cmd.Dir = RepoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
		}
	}
	tars := []string{filepath.Join(dir, "pause.tar"), filepath.Join(dir, "busybox.tar"), filepath.Join(dir, "monocsi.tar")}
	if err := images.Pause(tars[0], filepath.Join(bin, "pause")); err != nil {
		return nil, err
	}
	if err := images.Busybox(tars[1]); err != nil {
		return nil, err
	}
	if err := images.Monocsi(tars[2], MonocsiImage, filepath.Join(bin, "monocsi")); err != nil {
		return nil, err
	}
	fmt.Fprintf(log, "    %s\n", time.Since(start).Round(100*time.Millisecond))
	return tars, nil
}
