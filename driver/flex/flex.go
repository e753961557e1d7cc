// Package flex turns a FlexVolume driver executable into a CSI driver. The
// executable is called as the kubelet called it (init, attach, detach,
// waitforattach, mountdevice, unmountdevice, mount, unmount, with JSON
// options) but under monocsi's rules: every call has a deadline, its output
// is bounded and validated, and every failure is a gRPC status naming the
// driver and the command.
package flex

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/monocsi/monocsi/driver"
)

// DefaultDir is where the kubelet looks for FlexVolume drivers.
const DefaultDir = "/usr/libexec/kubernetes/kubelet-plugins/volume/exec"

// Config configures the adapter of one executable.
type Config struct {
	Name   string // CSI driver name (see CSIName)
	Exe    string // the executable
	NodeID string
	// Timeout bounds every call but waitforattach (2 minutes when zero);
	// waitforattach gets 10 minutes, as in the kubelet.
	Timeout time.Duration
	Version string
	// Exec is where commands run: ExecContainer (when empty) or ExecHost.
	Exec ExecMode
	// Path is the commands' PATH (DefaultPath when empty), in either mode.
	Path string
	// MountNS is the mount namespace ExecHost enters (DefaultMountNS when
	// empty).
	MountNS string
	// Env names the variables of monocsi's environment that commands get
	// besides PATH; the rest (the API server's address, the pod's own
	// settings) stays with monocsi, as the kubelet's stayed with it.
	Env []string
}

// Driver serves one FlexVolume executable as a CSI driver.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	name, exe, nodeID, version string
	path                       string   // the commands' PATH
	env                        []string // names of monocsi's variables passed on
	nsenter, mountNS           string   // ExecHost: nsenter's path and the namespace; empty otherwise
	attach                     bool
	timeout                    time.Duration
	mounter                    *mount.SafeFormatAndMount
	locks                      driver.Locks
	created                    sync.Map // volume IDs CreateVolume returned, see known
	// own are the directories of the executables (see ownDirs): no target
	// or staging path may be in, on or above them.
	own []driver.Reserved
}

var _ driver.Driver = (*Driver)(nil)

const waitForAttachTimeout = 10 * time.Minute

// New calls the executable's init and learns whether it attaches.
func New(ctx context.Context, c Config) (*Driver, error) {
	if c.Timeout == 0 {
		c.Timeout = 2 * time.Minute
	}
	if c.NodeID == "" {
		return nil, fmt.Errorf("flex driver %s: a node ID is required", c.Name)
	}
	if err := ValidName(c.Name); err != nil {
		return nil, err
	}
	fi, err := os.Stat(c.Exe)
	if err != nil || !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
		return nil, fmt.Errorf("flex driver %s: %s is not an executable file", c.Name, c.Exe)
	}
	// Absolute: nsenter starts the executable at the namespace's root.
	exe, err := filepath.Abs(c.Exe)
	if err != nil {
		return nil, fmt.Errorf("flex driver %s: %w", c.Name, err)
	}
	d := &Driver{name: c.Name, exe: exe, nodeID: c.NodeID, version: c.Version, timeout: c.Timeout, path: c.Path, env: c.Env,
		mounter: &mount.SafeFormatAndMount{Interface: mount.New(""), Exec: utilexec.New()}}
	if d.path == "" {
		d.path = DefaultPath
	}
	for _, dir := range ownDirs(exe) {
		r, err := driver.Reserve("the FlexVolume directory of the drivers' executables", dir)
		if err != nil {
			return nil, fmt.Errorf("flex driver %s: %w", c.Name, err)
		}
		d.own = append(d.own, r)
	}
	mode, err := ParseExecMode(string(c.Exec))
	if err != nil {
		return nil, fmt.Errorf("flex driver %s: %w", c.Name, err)
	}
	if mode == ExecHost {
		d.mountNS = c.MountNS
		if d.mountNS == "" {
			d.mountNS = DefaultMountNS
		}
		if d.nsenter, err = CheckHostExec(d.mountNS); err != nil {
			return nil, fmt.Errorf("flex driver %s: %w", c.Name, err)
		}
	}
	r, err := d.call(ctx, d.timeout, "init")
	if err != nil {
		return nil, errors.New(status.Convert(err).Message()) // already "flex driver <name>: init: ..."
	}
	// Left out, attach means true: the kubelet's default.
	d.attach = r.Capabilities == nil || r.Capabilities.Attach == nil || *r.Capabilities.Attach
	return d, nil
}

// ownDirs are the directories a mount must not land in, on or above: the
// executable's own, and, when that is a driver directory <vendor>~<driver>
// as the kubelet lays them out, the FlexVolume directory holding every
// driver's. A volume mounted there would hide the executables or put its
// own files in their place, to be run as root by the next call.
func ownDirs(exe string) []string {
	dir := filepath.Dir(exe)
	if strings.Contains(filepath.Base(dir), "~") && filepath.Dir(dir) != "/" {
		return []string{dir, filepath.Dir(dir)}
	}
	return []string{dir}
}

// Attach reports whether the executable attaches volumes (init's answer).
func (d *Driver) Attach() bool { return d.attach }

// CSIName derives a CSI driver name from a FlexVolume directory name
// "<vendor>~<driver>": "<driver>.<vendor>.flex.monocsi.io", lower-cased, with
// every character a CSI name cannot hold turned into '-'.
func CSIName(dir string) (string, error) {
	vendor, drv, ok := strings.Cut(dir, "~")
	if !ok || vendor == "" || drv == "" || strings.Contains(drv, "~") {
		return "", fmt.Errorf("flex directory %q is not <vendor>~<driver>", dir)
	}
	clean := func(s string) string {
		s = invalidNameChars.ReplaceAllString(strings.ToLower(s), "-")
		return strings.Trim(s, "-.")
	}
	name := clean(drv) + "." + clean(vendor) + ".flex.monocsi.io"
	return name, ValidName(name)
}

var invalidNameChars = regexp.MustCompile(`[^a-z0-9.-]`)

// ValidName checks a CSI driver name: at most 63 characters, a DNS-1123
// subdomain (what the kubelet and the CSIDriver object accept).
func ValidName(name string) error {
	if len(name) == 0 || len(name) > 63 || !dnsSubdomain.MatchString(name) {
		return fmt.Errorf("%q is not a valid CSI driver name (a DNS subdomain of at most 63 characters)", name)
	}
	return nil
}

var dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

// Exe is where the kubelet expects the executable of a driver directory.
func Exe(flexDir, dir string) string {
	_, drv, _ := strings.Cut(dir, "~")
	return filepath.Join(flexDir, dir, drv)
}

// GetPluginInfo names the driver.
func (d *Driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: d.name, VendorVersion: d.version}, nil
}

// GetPluginCapabilities: a controller service (attach, and the pass-through
// CreateVolume described there).
func (d *Driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{
		{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: csi.PluginCapability_Service_CONTROLLER_SERVICE}}},
	}}, nil
}

// Probe is ready when init succeeds.
func (d *Driver) Probe(ctx context.Context, _ *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	if _, err := d.call(ctx, d.timeout, "init"); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "%s", status.Convert(err).Message())
	}
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}

// Declare: attachRequired from init; pod info on mount, because the
// executables expect kubernetes.io/pod.* in their options; inline volumes
// (the replacement of an inline flexVolume) for drivers without attach, as
// the kubelet never attaches inline CSI volumes.
func (d *Driver) Declare() driver.Declaration {
	return driver.Declaration{AttachRequired: d.attach, PodInfoOnMount: true, FSGroupPolicy: "ReadWriteOnceWithFSType", Ephemeral: !d.attach}
}
