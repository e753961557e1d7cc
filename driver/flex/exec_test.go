package flex

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
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

// A reply on stderr (kubernetes/examples' NFS script writes its Failure
// there and exits 1) is the reply when stdout has none; anything else on
// stderr stays context for the error.
func TestReplyOnStderr(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		code       codes.Code
		says       string
	}{
		{"failure on stderr", `echo '{ "status": "Failure", "message": "Failed to mount 10.0.0.1:/x"}' >&2; exit 1`, codes.Internal, "attach: Failed to mount 10.0.0.1:/x"},
		{"failure with a code on stderr", `printf '%s\n' '{"status":"Failure","message":"no such share","code":"NotFound"}' >&2; exit 1`, codes.NotFound, "no such share"},
		{"failure on stderr, noise on stdout", `echo 'mount: something'; echo '{"status":"Failure","message":"bad share"}' >&2; exit 1`, codes.Internal, "attach: bad share"},
		{"stdout's reply wins", `echo '{"status":"Failure","message":"from stdout"}'; echo '{"status":"Failure","message":"from stderr"}' >&2; exit 1`, codes.Internal, "from stdout"},
		{"two replies on stderr", `echo '{"status":"Failure","message":"one"}{"status":"Failure","message":"two"}' >&2; exit 1`, codes.Internal, "exit status 1"},
		{"noise and a reply on stderr", `echo 'warning: x' >&2; echo '{"status":"Failure","message":"m"}' >&2; exit 1`, codes.Internal, "exit status 1: warning: x"},
		{"JSON without a status on stderr", `echo '{"error":"x"}' >&2; exit 2`, codes.Internal, "exit status 2"},
		{"huge stderr", `head -c 10000000 /dev/zero | tr '\0' 'x' >&2; exit 1`, codes.Internal, "exit status 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := New(context.Background(), Config{Name: "drv.test.flex.monocsi.io", Exe: script(t, tc.body), NodeID: "n1", Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			_, err = d.ControllerPublishVolume(context.Background(), &csi.ControllerPublishVolumeRequest{
				VolumeId: "v1", NodeId: "n1", VolumeCapability: mountCap, VolumeContext: map[string]string{"k": "v"}})
			if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.says) {
				t.Errorf("got %v; want %s saying %q", err, tc.code, tc.says)
			}
		})
	}
	// A Success on stderr with exit 0 is a Success; the attach's device is used.
	d, err := New(context.Background(), Config{Name: "drv.test.flex.monocsi.io", NodeID: "n1",
		Exe: script(t, `echo '{"status":"Success","device":"/dev/loop7"}' >&2`)})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := d.ControllerPublishVolume(context.Background(), &csi.ControllerPublishVolumeRequest{
		VolumeId: "v1", NodeId: "n1", VolumeCapability: mountCap, VolumeContext: map[string]string{"k": "v"}})
	if err != nil || resp.GetPublishContext()["device"] != "/dev/loop7" {
		t.Errorf("Success on stderr: %v, %v", resp, err)
	}
}

