// Package charts_test checks the Helm chart charts/monocsi against
// manifests/: with default values it must render the same objects as
// `kubectl kustomize manifests/`, so a change to one side only fails here.
package charts_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"

	"github.com/monocsi/monocsi/test/cluster"
)

var (
	root  = cluster.RepoRoot()
	chart = filepath.Join(root, "charts", "monocsi")
)

// helm is the pinned helm of the Makefile (HELM_VERSION), never one from PATH.
func helm(t *testing.T, args ...string) []byte {
	t.Helper()
	bin := filepath.Join(root, "bin", "helm")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%s is missing: run `make bin/helm` (the helm version pinned in the Makefile)", bin)
	}
	return run(t, bin, args...)
}

// kubectl is the test cluster's kubectl (built from source on first use, as
// for the e2e tests; seconds when cached).
func kubectl(t *testing.T, args ...string) []byte {
	t.Helper()
	bins, err := cluster.EnsureBinaries(logWriter{t})
	if err != nil {
		t.Fatalf("kubectl: %v", err)
	}
	return run(t, filepath.Join(bins, "kubectl"), args...)
}

func run(t *testing.T, bin string, args ...string) []byte {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, stderr.Bytes())
	}
	return out
}

type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// objects parses a multi-document YAML stream into objects keyed by
// kind/namespace/name.
func objects(t *testing.T, what string, stream []byte) map[string]*unstructured.Unstructured {
	t.Helper()
	objs := map[string]*unstructured.Unstructured{}
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(stream), 4096)
	for {
		var m map[string]any
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if m == nil {
			continue // an empty document
		}
		u := &unstructured.Unstructured{Object: m}
		key := u.GetKind() + "/" + u.GetNamespace() + "/" + u.GetName()
		if _, dup := objs[key]; dup {
			t.Fatalf("%s: %s twice", what, key)
		}
		objs[key] = u
	}
	return objs
}

