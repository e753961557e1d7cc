package nodeplugin

import (
	"context"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
)

// stub counts the unpublish calls that reach it.
type stub struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer
	unpublished atomic.Int32
}

func (s *stub) NodeUnpublishVolume(context.Context, *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	s.unpublished.Add(1)
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// rawCodec sends bytes as they are: what a client outside Go may send.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

func (rawCodec) Name() string { return "proto" }

// A request that does not decode is INVALID_ARGUMENT, not gRPC's INTERNAL,
// and never reaches the driver.
func TestUndecodableRequests(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "csi.sock")
	d := &stub{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, sock, "stub.test", d, false) }()
	defer func() { cancel(); <-done }()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	call := func(req []byte) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var resp []byte
		return conn.Invoke(ctx, csi.Node_NodeUnpublishVolume_FullMethodName, &req, &resp,
			grpc.ForceCodecV2(rawCodec{}), grpc.WaitForReady(true))
	}
	// volume_id (1) "v", target_path (2) "/t".
	if err := call([]byte{0x0a, 1, 'v', 0x12, 2, '/', 't'}); err != nil {
		t.Fatalf("a valid request: %v", err)
	}
	for what, req := range map[string][]byte{
		"target path not UTF-8":  {0x0a, 1, 'v', 0x12, 2, '/', 0xff},
		"volume ID not UTF-8":    {0x0a, 2, 0xc3, 0x28, 0x12, 2, '/', 't'},
		"truncated field":        {0x0a, 10, 'v'},
		"truncated varint":       {0x0a, 0x80},
		"unknown wire type (7)":  {0x0f},
		"field number 0":         {0x02, 0},
		"length past the end":    {0x12, 0x7f, '/'},
		"group end without open": {0x0c},
	} {
		err := call(req)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "not a valid") {
			t.Errorf("%s: %v, want InvalidArgument saying the request is not valid", what, err)
		}
	}
	if n := d.unpublished.Load(); n != 1 {
		t.Errorf("the driver got %d calls, want only the valid one", n)
	}
	left := 0
	undecodable.Range(func(any, any) bool { left++; return true })
	if left != 0 {
		t.Errorf("%d refused requests still remembered", left)
	}
}
