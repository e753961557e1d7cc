// Package nodeplugin serves drivers' CSI gRPC APIs on Unix sockets: on the
// node, Identity + Node (and Controller for node-local drivers) of every
// enabled driver on <kubelet-dir>/plugins/<driver>/csi.sock, where the kubelet
// finds them; for `monocsi serve`, one driver's whole API on any endpoint.
package nodeplugin

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the codec requestCodec wraps
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"k8s.io/klog/v2"

	"github.com/monocsi/monocsi/driver"
	"github.com/monocsi/monocsi/internal/endpoint"
)

// Plugin is a driver as the node serves it.
type Plugin struct {
	Name   string
	Driver driver.Driver
	// NodeLocal drivers also serve their Controller API on the node: their
	// volumes can only be created where they live.
	NodeLocal bool
}

// SocketPath is where the kubelet expects a driver's CSI socket.
func SocketPath(kubeletDir, driverName string) string {
	return filepath.Join(kubeletDir, "plugins", driverName, "csi.sock")
}

// Run serves every plugin on its kubelet socket until ctx is done; the first
// server that fails stops them all.
func Run(ctx context.Context, kubeletDir string, plugins []Plugin) error {
	g, ctx := errgroup.WithContext(ctx)
	for _, p := range plugins {
		g.Go(func() error { return Serve(ctx, SocketPath(kubeletDir, p.Name), p.Name, p.Driver, p.NodeLocal) })
	}
	return g.Wait()
}

// Serve serves d on the Unix socket at path until ctx is done, then stops
// gracefully and removes the socket. withController adds the Controller API.
func Serve(ctx context.Context, path, name string, d driver.Driver, withController bool) error {
	l, err := endpoint.Listen(path, 0o660)
	if err != nil {
		return fmt.Errorf("driver %s: %w", name, err)
	}
	srv := grpc.NewServer(grpc.ForceServerCodecV2(requestCodec{}), grpc.UnaryInterceptor(logCalls(name)))
	csi.RegisterIdentityServer(srv, d)
	csi.RegisterNodeServer(srv, d)
	if withController {
		csi.RegisterControllerServer(srv, d)
	}
	klog.InfoS("Serving CSI driver", "driver", name, "socket", path, "controller", withController)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		stopGracefully(srv, 10*time.Second)
		err = <-done
	}
	_ = endpoint.RemoveStale(path)
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("driver %s: serve %s: %w", name, path, err)
	}
	return nil
}

// stopGracefully lets running calls finish (a mount in progress should not be
// cut in half), but no longer than limit.
func stopGracefully(srv *grpc.Server, limit time.Duration) {
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(limit):
		srv.Stop()
	}
}

// logCalls logs every call with its duration and result; requests, with
// secrets stripped, at higher verbosity.
func logCalls(driverName string) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if bad, ok := undecodable.LoadAndDelete(req); ok {
			err := status.Errorf(codes.InvalidArgument, "the request is not a valid %s message: %v", info.FullMethod, bad)
			klog.ErrorS(nil, "CSI call refused", "driver", driverName, "method", info.FullMethod, "error", status.Convert(err).Message())
			return nil, err
		}
		klog.V(5).InfoS("CSI request", "driver", driverName, "method", info.FullMethod, "request", protosanitizer.StripSecrets(req))
		start := time.Now()
		resp, err := handler(ctx, req)
		took := time.Since(start)
		if err != nil {
			klog.ErrorS(nil, "CSI call failed", "driver", driverName, "method", info.FullMethod,
				"duration", took, "code", status.Code(err), "error", status.Convert(err).Message())
			return resp, err
		}
		klog.V(verbosity(info.FullMethod)).InfoS("CSI call", "driver", driverName, "method", info.FullMethod, "duration", took)
		klog.V(5).InfoS("CSI response", "driver", driverName, "method", info.FullMethod, "response", protosanitizer.StripSecrets(resp))
		return resp, nil
	}
}

// requestCodec is gRPC's protobuf codec, except that a request which does
// not decode (a string field that is not UTF-8, a malformed message: what a
// client outside Go can send) is INVALID_ARGUMENT naming why, where gRPC
// answers INTERNAL. gRPC turns any error of the codec into INTERNAL before
// the interceptor runs, so the codec records the failure against the
// (reset) request value and logCalls, which gets that same value, refuses
// the call before any driver sees it.
type requestCodec struct{}

// undecodable maps a request value that failed to decode to the error.
var undecodable sync.Map

func (requestCodec) Marshal(v any) (mem.BufferSlice, error) { return protoCodec().Marshal(v) }

func (requestCodec) Unmarshal(data mem.BufferSlice, v any) error {
	err := protoCodec().Unmarshal(data, v)
	if m, ok := v.(proto.Message); ok && err != nil {
		proto.Reset(m)
		undecodable.Store(v, err)
		return nil
	}
	return err
}

func (requestCodec) Name() string { return "proto" }

func protoCodec() encoding.CodecV2 { return encoding.GetCodecV2("proto") }

// verbosity keeps the calls that health checks and the kubelet repeat all day
// out of the default log.
func verbosity(method string) klog.Level {
	switch method {
	case csi.Identity_Probe_FullMethodName, csi.Identity_GetPluginInfo_FullMethodName,
		csi.Node_NodeGetCapabilities_FullMethodName, csi.Node_NodeGetVolumeStats_FullMethodName:
		return 4
	}
	return 2
}
