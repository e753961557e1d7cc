package cluster

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// NodeName is the name of the cluster's only node.
const NodeName = "node1"

// Cluster is a running test cluster; its JSON form is the state file that
// lets another process (make demo-down) stop it.
type Cluster struct {
	Dir            string `json:"dir"`
	Logs           string `json:"logs"`
	Kubeconfig     string `json:"kubeconfig"`
	KubeletDir     string `json:"kubeletDir"`
	FlexDir        string `json:"flexDir"`
	Server         string `json:"server"`
	APIPort        int    `json:"apiPort"`
	ContainerdSock string `json:"containerdSock"`
	Bins           string `json:"bins"`
	Procs          []proc `json:"procs"`
	// CreatedVarLibKubelet: /var/lib/kubelet did not exist before this run
	// (the kubelet creates device-plugins/ there whatever its --root-dir).
	CreatedVarLibKubelet bool `json:"createdVarLibKubelet"`

	machine *os.File // the machine lock, held from Start to Stop
}

// Options configure Start.
type Options struct {
	Dir    string    // run directory, created if missing; removed by Stop
	Images []string  // docker-save tarballs to import into containerd
	Log    io.Writer // progress lines
}

const token = "monocsi-e2e-admin-token"

func stateFile(dir string) string { return filepath.Join(dir, "cluster.json") }

func (c *Cluster) save() error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(stateFile(c.Dir), b, 0o600)
}

// Load reads the state of a cluster started by another process.
func Load(dir string) (*Cluster, error) {
	b, err := os.ReadFile(stateFile(dir))
	if err != nil {
		return nil, err
	}
	var c Cluster
	return &c, json.Unmarshal(b, &c)
}

// Start brings up the cluster and returns once the node is Ready and the
// images are imported. On failure everything started so far is stopped.
func Start(ctx context.Context, o Options) (c *Cluster, err error) {
	log := o.Log
	if log == nil {
		log = io.Discard
	}
	if err := EnsurePackages(log); err != nil {
		return nil, err
	}
	bins, err := EnsureBinaries(log)
	if err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, err
	}
	machine, err := lockMachine(ctx, dir, log)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		machine.Close()
		return nil, fmt.Errorf("run directory: %w", err)
	}
	c = &Cluster{machine: machine, Dir: dir, Logs: filepath.Join(dir, "logs"), Bins: bins,
		Kubeconfig: filepath.Join(dir, "kubeconfig"), KubeletDir: filepath.Join(dir, "kubelet"),
		FlexDir: filepath.Join(dir, "flex"), ContainerdSock: filepath.Join(dir, "containerd", "containerd.sock")}
	defer func() {
		if err != nil {
			fmt.Fprintf(log, "!!! cluster start failed: %v\n%s", err, c.LogTails(20))
			_ = c.Stop(false)
		}
	}()
	if _, err := os.Stat("/var/lib/kubelet"); errors.Is(err, os.ErrNotExist) {
		c.CreatedVarLibKubelet = true
	}
	for _, d := range []string{c.Logs, c.KubeletDir, c.FlexDir, filepath.Join(dir, "pki"), filepath.Join(dir, "cni"), filepath.Dir(c.ContainerdSock)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return c, err
		}
	}
	if err := c.save(); err != nil {
		return c, err
	}
	// Bidirectional mount propagation (the CSI node pod mounts volumes for the
	// kubelet) needs the kubelet directory on a shared mount.
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		return c, fmt.Errorf("bind-mount %s: %w", dir, err)
	}
	if err := unix.Mount("", dir, "", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		return c, fmt.Errorf("make %s shared: %w", dir, err)
	}

	step := func(name string, f func() error) error {
		start := time.Now()
		fmt.Fprintf(log, "==> %s\n", name)
		if err := f(); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		fmt.Fprintf(log, "    %s\n", time.Since(start).Round(100*time.Millisecond))
		return nil
	}
	for _, s := range []struct {
		name string
		f    func() error
	}{
		{"etcd", c.startEtcd},
		{"kube-apiserver", func() error { return c.startAPIServer(ctx) }},
		{"kube-controller-manager and kube-scheduler", c.startControllers},
		{"containerd", func() error { return c.startContainerd(ctx) }},
		{"import images", func() error { return c.importImages(ctx, o.Images) }},
		{"kubelet (waiting for the node to be Ready)", func() error { return c.StartKubelet(ctx) }},
	} {
		if err := step(s.name, s.f); err != nil {
			return c, err
		}
	}
	return c, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (c *Cluster) bin(name string) string { return filepath.Join(c.Bins, name) }

