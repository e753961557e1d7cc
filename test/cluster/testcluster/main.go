// Command testcluster starts and stops the project's test cluster for
// `make demo`: `testcluster demo DIR` leaves a single-node Kubernetes with
// monocsi installed and a pod writing into a monocsi volume running;
// `testcluster down DIR` removes it all; `testcluster bundle DIR DIST`
// installs a release bundle as a user would and removes it all again;
// `testcluster bin` prints the directory of the Kubernetes binaries.
package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/monocsi/monocsi/test/cluster"
)

func main() {
	if len(os.Args) == 2 && os.Args[1] == "bin" {
		// The Kubernetes binaries' directory (built when missing), for
		// make release's kubectl.
		dir, err := cluster.EnsureBinaries(os.Stderr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "testcluster:", err)
			os.Exit(1)
		}
		fmt.Println(dir)
		return
	}
	if len(os.Args) == 4 && os.Args[1] == "bundle" {
		if err := bundle(os.Args[2], os.Args[3]); err != nil {
			fmt.Fprintln(os.Stderr, "testcluster: FAIL:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) != 3 || (os.Args[1] != "demo" && os.Args[1] != "down") {
		fmt.Fprintln(os.Stderr, "usage: testcluster demo|down DIR | testcluster bundle DIR DIST | testcluster bin")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "testcluster:", err)
		os.Exit(1)
	}
}

func run(cmd, dir string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root: it runs a kubelet and containerd")
	}
	if cmd == "down" {
		c, err := cluster.Load(dir)
		if os.IsNotExist(err) {
			fmt.Println("no cluster at", dir)
			return nil
		}
		if err != nil {
			return err
		}
		if err := c.Stop(false); err != nil {
			return err
		}
		fmt.Println("cluster at", dir, "removed")
		return nil
	}
	if _, err := os.Stat(dir); err == nil {
		return fmt.Errorf("%s exists: a cluster may be running there (`make demo-down` removes it)", dir)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	images, err := cluster.BuildImages(os.Stdout)
	if err != nil {
		return err
	}
	c, err := cluster.Start(ctx, cluster.Options{Dir: dir, Images: images, Log: os.Stdout})
	if err != nil {
		return err
	}
	fmt.Println("==> installing monocsi with its chart (helm upgrade --install monocsi charts/monocsi)")
	if err := c.InstallMonocsi(ctx); err != nil {
		return err
	}
	return demo(ctx, c)
}

// demo creates a local volume through the driver's CSI socket, then the
// example PV, claim and pod, and a claim of monocsi-local provisioned for
// its pod, and shows what happened.
func demo(ctx context.Context, c *cluster.Cluster) error {
	fmt.Println("==> creating local volume \"demo\" (CreateVolume on the node's CSI socket)")
	if err := c.CreateLocalVolume(ctx, "demo"); err != nil {
		return err
	}
	example, err := os.ReadFile(filepath.Join(cluster.RepoRoot(), "manifests", "examples", "local-static.yaml"))
	if err != nil {
		return err
	}
	fmt.Println("==> kubectl apply -f manifests/examples/local-static.yaml (PV, PVC, pod)")
	hello, err := runExample(ctx, c, bytes.ReplaceAll(example, []byte("NODE_NAME"), []byte(cluster.NodeName)), "demo")
	if err != nil {
		return err
	}
	content, err := os.ReadFile(hello)
	if err != nil {
		return err
	}
	fmt.Println("==> kubectl apply -f manifests/examples/local-dynamic.yaml (a claim of monocsi-local, pod)")
	dynamicExample, err := os.ReadFile(filepath.Join(cluster.RepoRoot(), "manifests", "examples", "local-dynamic.yaml"))
	if err != nil {
		return err
	}
	dynamic, err := runExample(ctx, c, dynamicExample, "demo-dynamic")
	if err != nil {
		return err
	}
	pv := filepath.Base(filepath.Dir(dynamic))
	show := func(args ...string) {
		out, err := c.Kubectl(ctx, args...)
		if err != nil {
			out = err.Error()
		}
		fmt.Printf("$ kubectl %s\n%s\n", strings.Join(args, " "), out)
	}
	fmt.Println()
	show("get", "pv,pvc,pod", "-o", "wide")
	show("-n", "monocsi", "get", "pods", "-o", "wide")
	show("get", "csinode", cluster.NodeName, "-o", "jsonpath={.spec.drivers[*].name}")
	fmt.Printf("The pod's volume is a bind mount of %s:\n", filepath.Dir(hello))
	for _, m := range c.MountsOf(filepath.Join(c.LocalRoot(), "demo")) {
		fmt.Println("  mounted at", m)
	}
	fmt.Printf("and the pod wrote %s:\n  %s\n", hello, strings.TrimSpace(string(content)))
	fmt.Printf("The claim demo-dynamic was provisioned for its pod as %s; the pod wrote %s.\n", pv, dynamic)
	fmt.Printf(`
The cluster keeps running. Use it with:
  export KUBECONFIG=%s
  export PATH=%s:$PATH     # kubectl %s
  kubectl get pods -A
Component logs are in %s. Remove everything with: make demo-down
`, c.Kubeconfig, c.Bins, cluster.K8sVersion, c.Logs)
	return nil
}

// runExample applies an example (a claim and a pod named name that writes
// hello.txt into its volume), waits for the pod, the claim's binding and
// the file on the node, and returns the file's path.
func runExample(ctx context.Context, c *cluster.Cluster, yaml []byte, name string) (string, error) {
	f := filepath.Join(c.Dir, name+".yaml")
	if err := os.WriteFile(f, yaml, 0o644); err != nil {
		return "", err
	}
	if _, err := c.Kubectl(ctx, "apply", "-f", f); err != nil {
		return "", err
	}
	if _, err := c.Kubectl(ctx, "wait", "--for=condition=Ready", "pod/"+name, "--timeout=120s"); err != nil {
		return "", err
	}
	out, err := c.Kubectl(ctx, "get", "pvc", name, "-o", "jsonpath={.status.phase} {.spec.volumeName}")
	if err != nil {
		return "", err
	}
	phase, pv, _ := strings.Cut(out, " ")
	if phase != "Bound" || pv == "" {
		return "", fmt.Errorf("claim %s: %q", name, out)
	}
	file := filepath.Join(c.LocalRoot(), pv, "hello.txt")
	for range 40 {
		if _, err = os.Stat(file); err == nil {
			return file, nil
		}
		time.Sleep(250 * time.Millisecond)
	}
	return "", fmt.Errorf("pod %s's file never appeared at %s: %w", name, file, err)
}
