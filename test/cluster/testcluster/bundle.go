package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/monocsi/monocsi/test/cluster"
)

// bundle tries a release bundle (make release's dist/) as the README's
// Install section tells a user to, on a fresh test cluster that has never
// seen monocsi: check SHA256SUMS, import the image archive into the node's
// containerd (what `k3s ctr images import` does), `helm install` the
// packaged chart with its pinned image (the test cluster's kubelet
// directory is not the default, as on MicroK8s), then the bundle's example:
// the claim must be provisioned for its pod and the pod's file land on the
// node. The cluster is removed at the end, whatever happened.
func bundle(dir, dist string) (err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	step := func(s string) { fmt.Println("==> bundle:", s) }
	step("sha256sum -c SHA256SUMS")
	check := exec.Command("sha256sum", "-c", "--quiet", "SHA256SUMS")
	check.Dir = dist
	if out, err := check.CombinedOutput(); err != nil {
		return fmt.Errorf("sha256sum -c: %v\n%s", err, out)
	}
	archives, _ := filepath.Glob(filepath.Join(dist, "monocsi-image-*.tar"))
	charts, _ := filepath.Glob(filepath.Join(dist, "monocsi-*.tgz"))
	if len(archives) != 1 || len(charts) != 1 {
		return fmt.Errorf("%s: want one image archive and one chart, got %v %v (run make release)", dist, archives, charts)
	}
	helpers, err := cluster.HelperImages()
	if err != nil {
		return err
	}
	c, err := cluster.Start(ctx, cluster.Options{Dir: dir, Images: helpers, Log: os.Stdout})
	if err != nil {
		return err
	}
	defer func() {
		if serr := c.Stop(err != nil); serr != nil && err == nil {
			err = serr
		}
	}()
	step("ctr images import " + filepath.Base(archives[0]))
	if err := c.ImportImage(ctx, archives[0]); err != nil {
		return err
	}
	step("helm install monocsi " + filepath.Base(charts[0]) + " --set kubeletDir=...")
	if err := c.InstallChart(ctx, charts[0]); err != nil {
		return err
	}
	images, err := c.Kubectl(ctx, "-n", "monocsi", "get", "pods", "-o", "jsonpath={.items[*].spec.containers[*].image}")
	if err != nil {
		return err
	}
	fmt.Println("    running", images)
	step("kubectl apply -f example-local-dynamic.yaml")
	example, err := os.ReadFile(filepath.Join(dist, "example-local-dynamic.yaml"))
	if err != nil {
		return err
	}
	// The test cluster has no network: its busybox is the local one.
	file, err := runExample(ctx, c, bytes.ReplaceAll(example, []byte("image: busybox:1.37"), []byte("image: localhost/busybox:local")), "demo-dynamic")
	if err != nil {
		return err
	}
	name := filepath.Base(filepath.Dir(file))
	fmt.Printf("==> bundle OK: claim demo-dynamic Bound to %s, the pod wrote %s\n", name, file)
	return nil
}
