package cluster

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/monocsi/monocsi/test/cluster/images"
)

// The image the test cluster runs: what `make image` names its archive by
// default.
const (
	MonocsiRepo  = "localhost/monocsi"
	MonocsiTag   = "dev"
	MonocsiImage = MonocsiRepo + ":" + MonocsiTag
)

// MonocsiArchive is the archive `make image` writes.
func MonocsiArchive() string { return filepath.Join(RepoRoot(), "bin", "monocsi-image.tar") }

// BuildImages runs `make image` (the multi-arch monocsi image users get,
// whose amd64 entry the cluster runs) and writes the pause and busybox
// images as docker-save tarballs under the cache directory. It returns the
// archives to import.
func BuildImages(log io.Writer) ([]string, error) {
	start := time.Now()
	// The busybox image is the host's busybox-static: install it first.
	if err := EnsurePackages(log); err != nil {
		return nil, err
	}
	fmt.Fprintln(log, "==> building images (make image, pause, busybox)")
	cmd := exec.Command("make", "--no-print-directory", "image", "IMAGE="+MonocsiImage, "IMAGE_ARCHIVE="+MonocsiArchive())
	cmd.Dir = RepoRoot()
	b, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("make image: %v\n%s", err, b)
	}
	fmt.Fprintf(log, "    %s", lastLine(b))
	helpers, err := HelperImages()
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(log, "    %s\n", time.Since(start).Round(100*time.Millisecond))
	return append(helpers, MonocsiArchive()), nil
}

// HelperImages writes the pause and busybox images as docker-save tarballs
// under the cache directory and returns their paths.
func HelperImages() ([]string, error) {
	dir := filepath.Join(CacheDir(), "images")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	pause := filepath.Join(dir, "pause")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", pause, "./test/cluster/images/pause")
	cmd.Dir = RepoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build pause: %v\n%s", err, b)
	}
	tars := []string{filepath.Join(dir, "pause.tar"), filepath.Join(dir, "busybox.tar")}
	if err := images.Pause(tars[0], pause); err != nil {
		return nil, err
	}
	if err := images.Busybox(tars[1]); err != nil {
		return nil, err
	}
	return tars, nil
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1] + "\n"
}
