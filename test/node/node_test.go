// Package node tests `monocsi node` as the kubelet sees it: the test plays
// the kubelet's plugin watcher against the real binary over real sockets.
package node

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	regapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/monocsi/monocsi/test/testbin"
)

const driverName = "local.csi.monocsi.io"

type nodeRole struct {
	proc                 *testbin.Process
	kubeletDir, regSock  string
	csiSock, healthzAddr string
}

// startNode runs `monocsi node`; without extra arguments, with --provision=false.
func startNode(t *testing.T, extra ...string) *nodeRole {
	if os.Geteuid() != 0 {
		t.Fatal("the node role needs root (it creates sockets under the kubelet directory and mounts); run as root")
	}
	dir := t.TempDir()
	n := &nodeRole{kubeletDir: filepath.Join(dir, "kubelet"), healthzAddr: freeAddr(t)}
	n.regSock = filepath.Join(n.kubeletDir, "plugins_registry", driverName+"-reg.sock")
	n.csiSock = filepath.Join(n.kubeletDir, "plugins", driverName, "csi.sock")
	if len(extra) == 0 {
		extra = []string{"--provision=false"}
	}
	n.proc = testbin.Start(t, append([]string{"node", "--node-id=node1", "--kubelet-dir=" + n.kubeletDir, "--drivers=local",
		"--local-root=" + filepath.Join(dir, "local"), "--http-endpoint=" + n.healthzAddr, "--v=2"}, extra...)...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	testbin.WaitForSocket(ctx, t, n.regSock)
	testbin.WaitForSocket(ctx, t, n.csiSock)
	return n
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func dial(t *testing.T, sock string) *grpc.ClientConn {
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// kubelet does what the kubelet's plugin watcher does with a new socket:
// GetInfo (within 1 s), then NodeGetInfo on the endpoint it was given.
func kubelet(t *testing.T, regSock string) (*regapi.PluginInfo, *csi.NodeGetInfoResponse, regapi.RegistrationClient) {
	t.Helper()
	reg := regapi.NewRegistrationClient(dial(t, regSock))
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	info, err := reg.GetInfo(ctx, &regapi.InfoRequest{})
	if err != nil {
		t.Fatalf("GetInfo: %v", err)
	}
	ni, err := csi.NewNodeClient(dial(t, info.Endpoint)).NodeGetInfo(context.Background(), &csi.NodeGetInfoRequest{})
	if err != nil {
		t.Fatalf("NodeGetInfo on %s: %v", info.Endpoint, err)
	}
	return info, ni, reg
}

func TestKubeletRegistration(t *testing.T) {
	n := startNode(t)
	info, ni, reg := kubelet(t, n.regSock)
	if info.Type != regapi.CSIPlugin || info.Name != driverName || info.Endpoint != n.csiSock ||
		strings.Join(info.SupportedVersions, ",") != "1.0.0" {
		t.Errorf("GetInfo = %+v", info)
	}
	if ni.NodeId != "node1" || ni.GetAccessibleTopology().GetSegments()["topology.monocsi.io/node"] != "node1" {
		t.Errorf("NodeGetInfo = %v", ni)
	}
	fi, err := os.Stat(n.regSock)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("registration socket mode: %v %v", fi, err)
	}
	if _, err := reg.NotifyRegistrationStatus(context.Background(), &regapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Fatal(err)
	}
	if err, exited := n.proc.Exited(500 * time.Millisecond); exited {
		t.Fatalf("node role exited after a successful registration: %v", err)
	}

	resp, err := http.Get("http://" + n.healthzAddr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != "ok" {
		t.Errorf("/healthz = %d %q", resp.StatusCode, body)
	}
}

// A kubelet restart can wipe plugins_registry: the socket must come back, so
// the kubelet registers the driver again.
func TestRegistrationSocketIsRecreated(t *testing.T) {
	n := startNode(t)
	if err := os.RemoveAll(filepath.Dir(n.regSock)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(n.regSock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("registration socket was not re-created within 10 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if info, _, _ := kubelet(t, n.regSock); info.Name != driverName {
		t.Errorf("re-created socket answers GetInfo with %q", info.Name)
	}
}

// When the kubelet refuses the driver, the node role exits non-zero so the
// pod restarts, as node-driver-registrar does.
func TestFailedRegistrationExits(t *testing.T) {
	n := startNode(t)
	_, _, reg := kubelet(t, n.regSock)
	_, _ = reg.NotifyRegistrationStatus(context.Background(), &regapi.RegistrationStatus{PluginRegistered: false, Error: "test says no"})
	err, exited := n.proc.Exited(10 * time.Second)
	if !exited {
		t.Fatal("node role still running after a failed registration")
	}
	if err == nil {
		t.Fatal("node role exited 0 after a failed registration")
	}
	if !strings.Contains(n.proc.Log(), "test says no") {
		t.Errorf("the kubelet's error is not in the log:\n%s", n.proc.Log())
	}
}

// SIGTERM stops the role cleanly and removes its sockets.
func TestShutdownRemovesSockets(t *testing.T) {
	n := startNode(t)
	if err := n.proc.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	for _, s := range []string{n.regSock, n.csiSock} {
		if _, err := os.Lstat(s); !os.IsNotExist(err) {
			t.Errorf("%s left after shutdown: %v", s, err)
		}
	}
}

// An edge node may boot before its API server is reachable: the node role
// must still register the driver with the kubelet (existing volumes must
// mount), and keep trying to start provisioning.
func TestNodeServesWithoutAPIServer(t *testing.T) {
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`), 0o600); err != nil {
		t.Fatal(err)
	}
	n := startNode(t, "--kubeconfig="+kc)
	if info, ni, _ := kubelet(t, n.regSock); info.Name != driverName || ni.NodeId != "node1" {
		t.Errorf("registration without an API server: %v %v", info, ni)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(n.proc.Log(), "Cannot start provisioning yet") {
		if time.Now().After(deadline) {
			t.Fatalf("no retry logged:\n%s", n.proc.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err, exited := n.proc.Exited(0); exited {
		t.Fatalf("node role exited without an API server: %v", err)
	}
}
