package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	mount "k8s.io/mount-utils"

	"github.com/monocsi/monocsi/test/nfsemu"
)

// LocalRoot is where the installed local driver keeps its volumes on the host.
func (c *Cluster) LocalRoot() string { return filepath.Join(c.Dir, "local") }

// NFSRoot is the NFS emulation's servers' disks on the host: the share
// server:/path of the installed nfs driver is <NFSRoot>/<server>/<path>.
func (c *Cluster) NFSRoot() string { return filepath.Join(c.Dir, "nfs-servers") }

// InstallMonocsi installs monocsi the way a user does — `kubectl apply -k`
// of manifests/ — through an overlay that only sets what differs here: the
// kubelet directory, the local root, the FlexVolume directory (the kubelet's
// volumePluginDir), the API address, and the NFS
// emulation (this kernel has no NFS; see test/nfsemu) in the pods that
// mount shares. It waits for the node and controller pods to be ready.
func (c *Cluster) InstallMonocsi(ctx context.Context) error {
	overlay := filepath.Join(c.Dir, "overlay")
	if err := os.MkdirAll(overlay, 0o755); err != nil {
		return err
	}
	emuBin := filepath.Join(c.Dir, "nfsemu-bin")
	if err := nfsemu.Build(emuBin); err != nil {
		return err
	}
	if m, _ := mount.New("").IsMountPoint(c.NFSRoot()); !m {
		if err := nfsemu.MountRoot(c.NFSRoot()); err != nil {
			return err
		}
	}
	base, err := filepath.Rel(overlay, filepath.Join(RepoRoot(), "manifests"))
	if err != nil {
		return err
	}
	// Both pods: the emulating mount first on PATH, the servers' disks at
	// the same path as on the host, and the API server on the host's loopback
	// (there is no kube-proxy here).
	emulation := fmt.Sprintf(`    - {op: add, path: /spec/template/spec/containers/0/env/-, value: {name: PATH, value: "%[1]s:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}}
    - {op: add, path: /spec/template/spec/containers/0/env/-, value: {name: NFS_EMULATION_ROOT, value: "%[2]s"}}
    - {op: add, path: /spec/template/spec/containers/0/env/-, value: {name: KUBERNETES_SERVICE_HOST, value: "127.0.0.1"}}
    - {op: add, path: /spec/template/spec/containers/0/env/-, value: {name: KUBERNETES_SERVICE_PORT, value: "%[3]d"}}
    - {op: add, path: /spec/template/spec/volumes/-, value: {name: nfsemu-bin, hostPath: {path: "%[1]s", type: Directory}}}
    - {op: add, path: /spec/template/spec/volumes/-, value: {name: nfs-servers, hostPath: {path: "%[2]s", type: Directory}}}
    - {op: add, path: /spec/template/spec/containers/0/volumeMounts/-, value: {name: nfsemu-bin, mountPath: "%[1]s", readOnly: true}}
    - {op: add, path: /spec/template/spec/containers/0/volumeMounts/-, value: {name: nfs-servers, mountPath: "%[2]s"}}
`, emuBin, c.NFSRoot(), c.APIPort)
	k := fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- %s
patches:
- target: {kind: DaemonSet, name: monocsi-node}
  patch: |-
    - {op: replace, path: /spec/template/spec/containers/0/env/1/value, value: %[2]s}
    - {op: replace, path: /spec/template/spec/containers/0/volumeMounts/0/mountPath, value: %[2]s}
    - {op: replace, path: /spec/template/spec/volumes/0/hostPath/path, value: %[2]s}
    - {op: replace, path: /spec/template/spec/volumes/1/hostPath/path, value: %[3]s}
    - {op: replace, path: /spec/template/spec/containers/0/env/2/value, value: %[6]s}
    - {op: replace, path: /spec/template/spec/containers/0/volumeMounts/3/mountPath, value: %[6]s}
    - {op: replace, path: /spec/template/spec/volumes/3/hostPath/path, value: %[6]s}
%[4]s- target: {kind: Deployment, name: monocsi-controller}
  patch: |-
    # Only loopback networking here; two replicas on one host would also
    # share the health port, so the test pods go without it.
    - {op: add, path: /spec/template/spec/hostNetwork, value: true}
    - {op: replace, path: /spec/template/spec/containers/0/args/2, value: "--http-endpoint="}
    - {op: remove, path: /spec/template/spec/containers/0/livenessProbe}
    - {op: replace, path: /spec/template/spec/containers/0/env/1/value, value: %[6]s}
    - {op: replace, path: /spec/template/spec/containers/0/volumeMounts/1/mountPath, value: %[6]s}
    - {op: replace, path: /spec/template/spec/volumes/1/hostPath/path, value: %[6]s}
%[5]s`, base, c.KubeletDir, c.LocalRoot(), emulation, emulation, c.FlexDir)
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		return err
	}
	if _, err := c.Kubectl(ctx, "apply", "-k", overlay); err != nil {
		return err
	}
	if err := c.WaitNodePodReady(ctx, 2*time.Minute); err != nil {
		return err
	}
	return c.WaitRollout(ctx, "deployment/monocsi-controller", 2*time.Minute)
}

// WaitNodePodReady waits until the monocsi node DaemonSet is fully rolled out.
func (c *Cluster) WaitNodePodReady(ctx context.Context, limit time.Duration) error {
	return c.WaitRollout(ctx, "daemonset/monocsi-node", limit)
}

// WaitRollout waits until a monocsi workload is fully rolled out.
func (c *Cluster) WaitRollout(ctx context.Context, workload string, limit time.Duration) error {
	_, err := c.Kubectl(ctx, "-n", "monocsi", "rollout", "status", workload, "--timeout="+limit.String())
	if err != nil {
		pods, _ := c.Kubectl(ctx, "-n", "monocsi", "get", "pods", "-o", "wide")
		events, _ := c.Kubectl(ctx, "-n", "monocsi", "get", "events", "--sort-by=.lastTimestamp")
		return fmt.Errorf("%w\npods:\n%s\nevents:\n%s", err, pods, lastLines(events, 20))
	}
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// CreateLocalVolume creates a local volume through the local driver's CSI
// socket on the node, as an operator pre-creating a static volume would.
func (c *Cluster) CreateLocalVolume(ctx context.Context, name string) error {
	sock := filepath.Join(c.KubeletDir, "plugins", "local.csi.monocsi.io", "csi.sock")
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = csi.NewControllerClient(conn).CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name:          name,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		}},
	})
	if err != nil {
		return fmt.Errorf("CreateVolume %s over %s: %w", name, sock, err)
	}
	return nil
}

// MountsOf lists the mount points whose source is the host directory dir
// (bind mounts of a local volume).
func (c *Cluster) MountsOf(dir string) []string {
	refs, _ := mount.New("").GetMountRefs(dir)
	return refs
}