// diff compares two object sets and describes every difference: objects
// only on one side, and for objects on both a field-level diff.
func diff(aName string, a map[string]*unstructured.Unstructured, bName string, b map[string]*unstructured.Unstructured) string {
	keys := map[string]bool{}
	for k := range a {
		keys[k] = true
	}
	for k := range b {
		keys[k] = true
	}
	sorted := make([]string, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	var out strings.Builder
	for _, k := range sorted {
		switch oa, ob := a[k], b[k]; {
		case ob == nil:
			fmt.Fprintf(&out, "%s: only in %s\n", k, aName)
		case oa == nil:
			fmt.Fprintf(&out, "%s: only in %s\n", k, bName)
		default:
			if d := cmp.Diff(oa.Object, ob.Object); d != "" {
				fmt.Fprintf(&out, "%s differs (-%s +%s):\n%s\n", k, aName, bName, d)
			}
		}
	}
	return out.String()
}

func keys(m map[string]*unstructured.Unstructured) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// TestDefaultsRenderManifests: `helm template` with default values gives
// exactly the objects of `kubectl kustomize manifests/`.
func TestDefaultsRenderManifests(t *testing.T) {
	fromChart := objects(t, "helm template", helm(t, "template", "monocsi", chart))
	fromKustomize := objects(t, "kubectl kustomize", kubectl(t, "kustomize", filepath.Join(root, "manifests")))
	if len(fromKustomize) < 10 {
		t.Fatalf("kubectl kustomize manifests/ gave only %v", keys(fromKustomize))
	}
	if d := diff("kustomize", fromKustomize, "chart", fromChart); d != "" {
		t.Fatalf("charts/monocsi with default values does not render manifests/; change both together:\n%s", d)
	}
	t.Logf("%d objects alike: %s", len(fromChart), strings.Join(keys(fromChart), ", "))
}

// TestNFSStorageClass: nfs.storageClass renders the class of
// manifests/examples/nfs-storageclass.yaml (plus the chart's label).
func TestNFSStorageClass(t *testing.T) {
	example, err := os.ReadFile(filepath.Join(root, "manifests", "examples", "nfs-storageclass.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	want := objects(t, "example", example)
	for _, o := range want {
		o.SetLabels(map[string]string{"app.kubernetes.io/part-of": "monocsi"})
	}
	got := objects(t, "helm template", helm(t, "template", "monocsi", chart, "--show-only", "templates/storageclass-nfs.yaml",
		"--set", "nfs.storageClass.create=true,nfs.storageClass.server=nfs-server.example.com,nfs.storageClass.share=/exports/kubernetes"))
	if d := diff("example", want, "chart", got); d != "" {
		t.Fatalf("nfs.storageClass does not render manifests/examples/nfs-storageclass.yaml:\n%s", d)
	}

	// Every parameter, and the driver name of nfs.driverName.
	got = objects(t, "helm template", helm(t, "template", "monocsi", chart, "--show-only", "templates/storageclass-nfs.yaml",
		"--set", "nfs.storageClass.create=true,nfs.storageClass.server=10.0.0.1,nfs.storageClass.share=/srv",
		"--set-string", "nfs.storageClass.subDir=${pvc.metadata.namespace}/${pvc.metadata.name},nfs.storageClass.onDelete=archive,nfs.storageClass.mountPermissions=0777",
		"--set", "nfs.driverName=nfs.csi.k8s.io,nfs.storageClass.mountOptions={nfsvers=3,hard}"))
	sc := got["StorageClass//monocsi-nfs"]
	if sc == nil {
		t.Fatalf("no StorageClass monocsi-nfs: %v", keys(got))
	}
	params, _, _ := unstructured.NestedStringMap(sc.Object, "parameters")
	wantParams := map[string]string{"server": "10.0.0.1", "share": "/srv", "subDir": "${pvc.metadata.namespace}/${pvc.metadata.name}",
		"onDelete": "archive", "mountPermissions": "0777"}
	if d := cmp.Diff(wantParams, params); d != "" {
		t.Errorf("parameters (-want +got):\n%s", d)
	}
	opts, _, _ := unstructured.NestedStringSlice(sc.Object, "mountOptions")
	if p, _, _ := unstructured.NestedString(sc.Object, "provisioner"); p != "nfs.csi.k8s.io" || !cmp.Equal(opts, []string{"nfsvers=3", "hard"}) {
		t.Errorf("provisioner %q, mountOptions %q", p, opts)
	}

	// Without server and share the chart refuses to render.
	cmd := exec.Command(filepath.Join(root, "bin", "helm"), "template", "monocsi", chart, "--set", "nfs.storageClass.create=true")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "nfs.storageClass.server is required") {
		t.Errorf("nfs.storageClass.create without server: err %v, output:\n%s", err, out)
	}
}

// TestValues: the values that replace the patches manifests/README.md shows
// land everywhere their path appears.
func TestValues(t *testing.T) {
	objs := objects(t, "helm template", helm(t, "template", "monocsi", chart,
		"--set", "kubeletDir=/my/kubelet,local.root=/data/local,flex.dir=/my/flex,flex.exec=container,flex.path=/opt/bin:/bin,logLevel=5",
		"--set", "image.repository=registry.example.com/monocsi,image.digest=sha256:0123",
		"--set", "nfs.mountTimeout=1m,nfs.defaultOnDelete=retain,nfs.driverName=nfs.csi.k8s.io",
		"--set", "node.drivers={local},controller.replicas=2,controller.healthPort=0,controller.hostNetwork=true",
		"--set", "node.nodeSelector.disk=ssd,controller.priorityClassName=,node.resources=null",
		"--set", "namespace.name=storage,namespace.create=false"))
	ds, dep := objs["DaemonSet/storage/monocsi-node"], objs["Deployment/storage/monocsi-controller"]
	if ds == nil || dep == nil {
		t.Fatalf("workloads not in namespace storage: %v", keys(objs))
	}
	if _, ok := objs["Namespace//storage"]; ok {
		t.Errorf("namespace.create=false still renders the Namespace")
	}
	yamlOf := func(u *unstructured.Unstructured) string {
		b, _ := u.MarshalJSON()
		return string(b)
	}
	for _, c := range []struct {
		obj  *unstructured.Unstructured
		want []string
		not  []string
	}{
		{ds, []string{
			`{"name":"KUBELET_DIR","value":"/my/kubelet"}`,
			`"mountPath":"/my/kubelet","mountPropagation":"Bidirectional","name":"kubelet-dir"`,
			`{"hostPath":{"path":"/my/kubelet","type":"Directory"},"name":"kubelet-dir"}`,
			`{"hostPath":{"path":"/data/local","type":"DirectoryOrCreate"},"name":"local-root"}`,
			`{"name":"FLEX_DIR","value":"/my/flex"}`, `{"mountPath":"/my/flex","name":"flex-dir"}`,
			`{"hostPath":{"path":"/my/flex","type":"DirectoryOrCreate"},"name":"flex-dir"}`,
			`"image":"registry.example.com/monocsi@sha256:0123"`,
			`"--drivers=local"`, `"--nfs-driver-name=nfs.csi.k8s.io","--nfs-mount-timeout=1m","--nfs-default-ondelete=retain","--v=5"`,
			`"--flex-exec=container","--flex-path=/opt/bin:/bin"`,
			`"nodeSelector":{"disk":"ssd"}`, `"priorityClassName":"system-node-critical"`,
		}, []string{`/var/lib/kubelet`, `"resources"`, `hostPID`}},
		{dep, []string{
			`"replicas":2`, `"hostNetwork":true`, `"image":"registry.example.com/monocsi@sha256:0123"`,
			`{"name":"FLEX_DIR","value":"/my/flex"}`, `{"hostPath":{"path":"/my/flex","type":"DirectoryOrCreate"},"name":"flex-dir"}`,
			`"--drivers=nfs","--flex-dir=$(FLEX_DIR)","--flex-exec=container"`, `"--nfs-driver-name=nfs.csi.k8s.io","--nfs-mount-timeout=1m"`,
			`"--flex-exec=container","--flex-path=/opt/bin:/bin"`,
		}, []string{`livenessProbe`, `--http-endpoint`, `priorityClassName`, `hostPID`}},
	} {
		s := yamlOf(c.obj)
		for _, w := range c.want {
			if !strings.Contains(s, w) {
				t.Errorf("%s lacks %s:\n%s", c.obj.GetKind(), w, s)
			}
		}
		for _, n := range c.not {
			if strings.Contains(s, n) {
				t.Errorf("%s has %s:\n%s", c.obj.GetKind(), n, s)
			}
		}
	}
}