func (c *Cluster) startEtcd() error {
	client, err := freePort()
	if err != nil {
		return err
	}
	peer, err := freePort()
	if err != nil {
		return err
	}
	cu, pu := fmt.Sprintf("http://127.0.0.1:%d", client), fmt.Sprintf("http://127.0.0.1:%d", peer)
	if err := c.spawn("etcd", "/usr/bin/etcd", "--name=default", "--data-dir="+filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls="+cu, "--advertise-client-urls="+cu, "--listen-peer-urls="+pu,
		"--initial-advertise-peer-urls="+pu, "--initial-cluster=default="+pu, "--unsafe-no-fsync"); err != nil {
		return err
	}
	c.Server = cu // temporarily: the apiserver reads it
	return waitHTTP(context.Background(), cu+"/health", 60*time.Second, nil)
}

func (c *Cluster) startAPIServer(ctx context.Context) error {
	pki := filepath.Join(c.Dir, "pki")
	if err := writeServiceAccountKey(pki); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(pki, "tokens.csv"), []byte(token+`,admin,1,"system:masters"`+"\n"), 0o600); err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	etcd := c.Server
	c.APIPort, c.Server = port, fmt.Sprintf("https://127.0.0.1:%d", port)
	if err := c.spawn("kube-apiserver", c.bin("kube-apiserver"), "--etcd-servers="+etcd,
		"--service-account-key-file="+filepath.Join(pki, "sa.pub"),
		"--service-account-signing-key-file="+filepath.Join(pki, "sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc",
		"--cert-dir="+filepath.Join(pki, "apiserver"), "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", port), "--token-auth-file="+filepath.Join(pki, "tokens.csv"),
		"--authorization-mode=Node,RBAC", "--service-cluster-ip-range=10.96.0.0/16", "--allow-privileged=true",
		"--endpoint-reconciler-type=none", "--enable-priority-and-fairness=false"); err != nil {
		return err
	}
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: %q, insecure-skip-tls-verify: true}
users:
- name: admin
  user: {token: %q}
contexts:
- name: e2e
  context: {cluster: e2e, user: admin}