// Commands get the --flex-path PATH and, of monocsi's environment, only the
// --flex-env variables.
func TestCommandEnvironment(t *testing.T) {
	t.Setenv("MONOCSI_TEST_VAR", "kept")
	t.Setenv("MONOCSI_TEST_SECRET", "not for scripts")
	out := filepath.Join(t.TempDir(), "env")
	d, err := New(context.Background(), Config{Name: "drv.test.flex.monocsi.io", NodeID: "n1", Path: "/opt/flex/bin:/usr/bin:/bin",
		Env: []string{"MONOCSI_TEST_VAR"}, Exe: script(t, `env > `+out+`; echo '{"status":"Success","device":"/dev/x"}'`)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.ControllerPublishVolume(context.Background(), &csi.ControllerPublishVolumeRequest{
		VolumeId: "v1", NodeId: "n1", VolumeCapability: mountCap, VolumeContext: map[string]string{"k": "v"}}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	env := strings.Split(strings.TrimSpace(string(b)), "\n")
	var paths []string
	for _, kv := range env {
		if strings.HasPrefix(kv, "PATH=") {
			paths = append(paths, kv)
		}
	}
	if len(paths) != 1 || paths[0] != "PATH=/opt/flex/bin:/usr/bin:/bin" {
		t.Errorf("PATH of the command: %v", paths)
	}
	if !slices.Contains(env, "MONOCSI_TEST_VAR=kept") {
		t.Errorf("a --flex-env variable not passed on: %v", env)
	}
	for _, kv := range env {
		if strings.HasPrefix(kv, "MONOCSI_TEST_SECRET=") || strings.HasPrefix(kv, "HOME=") {
			t.Errorf("%s passed on, though not named by --flex-env", kv)
		}
	}
	if got := commandEnv([]string{"A=1", "PATH=/x", "B=2", "AB=3"}, "", []string{"A", "PATH"}); !slices.Equal(got, []string{"A=1", "PATH="}) {
		t.Errorf("commandEnv = %v", got)
	}
}

// Host mode's command line, in its one place.
func TestHostCommand(t *testing.T) {
	got := hostCommand("/usr/bin/nsenter", "/proc/1/ns/mnt", "/flex/acme~nfs/nfs", []string{"mount", "/var/lib/kubelet/pods/u/v", `{"server":"s"}`})
	want := []string{"/usr/bin/nsenter", "--mount=/proc/1/ns/mnt", "--", "/flex/acme~nfs/nfs", "mount", "/var/lib/kubelet/pods/u/v", `{"server":"s"}`}
	if !slices.Equal(got, want) {
		t.Errorf("hostCommand = %q\nwant %q", got, want)
	}
	for s, want := range map[string]ExecMode{"": ExecContainer, "container": ExecContainer, "host": ExecHost} {
		if m, err := ParseExecMode(s); err != nil || m != want {
			t.Errorf("ParseExecMode(%q) = %q, %v", s, m, err)
		}
	}
	if _, err := ParseExecMode("chroot"); err == nil {
		t.Error("ParseExecMode accepted chroot")
	}
}

// The start check of host mode names what is missing: nsenter, or hostPID.
func TestCheckHostExec(t *testing.T) {
	found := func(string) (string, error) { return "/usr/bin/nsenter", nil }
	missing := func(string) (string, error) {
		return "", errors.New(`exec: "nsenter": executable file not found in $PATH`)
	}
	readable := filepath.Join(t.TempDir(), "mnt")
	os.WriteFile(readable, nil, 0o644)
	for _, tc := range []struct {
		name    string
		ns      string
		pid     int
		look    func(string) (string, error)
		wantErr string
	}{
		{"ok", readable, 4242, found, ""},
		{"no nsenter", readable, 4242, missing, "nsenter (util-linux)"},
		{"PID 1 of its own namespace", "", 1, found, "hostPID: true"},
		{"namespace not readable", filepath.Join(t.TempDir(), "absent"), 4242, found, "hostPID: true and a privileged container"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := checkHostExec(tc.ns, tc.pid, tc.look)
			switch {
			case tc.wantErr == "" && (err != nil || p != "/usr/bin/nsenter"):
				t.Errorf("got %q, %v", p, err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("got %v; want an error saying %q", err, tc.wantErr)
			}
		})
	}
}

// Host mode runs each command through nsenter: a fake nsenter records its
// arguments and runs the rest, as the real one does after setns.
func TestHostModeRunsThroughNsenter(t *testing.T) {
	bin := t.TempDir()
	log := filepath.Join(t.TempDir(), "nsenter.log")
	fake := "#!/bin/sh\necho \"$@\" >> " + log + "\n[ \"$2\" = -- ] || exit 99\nshift 2\nexec \"$@\"\n"
	if err := os.WriteFile(filepath.Join(bin, "nsenter"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	ns := filepath.Join(t.TempDir(), "mnt")
	os.WriteFile(ns, nil, 0o644)
	exe := script(t, `echo '{"status":"Success","device":"/dev/x"}'`)
	d, err := New(context.Background(), Config{Name: "drv.test.flex.monocsi.io", NodeID: "n1", Exe: exe, Exec: ExecHost, MountNS: ns})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.ControllerPublishVolume(context.Background(), &csi.ControllerPublishVolumeRequest{
		VolumeId: "v1", NodeId: "n1", VolumeCapability: mountCap, VolumeContext: map[string]string{"k": "v"}}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(log)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 2 || lines[0] != "--mount="+ns+" -- "+exe+" init" || !strings.HasPrefix(lines[1], "--mount="+ns+" -- "+exe+" attach {") {
		t.Errorf("nsenter calls:\n%s", b)
	}
	if _, err := New(context.Background(), Config{Name: "drv.test.flex.monocsi.io", NodeID: "n1", Exe: exe, Exec: ExecHost,
		MountNS: filepath.Join(t.TempDir(), "absent")}); err == nil || !strings.Contains(err.Error(), "hostPID") {
		t.Errorf("host mode without a readable namespace: %v", err)
	}
}
