// Package driver defines what a monocsi storage driver is and the input checks
// every driver shares.
//
// A driver is a plain CSI server: it implements the spec's Identity, Controller
// and Node interfaces and nothing else, so the same value can be served over
// gRPC (nodeplugin, `monocsi serve`) or called in-process (the embedded
// provisioner and attacher) with the same code.
package driver

import (
	"context"
	"fmt"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Driver is one CSI driver hosted by monocsi.
type Driver interface {
	csi.IdentityServer
	csi.ControllerServer
	csi.NodeServer
}

// TopologyKeyNode is the topology segment key of node-local volumes.
const TopologyKeyNode = "topology.monocsi.io/node"

// MaxIDLength bounds volume IDs and names: the CSI spec asks COs to accept
// 128 bytes, and it keeps every ID a valid file name.
const MaxIDLength = 128

// ValidID checks an identifier that a driver turns into a file name: 1 to
// MaxIDLength bytes of [A-Za-z0-9._-], starting with a letter or digit, so it
// can never be ".", "..", hidden, or contain a path separator or NUL.
// what names the field in the error ("volume ID", "name").
func ValidID(what, id string) error {
	if id == "" {
		return status.Errorf(codes.InvalidArgument, "%s is required", what)
	}
	if len(id) > MaxIDLength {
		return status.Errorf(codes.InvalidArgument, "%s is %d bytes long, the limit is %d", what, len(id), MaxIDLength)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if alnum || i > 0 && (c == '.' || c == '_' || c == '-') {
			continue
		}
		return status.Errorf(codes.InvalidArgument,
			"%s %q: only letters, digits, '.', '_' and '-' are allowed, starting with a letter or digit", what, Printable(id))
	}
	return nil
}

// Printable shortens user input for error messages (which quote it with %q).
func Printable(s string) string {
	const limit = 80
	if len(s) > limit {
		s = s[:limit] + "..."
	}
	return s
}

// CheckText refuses an empty or over-long value, or one holding a control
// character: none can be a name or path a driver hands on, and a newline
// would corrupt the mount table.
func CheckText(what, s string, limit int) error {
	if s == "" {
		return status.Errorf(codes.InvalidArgument, "%s is required", what)
	}
	if len(s) > limit {
		return status.Errorf(codes.InvalidArgument, "%s is %d bytes long, the limit is %d", what, len(s), limit)
	}
	if strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return status.Errorf(codes.InvalidArgument, "%s %q contains a control character", what, Printable(s))
	}
	return nil
}

// CheckMountCapability rejects a malformed capability and block access:
// why says why the driver has only filesystems.
func CheckMountCapability(c *csi.VolumeCapability, why string) error {
	if err := CheckCapability(c); err != nil {
		return err
	}
	if c.GetBlock() != nil {
		return status.Errorf(codes.InvalidArgument, "block volumes are not supported: %s", why)
	}
	return nil
}

// SingleNodeModes reports whether every capability asks for an access mode a
// volume living on one node can honour; the returned message names the first
// one that cannot.
func SingleNodeModes(caps []*csi.VolumeCapability) (bool, string) {
	for _, c := range caps {
		switch m := c.GetAccessMode().GetMode(); m {
		case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
			csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
			csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
			csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:
		default:
			return false, fmt.Sprintf("access mode %s is not supported: the volume lives on one node", m)
		}
	}
	return true, ""
}

// CheckCapabilities rejects a missing or malformed list of volume capabilities.
func CheckCapabilities(caps []*csi.VolumeCapability) error {
	if len(caps) == 0 {
		return status.Error(codes.InvalidArgument, "volume capabilities are required")
	}
	for _, c := range caps {
		if err := CheckCapability(c); err != nil {
			return err
		}
	}
	return nil
}

// CheckCapability rejects a missing or malformed volume capability.
func CheckCapability(c *csi.VolumeCapability) error {
	if c == nil {
		return status.Error(codes.InvalidArgument, "volume capability is required")
	}
	if c.GetAccessMode() == nil || c.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_UNKNOWN {
		return status.Error(codes.InvalidArgument, "volume capability needs an access mode")
	}
	if c.GetBlock() == nil && c.GetMount() == nil {
		return status.Error(codes.InvalidArgument, "volume capability needs an access type (mount or block)")
	}
	return nil
}

// Parameters added by the provisioner with --extra-create-metadata; every
// driver accepts them whether or not it uses them.
const (
	ParamPVCName      = "csi.storage.k8s.io/pvc/name"
	ParamPVCNamespace = "csi.storage.k8s.io/pvc/namespace"
	ParamPVName       = "csi.storage.k8s.io/pv/name"
)

