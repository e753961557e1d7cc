// Package registrar plays node-driver-registrar's part in-process: for each
// driver it serves the kubelet's plugin-registration API on
// <kubelet-dir>/plugins_registry/<driver>-reg.sock, so the kubelet's plugin
// watcher finds the driver, and re-creates the socket when it disappears.
package registrar

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"k8s.io/klog/v2"
	regapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/monocsi/monocsi/internal/endpoint"
)

// SocketPath is where the kubelet's plugin watcher looks for a driver's
// registration socket.
func SocketPath(kubeletDir, driverName string) string {
	return filepath.Join(kubeletDir, "plugins_registry", driverName+"-reg.sock")
}

// Registrar registers one CSI driver with the kubelet.
type Registrar struct {
	regapi.UnimplementedRegistrationServer

	Driver string // CSI driver name
	// Endpoint is the driver's CSI socket path as the kubelet sees it.
	Endpoint string
	// Socket is the registration socket's path.
	Socket string
	// OnFailure is called when the kubelet reports that registration failed;
	// the node role exits so that the pod restarts, as node-driver-registrar does.
	OnFailure func(error)
	// Check is how often the socket's presence is checked; 1 s when zero.
	Check time.Duration
}

// GetInfo tells the kubelet what the plugin is and where its CSI socket is.
func (r *Registrar) GetInfo(context.Context, *regapi.InfoRequest) (*regapi.PluginInfo, error) {
	klog.V(2).InfoS("Kubelet asked for plugin info", "driver", r.Driver)
	return &regapi.PluginInfo{
		Type:              regapi.CSIPlugin,
		Name:              r.Driver,
		Endpoint:          r.Endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

// NotifyRegistrationStatus receives the kubelet's verdict.
func (r *Registrar) NotifyRegistrationStatus(_ context.Context, st *regapi.RegistrationStatus) (*regapi.RegistrationStatusResponse, error) {
	if st.PluginRegistered {
		klog.InfoS("Kubelet registered the driver", "driver", r.Driver)
		return &regapi.RegistrationStatusResponse{}, nil
	}
	err := fmt.Errorf("kubelet failed to register driver %s: %s", r.Driver, st.Error)
	klog.ErrorS(err, "Registration failed")
	if r.OnFailure != nil {
		r.OnFailure(err)
	}
	return &regapi.RegistrationStatusResponse{}, nil
}

// Run serves the registration socket until ctx is done. When the socket file
// is removed or replaced (a kubelet restart may wipe plugins_registry), it is
// created again, which makes the kubelet register the driver anew.
func (r *Registrar) Run(ctx context.Context) error {
	every := r.Check
	if every == 0 {
		every = time.Second
	}
	for {
		srv, fi, err := r.listen()
		if err != nil {
			return err
		}
		if !r.waitWhilePresent(ctx, fi, every) {
			srv.Stop()
			_ = endpoint.RemoveStale(r.Socket)
			return nil
		}
		srv.Stop()
		klog.InfoS("Registration socket disappeared; creating it again", "driver", r.Driver, "socket", r.Socket)
	}
}

func (r *Registrar) listen() (*grpc.Server, os.FileInfo, error) {
	l, err := endpoint.Listen(r.Socket, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("registration socket for %s: %w", r.Driver, err)
	}
	fi, err := os.Stat(r.Socket)
	if err != nil {
		l.Close()
		return nil, nil, err
	}
	srv := grpc.NewServer()
	regapi.RegisterRegistrationServer(srv, r)
	go func(l net.Listener) { _ = srv.Serve(l) }(l)
	klog.InfoS("Serving kubelet registration", "driver", r.Driver, "socket", r.Socket, "endpoint", r.Endpoint)
	return srv, fi, nil
}

// waitWhilePresent returns false when ctx is done and true as soon as the
// socket file is no longer the one that was created.
func (r *Registrar) waitWhilePresent(ctx context.Context, created os.FileInfo, every time.Duration) bool {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			if fi, err := os.Stat(r.Socket); err != nil || !os.SameFile(fi, created) {
				return true
			}
		}
	}
}

// Healthy reports an error when the registration socket is missing.
func (r *Registrar) Healthy() error {
	fi, err := os.Stat(r.Socket)
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s is not a socket", r.Socket)
	}
	return nil
}
