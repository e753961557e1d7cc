package flex

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func wantStatus(t *testing.T, err error, code codes.Code, says string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), says) {
		t.Errorf("got %v; want %s saying %q", err, code, says)
	}
}

// Only a block device under /dev is formatted, named by its resolved path.
func TestBlockDevice(t *testing.T) {
	file := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(file, []byte("not a disk"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := fmt.Sprintf("/dev/monocsi-unit-%d", os.Getpid())
	if err := os.Symlink(file, link); err != nil {
		t.Fatalf("a symlink in /dev (run as root): %v", err)
	}
	defer os.Remove(link)
	for dev, says := range map[string]string{
		link:                  "which is not under /dev",
		"/dev/null":           "not a block device",
		"/dev/monocsi-absent": "does not exist",
		"/dev/pts":            "not a block device",
	} {
		if _, err := blockDevice(dev); err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("blockDevice(%s): %v, want an error saying %q", dev, err, says)
		}
	}
	if _, err := os.Stat("/dev/loop0"); err == nil {
		if got, err := blockDevice("/dev/loop0"); err != nil || got != "/dev/loop0" {
			t.Errorf("blockDevice(/dev/loop0) = %q, %v", got, err)
		}
	}
}

// Options too large for an executable's argument are OUT_OF_RANGE, at
// CreateVolume already, and no executable runs.
func TestOptionsTooLarge(t *testing.T) {
	big := map[string]string{"blob": strings.Repeat("x", maxArg)}
	_, err := options("v", big, mountCap, false, nil)
	wantStatus(t, err, codes.OutOfRange, "more than an executable may be given")
	_, err = options("v", map[string]string{"k": "v"}, mountCap, false, map[string]string{"key": strings.Repeat("s", maxArg)})
	wantStatus(t, err, codes.OutOfRange, "volume attributes and secrets")

	marker := filepath.Join(t.TempDir(), "ran")
	d, err := New(context.Background(), Config{Name: "drv.test.flex.monocsi.io", Exe: script(t, "touch "+marker+"; echo '{\"status\":\"Success\",\"device\":\"/dev/x\"}'"), NodeID: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "v", Parameters: big, VolumeCapabilities: []*csi.VolumeCapability{mountCap}})
	wantStatus(t, err, codes.OutOfRange, "store less")
	_, err = d.ControllerPublishVolume(context.Background(), &csi.ControllerPublishVolumeRequest{VolumeId: "v", NodeId: "n1", VolumeCapability: mountCap, VolumeContext: big})
	wantStatus(t, err, codes.OutOfRange, "store less")
	for _, node := range []string{"n\x001", "n\n1", strings.Repeat("n", 300)} {
		_, err = d.ControllerPublishVolume(context.Background(), &csi.ControllerPublishVolumeRequest{VolumeId: "v", NodeId: node, VolumeCapability: mountCap, VolumeContext: map[string]string{"k": "v"}})
		wantStatus(t, err, codes.InvalidArgument, "node ID")
		_, err = d.ControllerUnpublishVolume(context.Background(), &csi.ControllerUnpublishVolumeRequest{VolumeId: "v", NodeId: node})
		wantStatus(t, err, codes.InvalidArgument, "node ID")
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("the executable ran with arguments it cannot be given")
	}
}

func TestCheckArgs(t *testing.T) {
	if err := checkArgs("mount", []string{"/target", "{}"}); err != nil {
		t.Errorf("plain arguments: %v", err)
	}
	wantStatus(t, checkArgs("mount", []string{"/t", strings.Repeat("x", maxArg+1)}), codes.OutOfRange, "argument 2 is")
	wantStatus(t, checkArgs("mount", []string{"/t\x00x"}), codes.InvalidArgument, "NUL")
	many := slices.Repeat([]string{strings.Repeat("x", maxArg)}, 10)
	wantStatus(t, checkArgs("mount", many), codes.OutOfRange, "the arguments are")
}

func TestOwnDirs(t *testing.T) {
	for exe, want := range map[string][]string{
		"/usr/libexec/kubernetes/kubelet-plugins/volume/exec/acme~nfs/nfs": {
			"/usr/libexec/kubernetes/kubelet-plugins/volume/exec/acme~nfs", "/usr/libexec/kubernetes/kubelet-plugins/volume/exec"},
		"/opt/drivers/nfs": {"/opt/drivers"},
		"/a~b/drv":         {"/a~b"},
	} {
		if got := ownDirs(exe); !slices.Equal(got, want) {
			t.Errorf("ownDirs(%s) = %q, want %q", exe, got, want)
		}
	}
}

// A target or staging path in, on or above the executable's directory is
// refused before anything runs or is created.
func TestTargetsAtTheExecutablesAreRefused(t *testing.T) {
	flexDir := t.TempDir()
	exeDir := filepath.Join(flexDir, "acme~drv")
	os.MkdirAll(exeDir, 0o755)
	exe := filepath.Join(exeDir, "drv")
	os.WriteFile(exe, []byte("#!/bin/sh\necho '{\"status\":\"Success\",\"capabilities\":{\"attach\":false}}'\n"), 0o755)
	d, err := New(context.Background(), Config{Name: "drv.acme.flex.monocsi.io", Exe: exe, NodeID: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{exeDir, filepath.Join(exeDir, "x"), flexDir, filepath.Join(flexDir, "other~drv"), filepath.Dir(flexDir)} {
		_, err := d.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{VolumeId: "v", TargetPath: target,
			VolumeCapability: mountCap, VolumeContext: map[string]string{"k": "v"}})
		wantStatus(t, err, codes.InvalidArgument, "FlexVolume directory")
		_, err = d.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: "v", TargetPath: target})
		wantStatus(t, err, codes.InvalidArgument, "FlexVolume directory")
	}
	if es, _ := os.ReadDir(flexDir); len(es) != 1 {
		t.Errorf("the FlexVolume directory changed: %v", es)
	}
}

// Arguments execve refuses although checkArgs let them through (a small
// stack limit makes the kernel's limit on all arguments 128 KiB) are still
// OUT_OF_RANGE, not INTERNAL.
func TestE2BIGIsOutOfRange(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "ran")
	d, err := New(context.Background(), Config{Name: "drv.test.flex.monocsi.io", Exe: script(t, "touch "+marker+"; echo '{\"status\":\"Success\",\"device\":\"/dev/x\"}'"), NodeID: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_STACK, &old); err != nil {
		t.Fatal(err)
	}
	small := unix.Rlimit{Cur: 256 << 10, Max: old.Max}
	if err := unix.Setrlimit(unix.RLIMIT_STACK, &small); err != nil {
		t.Fatal(err)
	}
	defer unix.Setrlimit(unix.RLIMIT_STACK, &old)
	attrs := map[string]string{"blob": strings.Repeat("x", maxArg-200)}
	_, err = d.ControllerPublishVolume(context.Background(), &csi.ControllerPublishVolumeRequest{VolumeId: "v", NodeId: "n1", VolumeCapability: mountCap, VolumeContext: attrs})
	wantStatus(t, err, codes.OutOfRange, "too long to run the executable")
	if _, err := os.Stat(marker); err == nil {
		t.Error("the executable ran")
	}
}