// CheckParameters rejects any CreateVolume parameter that is neither in
// known nor one of the provisioner's metadata parameters, naming it, so a typo
// in a StorageClass surfaces as a ProvisioningFailed event instead of being
// silently ignored.
func CheckParameters(params map[string]string, known ...string) error {
	for k := range params {
		switch k {
		case ParamPVCName, ParamPVCNamespace, ParamPVName:
			continue
		}
		ok := false
		for _, want := range known {
			ok = ok || k == want
		}
		if !ok {
			if len(known) == 0 {
				return status.Errorf(codes.InvalidArgument, "unknown parameter %q: this driver takes no parameters", Printable(k))
			}
			return status.Errorf(codes.InvalidArgument, "unknown parameter %q (known: %s)", Printable(k), strings.Join(known, ", "))
		}
	}
	return nil
}

// Declaration is what a driver tells Kubernetes about itself: monocsi writes
// it into the driver's CSIDriver object, so manifests need not repeat it.
type Declaration struct {
	AttachRequired bool
	PodInfoOnMount bool
	// FSGroupPolicy is "File", "ReadWriteOnceWithFSType" or "None".
	FSGroupPolicy string
	// Ephemeral: the driver serves CSI ephemeral inline volumes too.
	Ephemeral bool
	// NodeLocal drivers create volumes on the node that will use them: the
	// node role provisions for them, and serves their Controller API.
	NodeLocal bool
	// StorageCapacity: the scheduler reads CSIStorageCapacity objects for
	// the driver's classes. The role that publishes them sets it (a driver
	// only says it can report capacity, with GET_CAPACITY).
	StorageCapacity bool
}

// Declarer is implemented by drivers that declare their CSIDriver object.
type Declarer interface {
	Declare() Declaration
}

// PVInfo is what the embedded provisioner knows about a volume being
// deleted that a DeleteVolumeRequest cannot carry: fields of its PV (or, when
// Provision undoes a volume it just created, of the PV it would have written).
type PVInfo struct {
	// MountOptions are the PV's spec.mountOptions (its StorageClass's).
	MountOptions []string
}

// DeleteWithPV is implemented by drivers that delete better when they know
// the volume's PV: nfs mounts the share to delete a volume, and the PV's
// mountOptions say how (nfsvers, sec, ...). It exists because the embedded
// provisioner has the PV in hand while external-provisioner, a sidecar,
// passes only the CSI request; a driver must therefore also delete correctly
// from DeleteVolume alone (nfs reads the secrets' mountOptions, as
// csi-driver-nfs does). The provisioner calls DeleteVolumeForPV instead of
// DeleteVolume whenever the driver has it; nothing else does.
type DeleteWithPV interface {
	DeleteVolumeForPV(ctx context.Context, req *csi.DeleteVolumeRequest, pv PVInfo) (*csi.DeleteVolumeResponse, error)
}

// Drainer is a driver whose calls can leave work running after they return
// (nfs: a removal or copy that outlives a cancelled call). Drain returns once
// that work has ended, or ctx's error.
type Drainer interface {
	Drain(ctx context.Context) error
}

// ControllerCapabilities is the ControllerGetCapabilities answer for rpcs.
func ControllerCapabilities(rpcs ...csi.ControllerServiceCapability_RPC_Type) *csi.ControllerGetCapabilitiesResponse {
	resp := &csi.ControllerGetCapabilitiesResponse{}
	for _, c := range rpcs {
		resp.Capabilities = append(resp.Capabilities, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{
			Rpc: &csi.ControllerServiceCapability_RPC{Type: c}}})
	}
	return resp
}

// NodeCapabilities is the NodeGetCapabilities answer for rpcs.
func NodeCapabilities(rpcs ...csi.NodeServiceCapability_RPC_Type) *csi.NodeGetCapabilitiesResponse {
	resp := &csi.NodeGetCapabilitiesResponse{}
	for _, c := range rpcs {
		resp.Capabilities = append(resp.Capabilities, &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{
			Rpc: &csi.NodeServiceCapability_RPC{Type: c}}})
	}
	return resp
}

// ReadOnly reports whether a volume is to be mounted read-only: asked for,
// or a reader-only access mode.
func ReadOnly(vc *csi.VolumeCapability, readonly bool) bool {
	switch vc.GetAccessMode().GetMode() {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY, csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY:
		return true
	}
	return readonly
}
