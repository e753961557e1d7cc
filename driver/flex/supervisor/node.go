package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/monocsi/monocsi/driver/flex"
	"github.com/monocsi/monocsi/nodeplugin"
	"github.com/monocsi/monocsi/registrar"
)

// ReasonCapabilityMismatch is the reason of the Warning Event a node records
// on a FlexVolume driver's CSIDriver object when its executable's init
// disagrees with the object on attach.
const ReasonCapabilityMismatch = "FlexCapabilityMismatch"

// Node serves FlexVolume drivers to the kubelet of one node.
type Node struct {
	KubeletDir string
	NodeID     string
	// Client reads each driver's CSIDriver object, which only the
	// controller role writes, and records an Event when the node's
	// executable disagrees with it; nil checks nothing.
	Client kubernetes.Interface
	// Recheck is how often an existing CSIDriver object is read again
	// (5 minutes when zero); a missing one is looked for from every second
	// to every minute.
	Recheck time.Duration
}

// socketWait bounds the wait for a driver's socket before registering it.
const socketWait = 10 * time.Second

// Serve is a StartFunc: it serves the driver's CSI socket and, once the
// socket is there (the kubelet connects right away), registers it with the
// kubelet, until ctx ends; it returns when the sockets are gone and the
// kubelet forgets the driver. A socket that cannot be served is an error:
// the driver is started again at the next rescan.
func (n *Node) Serve(ctx context.Context, name string, d *flex.Driver) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	sock := nodeplugin.SocketPath(n.KubeletDir, name)
	served := make(chan error, 1)
	wg.Go(func() { served <- nodeplugin.Serve(ctx, sock, name, d, false) })
	if err := waitSocket(ctx, sock, served); err != nil {
		return fmt.Errorf("FlexVolume driver %s: %w", name, err)
	}
	reg := &registrar.Registrar{Driver: name, Endpoint: sock, Socket: registrar.SocketPath(n.KubeletDir, name),
		OnFailure: func(err error) { klog.ErrorS(err, "The kubelet rejected a FlexVolume driver", "driver", name) }}
	wg.Go(func() {
		if err := reg.Run(ctx); err != nil {
			klog.ErrorS(err, "FlexVolume driver registration failed", "driver", name)
		}
	})
	if n.Client != nil {
		wg.Go(func() { n.check(ctx, name, d.Attach()) })
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-served:
		if err == nil {
			err = errors.New("stopped serving")
		}
		return fmt.Errorf("FlexVolume driver %s: %w", name, err)
	}
}

// waitSocket waits until the socket exists, the server ended, or ctx ended.
func waitSocket(ctx context.Context, sock string, served <-chan error) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(socketWait)
	for {
		if _, err := os.Stat(sock); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-served:
			if err == nil {
				err = errors.New("stopped serving")
			}
			return err
		case <-deadline:
			return fmt.Errorf("socket %s did not appear within %s", sock, socketWait)
		case <-tick.C:
		}
	}
}

// check reads the driver's CSIDriver object until ctx ends. The node never
// writes it (the controller role does, from the executable on its node):
// when the object disagrees with this node's executable on attach, the
// node records a Warning Event on the object, once per disagreement.
func (n *Node) check(ctx context.Context, name string, attach bool) {
	recheck := n.Recheck
	if recheck <= 0 {
		recheck = 5 * time.Minute
	}
	var reported string // the disagreement last recorded
	missingLogged := false
	backoff := time.Second
	for {
		wait := backoff
		obj, err := n.Client.StorageV1().CSIDrivers().Get(ctx, name, metav1.GetOptions{})
		switch {
		case ctx.Err() != nil:
			return
		case apierrors.IsNotFound(err):
			if !missingLogged {
				klog.InfoS("No CSIDriver object for a FlexVolume driver yet: the controller role writes it, from the executable in its --flex-dir", "driver", name)
				missingLogged = true
			}
			backoff = min(2*backoff, time.Minute)
		case err != nil:
			klog.ErrorS(err, "Cannot read the CSIDriver object of a FlexVolume driver; retrying", "driver", name, "in", backoff)
			backoff = min(2*backoff, time.Minute)
		default:
			missingLogged, backoff, wait = false, time.Second, recheck
			// Left out, attachRequired is true (the API server's default).
			objAttach := obj.Spec.AttachRequired == nil || *obj.Spec.AttachRequired
			if objAttach == attach {
				reported = ""
				break
			}
			key := fmt.Sprintf("%s/%v", obj.UID, objAttach)
			if key == reported {
				break
			}
			klog.ErrorS(nil, "This node's FlexVolume executable disagrees with the CSIDriver object; recording an Event (only the controller role writes the object)",
				"driver", name, "node", n.NodeID, "attach", attach, "attachRequired", objAttach)
			ev := mismatchEvent(obj, n.NodeID, attach, objAttach)
			if _, err := n.Client.CoreV1().Events(ev.Namespace).Create(ctx, ev, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				klog.ErrorS(err, "Cannot record an Event", "driver", name, "reason", ReasonCapabilityMismatch)
				wait = backoff
				break
			}
			reported = key
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// mismatchEvent is the Warning Event on a CSIDriver object whose
// attachRequired disagrees with a node's executable. A cluster-scoped
// object's Events live in the default namespace.
func mismatchEvent(obj *storagev1.CSIDriver, nodeID string, exeAttach, objAttach bool) *corev1.Event {
	now := metav1.Now()
	return &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s.%x", obj.Name, now.UnixNano()), Namespace: metav1.NamespaceDefault},
		InvolvedObject: corev1.ObjectReference{APIVersion: "storage.k8s.io/v1", Kind: "CSIDriver",
			Name: obj.Name, UID: obj.UID, ResourceVersion: obj.ResourceVersion},
		Type:   corev1.EventTypeWarning,
		Reason: ReasonCapabilityMismatch,
		Message: fmt.Sprintf("node %s: the FlexVolume executable of driver %s says attach %v (init's capabilities.attach), the CSIDriver object says attachRequired %v; "+
			"the node does not write it (the controller role does, from the executable on its node): install the same executable on every node",
			nodeID, obj.Name, exeAttach, objAttach),
		Source:         corev1.EventSource{Component: "monocsi-node", Host: nodeID},
		FirstTimestamp: now,
		LastTimestamp:  now,
		Count:          1,
	}
}
