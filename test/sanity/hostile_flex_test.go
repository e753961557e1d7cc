package sanity

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/monocsi/monocsi/test/testbin"
)

// hostileFlexScript is an attaching FlexVolume driver that attaches
// nothing: attach answers the device named by the option "dev",
// waitforattach the one named by "wfa" or else the one it was given, and
// mountdevice and mount are "Not supported", so monocsi's default (format
// the device when blank, mount it) does the work. Whatever device a caller
// names, monocsi alone decides what is formatted.
const hostileFlexScript = `#!/bin/sh
opt() { printf '%s' "$1" | sed -n "s/.*\"$2\":\"\([^\"]*\)\".*/\1/p"; }
case "$1" in
init) echo '{"status":"Success","capabilities":{"attach":true}}' ;;
attach) echo "{\"status\":\"Success\",\"device\":\"$(opt "$2" dev)\"}" ;;
waitforattach) d=$(opt "$3" wfa); [ -n "$d" ] || d=$2; echo "{\"status\":\"Success\",\"device\":\"$d\"}" ;;
detach) echo '{"status":"Success"}' ;;
*) echo '{"status":"Not supported"}' ;;
esac
`

// serveFlexScript installs script as <dir>/flex/<vendor~drv>/<drv> and starts
// `monocsi serve --driver=flex` for it.
func serveFlexScript(t *testing.T, driverDir, script string) (sock, dir, exe string) {
	requireRoot(t)
	dir = realTempDir(t)
	_, drv, _ := strings.Cut(driverDir, "~")
	exe = filepath.Join(mustMkdir(t, filepath.Join(dir, "flex", driverDir)), drv)
	if err := os.WriteFile(exe, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	sock = filepath.Join(dir, "csi.sock")
	testbin.StartEnv(t, []string{"NODE_NAME=sanity-node"}, "serve", "--driver=flex", "--flex-dir="+filepath.Join(dir, "flex"),
		"--flex-driver="+driverDir, "--endpoint=unix://"+sock, "--node-id=sanity-node", "--flex-timeout=30s", "--v=4")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	testbin.WaitForSocket(ctx, t, sock)
	return sock, dir, exe
}

// devLink creates /dev/monocsi-hostile-<pid>-<n> -> to, removed at the end.
func devLink(t *testing.T, to string) string {
	t.Helper()
	devLinks++
	link := fmt.Sprintf("/dev/monocsi-hostile-%d-%d", os.Getpid(), devLinks)
	os.Remove(link)
	mustSymlink(t, to, link)
	t.Cleanup(func() { os.Remove(link) })
	return link
}

var devLinks int

// loopDevice sets up a loop device over a blank file of its own (outside
// the canary), released at the end.
func loopDevice(t *testing.T) (dev, file string) {
	t.Helper()
	file = filepath.Join(realTempDir(t), "blank.img")
	if err := os.WriteFile(file, make([]byte, 8<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "-f", "--show", file).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	dev = strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	return dev, file
}

func allZero(t *testing.T, file string) bool {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return len(bytes.Trim(b, "\x00")) == 0
}

// TestHostileFlex aims at what the flex adapter itself does with a
// request: the device it formats and mounts by default (symlinks under /dev
// to files, directories, character devices, missing devices, a blank
// device and a filesystem type it cannot make), targets and staging paths
// at the FlexVolume directory, and options, secrets and node IDs no
// executable can be given. Each case checks the code, the canary tree, the
// mounts and the processes (runHostile).
func TestHostileFlex(t *testing.T) {
	sock, dir, exe := serveFlexScript(t, "monocsi~hostile", hostileFlexScript)
	conn := dial(t, sock)
	ctl, node := csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	ctx := context.Background()
	c := newCanary(t)
	pods := realTempDir(t)
	flexDir, exeDir := filepath.Join(dir, "flex"), filepath.Dir(exe)
	attrs := map[string]string{"kind": "hostile"}
	fs := func(fsType string, mode csi.VolumeCapability_AccessMode_Mode, flags ...string) *csi.VolumeCapability {
		return &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType, MountFlags: flags}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode}}
	}
	ext4 := fs("ext4", csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	var staging string // the case's staging path
	stageWith := func(t *testing.T, device string, vc *csi.VolumeCapability, volAttrs map[string]string) error {
		staging = filepath.Join(caseDir(t, pods), "globalmount")
		_, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "vol-a", StagingTargetPath: staging, VolumeCapability: vc,
			VolumeContext: volAttrs, PublishContext: map[string]string{"device": device}})
		return err
	}
	stage := func(t *testing.T, device string) error { return stageWith(t, device, ext4, attrs) }
	noStaging := func(t *testing.T) {
		if _, err := os.Lstat(staging); !os.IsNotExist(err) {
			t.Errorf("a refused stage left its staging path %s: %v", staging, err)
		}
	}
	publishAt := func(target string) error {
		_, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "vol-a", TargetPath: target,
			StagingTargetPath: filepath.Join(pods, "unstaged"), VolumeCapability: ext4, VolumeContext: attrs})
		return err
	}
	exeBefore, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	exeIntact := func(t *testing.T) {
		if b, err := os.ReadFile(exe); err != nil || !bytes.Equal(b, exeBefore) {
			t.Errorf("the executable changed: %v", err)
		}
		if es, _ := os.ReadDir(exeDir); len(es) != 1 {
			t.Errorf("the driver directory holds %d entries, want 1", len(es))
		}
	}
	var blankFile string
	blank := func(t *testing.T) string { dev, file := loopDevice(t); blankFile = file; return dev }
	stillBlank := func(t *testing.T) {
		noStaging(t)
		if !allZero(t, blankFile) {
			t.Errorf("the blank device was written to")
		}
	}
	big := strings.Repeat("x", 200<<10)

	cases := []hostileCase{
		{name: "stage a /dev symlink to a regular file", codes: []codes.Code{codes.FailedPrecondition}, run: func(t *testing.T) error {
			return stage(t, devLink(t, c.path("disk.img")))
		}, after: noStaging},
		{name: "stage a /dev symlink to a directory", codes: []codes.Code{codes.FailedPrecondition}, run: func(t *testing.T) error {
			return stage(t, devLink(t, c.path("void")))
		}, after: noStaging},
		{name: "stage a /dev symlink to a symlink to a regular file", codes: []codes.Code{codes.FailedPrecondition}, run: func(t *testing.T) error {
			return stage(t, devLink(t, devLink(t, c.path("precious"))))
		}, after: noStaging},
		{name: "stage a character device", codes: []codes.Code{codes.FailedPrecondition}, run: func(t *testing.T) error {
			return stage(t, "/dev/null")
		}, after: noStaging},
		{name: "stage a device that does not exist", codes: []codes.Code{codes.FailedPrecondition}, run: func(t *testing.T) error {
			return stage(t, fmt.Sprintf("/dev/monocsi-absent-%d", os.Getpid()))
		}, after: noStaging},
		{name: "stage a device path with ..", run: func(t *testing.T) error {
			return stage(t, "/dev/.."+c.path("disk.img"))
		}, after: noStaging},
		{name: "stage a device outside /dev", run: func(t *testing.T) error {
			return stage(t, c.path("disk.img"))
		}, after: noStaging},
		{name: "stage a device with a mount option in it", run: func(t *testing.T) error {
			return stage(t, "/dev/loop0,ro")
		}, after: noStaging},
		{name: "stage a device path longer than a path", run: func(t *testing.T) error {
			return stage(t, "/dev/"+strings.Repeat("d", 5000))
		}, after: noStaging},
		{name: "stage what waitforattach names: a /dev symlink to a regular file", codes: []codes.Code{codes.FailedPrecondition}, run: func(t *testing.T) error {
			return stageWith(t, "/dev/null", ext4, map[string]string{"wfa": devLink(t, c.path("disk.img"))})
		}, after: noStaging},
		{name: "stage a blank device as a filesystem without mkfs", codes: []codes.Code{codes.FailedPrecondition}, run: func(t *testing.T) error {
			return stageWith(t, blank(t), fs("nosuchfs", csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER), attrs)
		}, after: stillBlank},
		{name: "stage a blank device read-only", codes: []codes.Code{codes.FailedPrecondition}, run: func(t *testing.T) error {
			return stageWith(t, blank(t), fs("ext4", csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY), attrs)
		}, after: stillBlank},
		{name: "stage with an fsType that is a path", run: func(t *testing.T) error {
			return stageWith(t, blank(t), fs("../../../tmp/x", csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER), attrs)
		}, after: stillBlank},
		{name: "stage with an fsType holding a shell word", run: func(t *testing.T) error {
			return stageWith(t, blank(t), fs("ext4;reboot", csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER), attrs)
		}, after: stillBlank},
		{name: "stage with two mount options in one flag", run: func(t *testing.T) error {
			return stageWith(t, blank(t), fs("ext4", csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "ro,exec"), attrs)
		}, after: stillBlank},
		{name: "stage with volume attributes too large for an argument", codes: []codes.Code{codes.OutOfRange}, run: func(t *testing.T) error {
			return stageWith(t, "/dev/null", ext4, map[string]string{"blob": big})
		}, after: noStaging},
		{name: "stage in the driver's directory", run: func(t *testing.T) error {
			staging = filepath.Join(exeDir, "globalmount")
			_, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "vol-a", StagingTargetPath: staging, VolumeCapability: ext4,
				VolumeContext: attrs, PublishContext: map[string]string{"device": "/dev/null"}})
			return err
		}, after: exeIntact},
		{name: "unstage the driver's directory", run: func(t *testing.T) error {
			_, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: "vol-a", StagingTargetPath: exeDir})
			return err
		}, after: exeIntact},
		{name: "publish in the driver's directory", run: func(t *testing.T) error {
			return publishAt(filepath.Join(exeDir, "target"))
		}, after: exeIntact},
		{name: "publish at the driver's directory", run: func(t *testing.T) error {
			return publishAt(exeDir)
		}, after: exeIntact},
		{name: "publish at another driver's directory in the FlexVolume directory", run: func(t *testing.T) error {
			return publishAt(filepath.Join(flexDir, "acme~other"))
		}, after: func(t *testing.T) {
			if _, err := os.Lstat(filepath.Join(flexDir, "acme~other")); !os.IsNotExist(err) {
				t.Errorf("a driver directory was created: %v", err)
			}
		}},
		{name: "publish at the FlexVolume directory", run: func(t *testing.T) error {
			return publishAt(flexDir)
		}, after: exeIntact},
		{name: "publish above the FlexVolume directory", run: func(t *testing.T) error {
			return publishAt(dir)
		}, after: exeIntact},
		{name: "unpublish the driver's directory", run: func(t *testing.T) error {
			_, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "vol-a", TargetPath: exeDir})
			return err
		}, after: exeIntact},
		{name: "publish with secrets too large for an argument", codes: []codes.Code{codes.OutOfRange}, run: func(t *testing.T) error {
			_, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "vol-a", TargetPath: filepath.Join(caseDir(t, pods), "target"),
				StagingTargetPath: filepath.Join(pods, "unstaged"), VolumeCapability: ext4, VolumeContext: attrs, Secrets: map[string]string{"key": big}})
			return err
		}},
		{name: "create a volume with parameters too large for an argument", codes: []codes.Code{codes.OutOfRange}, run: func(t *testing.T) error {
			_, err := ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "vol-big", Parameters: map[string]string{"blob": big},
				VolumeCapabilities: []*csi.VolumeCapability{ext4}})
			return err
		}},
		{name: "attach with volume attributes too large for an argument", codes: []codes.Code{codes.OutOfRange}, run: func(t *testing.T) error {
			_, err := ctl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: "vol-a", NodeId: "sanity-node",
				VolumeCapability: ext4, VolumeContext: map[string]string{"blob": big}})
			return err
		}},
		{name: "attach with many attributes too large together", codes: []codes.Code{codes.OutOfRange}, run: func(t *testing.T) error {
			many := map[string]string{}
			for i := range 2000 {
				many[fmt.Sprintf("key-%d", i)] = strings.Repeat("v", 100)
			}
			_, err := ctl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: "vol-a", NodeId: "sanity-node",
				VolumeCapability: ext4, VolumeContext: many})
			return err
		}},
		{name: "attach to a node ID with a NUL", run: func(t *testing.T) error {
			_, err := ctl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: "vol-a", NodeId: "sanity\x00node",
				VolumeCapability: ext4, VolumeContext: attrs})
			return err
		}},
		{name: "attach to a node ID with a newline", run: func(t *testing.T) error {
			_, err := ctl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: "vol-a", NodeId: "sanity-node\n--force",
				VolumeCapability: ext4, VolumeContext: attrs})
			return err
		}},
		{name: "detach from a node ID too long for a name", run: func(t *testing.T) error {
			_, err := ctl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: "vol-a", NodeId: strings.Repeat("n", 100<<10)})
			return err
		}},
		{name: "attach with an attribute forging the kubelet's keys", run: func(t *testing.T) error {
			_, err := ctl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: "vol-a", NodeId: "sanity-node",
				VolumeCapability: ext4, VolumeContext: map[string]string{"kubernetes.io/pod.namespace": "kube-system"}})
			return err
		}},
	}
	n := runHostile(t, c, []string{pods, dir}, cases)
	t.Logf("%d hostile flex cases", n)
}
