package flex

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// script writes an executable FlexVolume driver whose init succeeds and whose
// other commands run body.
func script(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "drv")
	s := "#!/bin/sh\nif [ \"$1\" = init ]; then echo '{\"status\":\"Success\",\"capabilities\":{\"attach\":true}}'; exit 0; fi\n" + body + "\n"
	if err := os.WriteFile(p, []byte(s), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

var mountCap = &csi.VolumeCapability{
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
}

// Executables that fail, hang, print garbage or too much: each is a clear
// gRPC error naming the driver and the command, within the timeout.
func TestMisbehavingExecutables(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		code       codes.Code
		says       string
	}{
		{"failure", `echo '{"status":"Failure","message":"disk on fire"}'; exit 1`, codes.Internal, "attach: disk on fire"},
		{"failure with a code", `echo '{"status":"Failure","message":"no such volume","code":"NotFound"}'; exit 1`, codes.NotFound, "no such volume"},
		{"exit without output", `echo oops >&2; exit 3`, codes.Internal, "exit status 3"},
		{"garbage", `echo 'this is not json'`, codes.Internal, "not JSON"},
		{"two replies", `echo '{"status":"Success","device":"/dev/x"}{"status":"Failure"}'`, codes.Internal, "more than one JSON value"},
		{"unknown status", `echo '{"status":"Maybe"}'`, codes.Internal, `unknown status "Maybe"`},
		{"success with a bad exit", `echo '{"status":"Success","device":"/dev/x"}'; exit 1`, codes.Internal, "said Success"},
		{"huge output", `head -c 10000000 /dev/zero | tr '\0' 'x'`, codes.Internal, "output exceeds"},
		{"hang", `sleep 60`, codes.DeadlineExceeded, "no answer within 1s"},
		{"hang holding stdout in a child", `(sleep 60 &) ; sleep 60`, codes.DeadlineExceeded, "no answer within 1s"},
		{"device outside /dev", `echo '{"status":"Success","device":"/etc/passwd"}'`, codes.Internal, "not a path under /dev"},
		{"device with a comma", `echo '{"status":"Success","device":"/dev/x,ro"}'`, codes.Internal, "not a path under /dev"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := New(context.Background(), Config{Name: "drv.test.flex.monocsi.io", Exe: script(t, tc.body), NodeID: "n1", Timeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			_, err = d.ControllerPublishVolume(context.Background(), &csi.ControllerPublishVolumeRequest{
				VolumeId: "v1", NodeId: "n1", VolumeCapability: mountCap, VolumeContext: map[string]string{"k": "v"}})
			took := time.Since(start)
			if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.says) {
				t.Errorf("got %v; want %s saying %q", err, tc.code, tc.says)
			}
			if msg := status.Convert(err).Message(); !strings.Contains(msg, "drv.test.flex.monocsi.io") || !strings.Contains(msg, "attach") {
				t.Errorf("the error must name the driver and the command: %q", msg)
			}
			if took > 5*time.Second {
				t.Errorf("took %s with a 1s timeout", took)
			}
		})
	}
}

// init decides attach; left out, attach is true (the kubelet's default).
func TestInitCapabilities(t *testing.T) {
	for reply, want := range map[string]bool{
		`{"status":"Success"}`:                                 true,
		`{"status":"Success","capabilities":{}}`:               true,
		`{"status":"Success","capabilities":{"attach":false}}`: false,
	} {
		p := filepath.Join(t.TempDir(), "drv")
		os.WriteFile(p, []byte("#!/bin/sh\necho '"+reply+"'\n"), 0o755)
		d, err := New(context.Background(), Config{Name: "drv.test.flex.monocsi.io", Exe: p, NodeID: "n1"})
		if err != nil || d.Attach() != want {
			t.Errorf("init %s: attach %v, %v; want %v", reply, d != nil && d.Attach(), err, want)
		}
	}
	p := filepath.Join(t.TempDir(), "drv")
	os.WriteFile(p, []byte("#!/bin/sh\necho '{\"status\":\"Failure\",\"message\":\"missing tool\"}'\nexit 1\n"), 0o755)
	if _, err := New(context.Background(), Config{Name: "drv.test.flex.monocsi.io", Exe: p, NodeID: "n1"}); err == nil || !strings.Contains(err.Error(), "missing tool") {
		t.Errorf("a failing init: %v", err)
	}
}

func TestCSIName(t *testing.T) {
	for dir, want := range map[string]string{
		"monocsi~loopdev": "loopdev.monocsi.flex.monocsi.io",
		"Acme_Corp~NFS":   "nfs.acme-corp.flex.monocsi.io",
	} {
		if got, err := CSIName(dir); err != nil || got != want {
			t.Errorf("CSIName(%q) = %q, %v; want %q", dir, got, err, want)
		}
	}
	for _, dir := range []string{"novendor", "~x", "x~", "a~b~c", "v~" + strings.Repeat("x", 60)} {
		if _, err := CSIName(dir); err == nil {
			t.Errorf("CSIName(%q) accepted", dir)
		}
	}
}

// The kubelet's keys cannot be forged through volume attributes, pod info
// and secrets arrive as the executables expect them.
func TestOptions(t *testing.T) {
	got, err := options("pv-1", map[string]string{"server": "s", "csi.storage.k8s.io/pod.name": "p", "csi.storage.k8s.io/ephemeral": "true"},
		mountCap, true, map[string]string{"password": "hunter2"})
	want := `{"kubernetes.io/fsType":"ext4","kubernetes.io/pod.name":"p","kubernetes.io/pvOrVolumeName":"pv-1","kubernetes.io/readwrite":"ro","kubernetes.io/secret/password":"aHVudGVyMg==","server":"s"}`
	if err != nil || got != want {
		t.Errorf("options = %s, %v\nwant %s", got, err, want)
	}
	if _, err := options("pv-1", map[string]string{"kubernetes.io/pod.name": "other"}, mountCap, false, nil); status.Code(err) != codes.InvalidArgument {
		t.Errorf("a forged kubelet key: %v", err)
	}
}
