package flex

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
)

// ExecMode is where an executable's commands run.
type ExecMode string

const (
	// ExecContainer runs commands in monocsi's own filesystem and mount
	// namespace: the executable must be static or find its tools there.
	ExecContainer ExecMode = "container"
	// ExecHost runs commands in the host's mount namespace through nsenter,
	// where the kubelet ran them: the script finds the host's shell and
	// tools, and its mounts are made in the host's mount table. monocsi must
	// see the host's processes (a hostPID pod) and be privileged: a Go
	// thread cannot setns() into a mount namespace itself, so util-linux
	// nsenter does it before exec'ing the executable.
	ExecHost ExecMode = "host"
)

// ParseExecMode checks a mode's name; empty is ExecContainer.
func ParseExecMode(s string) (ExecMode, error) {
	switch m := ExecMode(s); m {
	case "":
		return ExecContainer, nil
	case ExecContainer, ExecHost:
		return m, nil
	}
	return "", fmt.Errorf("unknown FlexVolume exec mode %q (container or host)", s)
}

// DefaultPath is the PATH of the commands: the kubelet's (systemd's
// default), which is what FlexVolume scripts were written against.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// DefaultMountNS is the mount namespace ExecHost enters: the host's init's,
// seen through the host's /proc of a hostPID pod.
const DefaultMountNS = "/proc/1/ns/mnt"

// hostCommand is the command line that runs exe with args in the mount
// namespace mountNS: nsenter enters it and exec's the executable in the
// same process (no fork), so a deadline's process-group kill still reaches
// the executable and its children. exe is at the same path on the host as
// in the container (the FlexVolume directory is mounted at its own path).
func hostCommand(nsenter, mountNS, exe string, args []string) []string {
	return append([]string{nsenter, "--mount=" + mountNS, "--", exe}, args...)
}

// DefaultEnv is what commands get of monocsi's environment besides PATH:
// the node's name (the node role's $NODE_NAME), which attach scripts use.
var DefaultEnv = []string{"NODE_NAME"}

// commandEnv is the commands' environment: the variables of environ that
// keep names, and PATH=path. Root scripts on the host get nothing else of
// monocsi's pod: not its service account's API address, not its settings.
func commandEnv(environ []string, path string, keep []string) []string {
	env := make([]string, 0, len(keep)+1)
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if name != "PATH" && slices.Contains(keep, name) {
			env = append(env, kv)
		}
	}
	return append(env, "PATH="+path)
}

// CheckHostExec checks that ExecHost can work in this process and returns
// the path of nsenter: nsenter is on monocsi's PATH (in the image), the
// mount namespace can be opened (a hostPID, privileged pod), and, for the
// default namespace, PID 1 is not monocsi's own PID namespace's init.
func CheckHostExec(mountNS string) (string, error) {
	return checkHostExec(mountNS, os.Getpid(), exec.LookPath)
}

func checkHostExec(mountNS string, pid int, lookPath func(string) (string, error)) (string, error) {
	if mountNS == "" {
		mountNS = DefaultMountNS
	}
	nsenter, err := lookPath("nsenter")
	if err != nil {
		return "", fmt.Errorf("--flex-exec=host runs FlexVolume commands through nsenter (util-linux), which is not in monocsi's image or PATH: %w", err)
	}
	if pid == 1 && mountNS == DefaultMountNS {
		return "", fmt.Errorf("--flex-exec=host: monocsi is PID 1 of its own PID namespace, so %s is not the host's mount namespace: the pod needs hostPID: true", mountNS)
	}
	f, err := os.Open(mountNS)
	if err != nil {
		return "", fmt.Errorf("--flex-exec=host: cannot open the host's mount namespace %s (%w): the pod needs hostPID: true and a privileged container", mountNS, err)
	}
	f.Close()
	return nsenter, nil
}
