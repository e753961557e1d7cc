package supervisor

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/monocsi/monocsi/driver/flex"
	"github.com/monocsi/monocsi/nodeplugin"
	"github.com/monocsi/monocsi/registrar"
)

// newDriver runs init of a test executable whose init says attach.
func newDriver(t *testing.T, name string, attach bool) *flex.Driver {
	t.Helper()
	dir := t.TempDir()
	exe := install(t, dir, "acme~drv", initReply(attach))
	d, err := flex.New(context.Background(), flex.Config{Name: name, Exe: exe, NodeID: "n1", Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !ok(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not within 10 s: %s", what)
		}
	}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// mismatches are the FlexCapabilityMismatch Events recorded.
func mismatches(t *testing.T, client *fake.Clientset) []corev1.Event {
	t.Helper()
	evs, err := client.CoreV1().Events(metav1.NamespaceDefault).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []corev1.Event
	for _, ev := range evs.Items {
		if ev.Reason == ReasonCapabilityMismatch {
			out = append(out, ev)
		}
	}
	return out
}

// csiDriverWrites are the create, update and patch calls on CSIDriver objects.
func csiDriverWrites(client *fake.Clientset) []string {
	var out []string
	for _, a := range client.Actions() {
		if a.GetResource().Resource == "csidrivers" && a.GetVerb() != "get" && a.GetVerb() != "list" && a.GetVerb() != "watch" {
			out = append(out, a.GetVerb())
		}
	}
	return out
}

// serve runs Node.Serve until the returned stop, which checks it returned nil.
func serve(t *testing.T, n *Node, name string, d *flex.Driver) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Serve(ctx, name, d) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Serve did not return within 10 s of its context ending")
		}
	}
	t.Cleanup(stop)
	return stop
}

// The node serves and registers the driver, and removes both sockets when
// it stops. It never writes the CSIDriver object: one the controller wrote
// with another attachRequired than this node's executable says gets one
// Warning Event naming the node, the driver and both values, however
// often it is read again.
func TestNodeServeMismatch(t *testing.T) {
	const name = "drv.acme.flex.monocsi.io"
	kubeletDir := t.TempDir()
	yes := true
	client := fake.NewClientset(&storagev1.CSIDriver{ObjectMeta: metav1.ObjectMeta{Name: name, UID: "uid-1"},
		Spec: storagev1.CSIDriverSpec{AttachRequired: &yes}})
	n := &Node{KubeletDir: kubeletDir, NodeID: "node-a", Client: client, Recheck: 20 * time.Millisecond}
	stop := serve(t, n, name, newDriver(t, name, false))

	sock, regSock := nodeplugin.SocketPath(kubeletDir, name), registrar.SocketPath(kubeletDir, name)
	eventually(t, "CSI and registration sockets", func() bool { return exists(sock) && exists(regSock) })
	eventually(t, "a mismatch Event", func() bool { return len(mismatches(t, client)) > 0 })
	time.Sleep(200 * time.Millisecond) // about ten rechecks
	evs := mismatches(t, client)
	if len(evs) != 1 {
		t.Fatalf("%d mismatch Events, want 1: %+v", len(evs), evs)
	}
	ev := evs[0]
	if ev.Type != corev1.EventTypeWarning || ev.InvolvedObject.Kind != "CSIDriver" || ev.InvolvedObject.Name != name || ev.InvolvedObject.UID != "uid-1" {
		t.Errorf("Event %+v: want a Warning on CSIDriver %s", ev, name)
	}
	for _, says := range []string{"node-a", name, "attach false", "attachRequired true"} {
		if !strings.Contains(ev.Message, says) {
			t.Errorf("Event message %q does not say %q", ev.Message, says)
		}
	}
	if w := csiDriverWrites(client); len(w) > 0 {
		t.Errorf("the node wrote the CSIDriver object: %v", w)
	}

	stop()
	if exists(sock) || exists(regSock) {
		t.Errorf("sockets left after stopping: %s %v, %s %v", sock, exists(sock), regSock, exists(regSock))
	}
}

// A node whose executable agrees with the object records nothing; one
// that finds no object waits for the controller to write it, without
// writing it, and checks it then.
func TestNodeCheckWaitsForController(t *testing.T) {
	const name = "drv.acme.flex.monocsi.io"
	client := fake.NewClientset()
	agree := &Node{KubeletDir: t.TempDir(), NodeID: "node-a", Client: client, Recheck: 20 * time.Millisecond}
	disagree := &Node{KubeletDir: t.TempDir(), NodeID: "node-b", Client: client, Recheck: 20 * time.Millisecond}
	serve(t, agree, name, newDriver(t, name, true))
	serve(t, disagree, name, newDriver(t, name, false))
	time.Sleep(300 * time.Millisecond)
	if w := csiDriverWrites(client); len(w) > 0 {
		t.Fatalf("a node wrote the CSIDriver object: %v", w)
	}

	// The controller's executable says attach.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	KeepCSIDriver(ctx, client, name, newDriver(t, name, true))
	obj, err := client.StorageV1().CSIDrivers().Get(ctx, name, metav1.GetOptions{})
	if err != nil || obj.Spec.AttachRequired == nil || !*obj.Spec.AttachRequired || obj.Spec.PodInfoOnMount == nil || !*obj.Spec.PodInfoOnMount {
		t.Fatalf("CSIDriver after KeepCSIDriver: %+v, %v", obj, err)
	}
	// A missing object is looked for again within seconds.
	eventually(t, "node-b's mismatch Event", func() bool { return len(mismatches(t, client)) > 0 })
	time.Sleep(200 * time.Millisecond)
	evs := mismatches(t, client)
	if len(evs) != 1 || !strings.Contains(evs[0].Message, "node-b") || evs[0].Source.Host != "node-b" {
		t.Errorf("mismatch Events %+v: want one, from node-b", evs)
	}
}

// A socket that cannot be served is an error, so that the supervisor
// starts the driver anew at the next rescan.
func TestNodeServeFails(t *testing.T) {
	const name = "drv.acme.flex.monocsi.io"
	kubeletDir := t.TempDir()
	// plugins/<name> is a file: the socket's directory cannot be made.
	if err := os.MkdirAll(filepath.Join(kubeletDir, "plugins"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(kubeletDir, "plugins", name), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	n := &Node{KubeletDir: kubeletDir, NodeID: "node-a"}
	errc := make(chan error, 1)
	go func() { errc <- n.Serve(context.Background(), name, newDriver(t, name, false)) }()
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("Serve: %v, want an error naming the driver", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve of a socket that cannot be made did not fail")
	}
	if exists(registrar.SocketPath(kubeletDir, name)) {
		t.Error("registered a driver whose socket failed")
	}
}