current-context: e2e
`, c.Server, token)
	if err := os.WriteFile(c.Kubeconfig, []byte(kc), 0o600); err != nil {
		return err
	}
	if err := c.save(); err != nil {
		return err
	}
	return waitHTTP(ctx, c.Server+"/readyz", 120*time.Second, map[string]string{"Authorization": "Bearer " + token})
}

func writeServiceAccountKey(dir string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "sa.key"), pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644)
}

func (c *Cluster) startControllers() error {
	pki := filepath.Join(c.Dir, "pki")
	if err := c.spawn("kube-controller-manager", c.bin("kube-controller-manager"), "--kubeconfig="+c.Kubeconfig,
		"--service-account-private-key-file="+filepath.Join(pki, "sa.key"),
		"--root-ca-file="+filepath.Join(pki, "apiserver", "apiserver.crt"),
		"--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0"); err != nil {
		return err
	}
	return c.spawn("kube-scheduler", c.bin("kube-scheduler"), "--kubeconfig="+c.Kubeconfig,
		"--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0")
}

func (c *Cluster) startContainerd(ctx context.Context) error {
	ctrd := filepath.Dir(c.ContainerdSock)
	cni := filepath.Join(c.Dir, "cni")
	// Only hostNetwork pods run here: a loopback-only CNI makes the node Ready.
	if err := os.WriteFile(filepath.Join(cni, "10-loopback.conflist"),
		[]byte(`{"cniVersion":"1.0.0","name":"loopback","plugins":[{"type":"loopback"}]}`), 0o644); err != nil {
		return err
	}
	conf := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:local"
  # The sandbox lacks CAP_SYS_RESOURCE: without this every pod sandbox fails.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = %[6]q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %[7]q
`, filepath.Join(ctrd, "root"), filepath.Join(ctrd, "state"), c.ContainerdSock, c.ContainerdSock+".ttrpc",
		filepath.Join(ctrd, "opt"), filepath.Join(ctrd, "runc"), cni)
	cfg := filepath.Join(ctrd, "config.toml")
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		return err
	}
	if err := c.spawn("containerd", "/usr/bin/containerd", "--config="+cfg); err != nil {
		return err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if conn, err := net.Dial("unix", c.ContainerdSock); err == nil {
			conn.Close()
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return errors.New("containerd socket did not come up")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ImportImage imports an image archive (docker-save or OCI, as `k3s ctr
// images import` would) into the cluster's containerd: this machine's
// platform of a multi-arch one.
func (c *Cluster) ImportImage(ctx context.Context, tarball string) error {
	out, err := exec.CommandContext(ctx, "ctr", "--address", c.ContainerdSock, "-n", "k8s.io",
		"images", "import", "--no-unpack", "--platform", "linux/"+runtime.GOARCH, tarball).CombinedOutput()
	if err != nil {
		return fmt.Errorf("import %s: %v\n%s", tarball, err, out)
	}
	return nil
}

func (c *Cluster) importImages(ctx context.Context, images []string) error {
	for _, img := range images {
		if err := c.ImportImage(ctx, img); err != nil {
			return err
		}
	}
	return nil
}

// StartKubelet starts the kubelet (again) and waits for the node to be Ready.
func (c *Cluster) StartKubelet(ctx context.Context) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	cfg := filepath.Join(c.Dir, "kubelet.yaml")
	conf := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://%s
failSwapOn: false
failCgroupV1: false
address: 127.0.0.1
port: %d
healthzPort: 0
readOnlyPort: 0
resolvConf: ""
enforceNodeAllocatable: []
evictionHard: {}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
podLogsDir: %s
volumePluginDir: %s
`, c.ContainerdSock, port, filepath.Join(c.Dir, "pod-logs"), c.FlexDir)
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		return err
	}
	started := time.Now()
	if err := c.spawn("kubelet", c.bin("kubelet"), "--kubeconfig="+c.Kubeconfig, "--config="+cfg,
		"--hostname-override="+NodeName, "--node-ip=127.0.0.1", "--root-dir="+c.KubeletDir,
		"--cert-dir="+filepath.Join(c.Dir, "pki", "kubelet")); err != nil {
		return err
	}
	return c.waitNodeReady(ctx, started, 120*time.Second)
}

// StopKubelet stops the kubelet; pods keep running, as on a real node.
func (c *Cluster) StopKubelet() error { return c.stopProc("kubelet", 15*time.Second) }

// waitNodeReady waits for a Ready heartbeat sent after since: a restarted
// kubelet's node still shows the old Ready condition for a while.
func (c *Cluster) waitNodeReady(ctx context.Context, since time.Time, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		out, err := c.Kubectl(ctx, "get", "node", NodeName, "-o",
			`jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].lastHeartbeatTime}`)
		if f := strings.Fields(out); err == nil && len(f) == 2 && f[0] == "True" {
			if hb, perr := time.Parse(time.RFC3339, f[1]); perr == nil && !hb.Before(since.Truncate(time.Second)) {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %s not Ready after %s (last: %q %v)", NodeName, limit, out, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Kubectl runs the cluster's kubectl against it and returns its stdout.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, c.bin("kubectl"), append([]string{"--kubeconfig=" + c.Kubeconfig}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

func waitHTTP(ctx context.Context, url string, limit time.Duration, headers map[string]string) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: insecureTransport()}
	deadline := time.Now().Add(limit)
	var last error
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		for k, v := range headers {
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		last = err
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready after %s: %v", url, limit, last)
}

// LogTails returns the last n lines of every component's log.
func (c *Cluster) LogTails(n int) string {
	files, _ := filepath.Glob(filepath.Join(c.Logs, "*.log"))
	sort.Strings(files)
	var b strings.Builder
	for _, f := range files {
		data, _ := os.ReadFile(f)
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > n {
			lines = lines[len(lines)-n:]
		}
		fmt.Fprintf(&b, "----- %s (last %d lines) -----\n%s\n", filepath.Base(f), len(lines), strings.Join(lines, "\n"))
	}
	return b.String()
}

// PauseAPIServer freezes the API server process (SIGSTOP: requests hang, as
// behind a dead link) for d, then resumes it.
func (c *Cluster) PauseAPIServer(d time.Duration) error {
	_, p := c.find("kube-apiserver")
	if p == nil || !running(p.PID, p.Bin) {
		return fmt.Errorf("no kube-apiserver process")
	}
	if err := unix.Kill(p.PID, unix.SIGSTOP); err != nil {
		return err
	}
	time.Sleep(d)
	return unix.Kill(p.PID, unix.SIGCONT)
}

// machineLock serialises test clusters on one machine: two kubelets fight
// over the kubepods cgroups, /var/lib/kubelet and host ports, killing each
// other's pods (seen as "Pod sandbox changed" and crash loops). A `make demo`
// cluster outlives its command, and so is not covered.
const machineLock = "/run/lock/monocsi-test-cluster.lock"

// lockMachine waits until no other test cluster runs here and takes the
// lock; its holder writes its run directory into it for whoever waits.
func lockMachine(ctx context.Context, dir string, log io.Writer) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(machineLock), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(machineLock, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	for waited := false; ; waited = true {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", machineLock, err)
		}
		if !waited {
			holder, _ := os.ReadFile(machineLock)
			fmt.Fprintf(log, "==> waiting for the test cluster of another run on this machine (%s)\n", strings.TrimSpace(string(holder)))
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(dir+"\n"), 0)
	}
	return f, nil
}
