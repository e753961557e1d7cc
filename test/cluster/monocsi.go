package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	mount "k8s.io/mount-utils"

	"github.com/monocsi/monocsi/driver/flex"
	"github.com/monocsi/monocsi/test/nfsemu"
)

// LocalRoot is where the installed local driver keeps its volumes on the host.
func (c *Cluster) LocalRoot() string { return filepath.Join(c.Dir, "local") }

// NFSRoot is the NFS emulation's servers' disks on the host: the share
// server:/path of the installed nfs driver is <NFSRoot>/<server>/<path>.
func (c *Cluster) NFSRoot() string { return filepath.Join(c.Dir, "nfs-servers") }

// InstallMonocsi installs monocsi the way a user does — `helm upgrade
// --install` of charts/monocsi (whose defaults render manifests/, see
// charts/render_test.go) with the pinned bin/helm — setting only what differs
// here: the image, the kubelet directory, the local root, the FlexVolume
// directory (the kubelet's volumePluginDir), the API address, and the NFS
// emulation (this kernel has no NFS; see test/nfsemu) in the pods that mount
// shares, and the snapshot CRDs and snapshot-controller. It waits for the
// node and controller pods to be ready.
// Extra helm arguments come last, so they override these settings.
func (c *Cluster) InstallMonocsi(ctx context.Context, extra ...string) error {
	return c.InstallChart(ctx, filepath.Join(RepoRoot(), "charts", "monocsi"),
		append([]string{"--set-string=image.repository=" + MonocsiRepo, "--set-string=image.tag=" + MonocsiTag}, extra...)...)
}

// InstallChart installs monocsi from chart (a directory or a packaged
// chart, such as a release bundle's, whose image is its own) with this
// cluster's settings and extra helm arguments.
func (c *Cluster) InstallChart(ctx context.Context, chart string, extra ...string) error {
	helm := filepath.Join(RepoRoot(), "bin", "helm")
	if _, err := os.Stat(helm); err != nil {
		return fmt.Errorf("%s is missing: run `make bin/helm`", helm)
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
	type m = map[string]any
	// FlexVolume commands run on the host (the chart's flex.exec=host)
	// through nsenter, here into containerd's mount namespace: this
	// machine's PID 1 cannot be entered. The emulating mount comes first on
	// their PATH too.
	ctrd := 0
	for _, p := range c.Procs {
		if p.Name == "containerd" {
			ctrd = p.PID
		}
	}
	if ctrd == 0 {
		return fmt.Errorf("no containerd process recorded for this cluster")
	}
	hostPath := emuBin + ":" + flex.DefaultPath
	// Both pods: the emulating mount first on PATH, the servers' disks at
	// the same path as on the host, and the API server on the host's loopback
	// (there is no kube-proxy here).
	emulation := m{
		"extraArgs": []string{fmt.Sprintf("--flex-mount-ns=/proc/%d/ns/mnt", ctrd), "--flex-path=" + hostPath,
			"--flex-env=NODE_NAME,NFS_EMULATION_ROOT"},
		"extraEnv": []m{
			{"name": "PATH", "value": hostPath},
			{"name": "NFS_EMULATION_ROOT", "value": c.NFSRoot()},
			{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
			{"name": "KUBERNETES_SERVICE_PORT", "value": strconv.Itoa(c.APIPort)},
		},
		"extraVolumes": []m{
			{"name": "nfsemu-bin", "hostPath": m{"path": emuBin, "type": "Directory"}},
			{"name": "nfs-servers", "hostPath": m{"path": c.NFSRoot(), "type": "Directory"}},
		},
		"extraVolumeMounts": []m{
			{"name": "nfsemu-bin", "mountPath": emuBin, "readOnly": true},
			{"name": "nfs-servers", "mountPath": c.NFSRoot()},
		},
	}
	values, err := json.MarshalIndent(m{"node": emulation, "controller": emulation}, "", "  ")
	if err != nil {
		return err
	}
	valuesFile := filepath.Join(c.Dir, "monocsi-values.json")
	if err := os.WriteFile(valuesFile, values, 0o644); err != nil {
		return err
	}
	args := []string{"upgrade", "--install", "monocsi", chart,
		"--kubeconfig=" + c.Kubeconfig, "--namespace=default", "--values=" + valuesFile,
		"--set-string=kubeletDir=" + c.KubeletDir,
		"--set-string=local.root=" + c.LocalRoot(),
		"--set-string=flex.dir=" + c.FlexDir,
		// Only loopback networking here; two replicas on one host would also
		// share the health port, so the test pods go without it.
		"--set=controller.hostNetwork=true", "--set=controller.healthPort=0",
		// This cluster has neither the VolumeSnapshot CRDs nor a
		// snapshot-controller, as k3s: the chart's options bring both.
		"--set=snapshots.installCRDs=true", "--set=snapshots.controller=true",
	}
	args = append(args, extra...)
	cmd := exec.CommandContext(ctx, helm, args...)
	// Helm's own files (cache, config) stay in the run directory.
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+filepath.Join(c.Dir, "helm", "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(c.Dir, "helm", "config"), "HELM_DATA_HOME="+filepath.Join(c.Dir, "helm", "data"))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
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
