// Package cluster runs a real single-node Kubernetes on this machine for the
// end-to-end tests and the demo: etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler, containerd and the kubelet, built from upstream sources,
// each in per-run directories on free loopback ports, so two runs never
// collide and nothing is left in /var/lib/kubelet. Stop undoes exactly what
// Start did: it stops the processes it started (by PID), the containers they
// ran, unmounts what is left under the run directory and removes it.
package cluster

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/monocsi/monocsi/internal/filelock"
)

// DefaultK8sVersion is the Kubernetes release the test cluster runs unless
// $K8S_VERSION names another. Each release that can be chosen has its own
// pinned module, test/cluster/k8s/<version>.
const DefaultK8sVersion = "v1.37.2"

// K8sVersion is the release this process's test cluster runs.
var K8sVersion = func() string {
	if v := os.Getenv("K8S_VERSION"); v != "" {
		return v
	}
	return DefaultK8sVersion
}()

// Binaries are the upstream commands built from test/cluster/k8s/<version>.
var Binaries = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl"}

// Packages are the Debian packages the cluster needs, with a file each
// package installs that tells whether it is there.
var Packages = map[string]string{
	"etcd-server":                 "/usr/bin/etcd",
	"containerd":                  "/usr/bin/containerd",
	"runc":                        "/usr/sbin/runc",
	"containernetworking-plugins": "/usr/lib/cni/loopback",
	"busybox-static":              "/usr/bin/busybox",
	"mount":                       "/usr/bin/mount",
	"util-linux":                  "/usr/bin/findmnt",
	"e2fsprogs":                   "/usr/sbin/mkfs.ext4",
}

// RepoRoot is the monocsi checkout this package was compiled from.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// CacheDir holds built binaries across runs: $MONOCSI_CACHE, else ~/.cache/monocsi.
func CacheDir() string {
	if d := os.Getenv("MONOCSI_CACHE"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		home = "/root"
	}
	return filepath.Join(home, ".cache", "monocsi")
}

// EnsurePackages installs the Debian packages that are missing.
func EnsurePackages(log io.Writer) error {
	var missing []string
	for pkg, file := range Packages {
		if _, err := os.Stat(file); err != nil {
			missing = append(missing, pkg)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return fmt.Errorf("missing packages %v and no apt-get to install them", missing)
	}
	fmt.Fprintf(log, "==> installing Debian packages: %s\n", strings.Join(missing, " "))
	start := time.Now()
	for _, args := range [][]string{{"update", "-qq"}, append([]string{"install", "-y", "-qq", "--no-install-recommends"}, missing...)} {
		cmd := exec.Command("apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %s: %v\n%s", args[0], err, out)
		}
	}
	fmt.Fprintf(log, "    done in %s\n", time.Since(start).Round(time.Second))
	return nil
}

// EnsureBinaries returns the directory holding the Kubernetes binaries of
// K8sVersion, building them from the Go module proxy when they are missing
// (about 10 minutes cold on 2 cores; seconds once cached).
func EnsureBinaries(log io.Writer) (string, error) {
	dir := filepath.Join(CacheDir(), "k8s-"+K8sVersion)
	if haveAll(dir) {
		return dir, nil
	}
	// Another run may be building the same version: wait for it, then
	// look again.
	if err := os.MkdirAll(CacheDir(), 0o755); err != nil {
		return "", err
	}
	unlock, err := filelock.Lock(dir+".lock", nil)
	if err != nil {
		return "", err
	}
	defer unlock()
	if haveAll(dir) {
		return dir, nil
	}
	fmt.Fprintf(log, "==> building Kubernetes %s (%s) into %s; cached for later runs\n", K8sVersion, strings.Join(Binaries, ", "), dir)
	start := time.Now()
	tmp := dir + ".tmp"
	os.RemoveAll(tmp) // a killed build's leftovers
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", err
	}
	mod := filepath.Join(RepoRoot(), "test", "cluster", "k8s", K8sVersion)
	if _, err := os.Stat(filepath.Join(mod, "go.mod")); err != nil {
		return "", fmt.Errorf("no pinned module %s for Kubernetes %s (K8S_VERSION must name one)", mod, K8sVersion)
	}
	args := []string{"build", "-trimpath", "-ldflags=" + versionLDFlags(K8sVersion), "-o", tmp + "/"}
	for _, b := range Binaries {
		args = append(args, "k8s.io/kubernetes/cmd/"+b)
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = mod
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build Kubernetes: %w", err)
	}
	if !haveAll(tmp) {
		return "", fmt.Errorf("build Kubernetes: binaries missing in %s", tmp)
	}
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return "", err
	}
	fmt.Fprintf(log, "    built in %s\n", time.Since(start).Round(time.Second))
	return dir, nil
}

// versionLDFlags stamps the release into the binaries as Kubernetes' own
// build does (hack/lib/version.sh); without it the server reports
// v0.0.0-master and kubectl version fails.
func versionLDFlags(v string) string {
	major, minor, _ := strings.Cut(strings.TrimPrefix(v, "v"), ".")
	minor, _, _ = strings.Cut(minor, ".")
	flags := []string{"-s", "-w"}
	for _, pkg := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		for k, val := range map[string]string{
			"gitVersion": v, "gitMajor": major, "gitMinor": minor,
			"gitTreeState": "clean", "gitCommit": "module-" + v, "buildDate": "1970-01-01T00:00:00Z",
		} {
			flags = append(flags, "-X", pkg+"."+k+"="+val)
		}
	}
	return strings.Join(flags, " ")
}

func haveAll(dir string) bool {
	for _, b := range Binaries {
		if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}
