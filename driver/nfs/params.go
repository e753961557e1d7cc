package nfs

import (
	"net/netip"
	"path"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/monocsi/monocsi/driver"
)

// StorageClass parameters and volume attributes, as csi-driver-nfs names
// them; keys are matched case-insensitively, as there.
const (
	paramServer           = "server"
	paramShare            = "share"
	paramSubDir           = "subDir"
	paramOnDelete         = "onDelete"
	paramMountPermissions = "mountPermissions"
	paramMountOptions     = "mountOptions"

	onDeleteDelete  = "delete"
	onDeleteRetain  = "retain"
	onDeleteArchive = "archive"

	// archivePrefix names an archived sub-directory: archived-<subDir>.
	archivePrefix = "archived-"
)

// subDir templates and the provisioner parameter that fills each.
var templates = map[string]string{
	"${pvc.metadata.name}":      driver.ParamPVCName,
	"${pvc.metadata.namespace}": driver.ParamPVCNamespace,
	"${pv.metadata.name}":       driver.ParamPVName,
}

// params is a volume's configuration, from CreateVolume parameters or a
// volume context.
type params struct {
	server, share, subDir, onDelete, mountOptions string
	mountPermissions                              uint32 // 0: leave modes alone
	hasSubDir                                     bool
}

// knownKey maps a key, in any case, to its canonical spelling.
func knownKey(k string) (string, bool) {
	for _, c := range []string{paramServer, paramShare, paramSubDir, paramOnDelete, paramMountPermissions, paramMountOptions} {
		if strings.EqualFold(k, c) {
			return c, true
		}
	}
	return "", false
}

// parseParams reads and validates a configuration. strict refuses unknown
// keys (StorageClass parameters, where a typo must not pass silently); a
// volume context may carry the kubelet's and other tools' keys.
func parseParams(m map[string]string, strict bool) (params, error) {
	var p params
	for k, v := range m {
		key, ok := knownKey(k)
		if !ok {
			if !strict || strings.HasPrefix(k, "csi.storage.k8s.io/") {
				continue
			}
			return p, status.Errorf(codes.InvalidArgument, "unknown parameter %q (known: server, share, subDir, onDelete, mountPermissions, mountOptions)", driver.Printable(k))
		}
		switch key {
		case paramServer:
			p.server = v
		case paramShare:
			p.share = v
		case paramSubDir:
			p.subDir, p.hasSubDir = v, true
		case paramOnDelete:
			p.onDelete = strings.ToLower(v)
		case paramMountOptions:
			p.mountOptions = v
		case paramMountPermissions:
			perm, err := strconv.ParseUint(v, 8, 32)
			if err != nil || perm > 0o7777 {
				return p, status.Errorf(codes.InvalidArgument, "mountPermissions %q must be an octal mode such as 0777", driver.Printable(v))
			}
			p.mountPermissions = uint32(perm)
		}
	}
	if p.server == "" {
		return p, status.Error(codes.InvalidArgument, "parameter server is required")
	}
	if err := checkServer(p.server); err != nil {
		return p, err
	}
	if p.share == "" {
		return p, status.Error(codes.InvalidArgument, "parameter share is required")
	}
	if err := checkShare(p.share); err != nil {
		return p, err
	}
	switch p.onDelete {
	case "", onDeleteDelete, onDeleteRetain, onDeleteArchive:
	default:
		return p, status.Errorf(codes.InvalidArgument, "onDelete %q must be delete, retain or archive", driver.Printable(p.onDelete))
	}
	if _, err := splitOptions(p.mountOptions); err != nil {
		return p, err
	}
	return p, nil
}

// expand fills the subDir templates from the provisioner's metadata
// parameters; a template whose parameter is missing is an error rather than
// a directory literally named "${pvc.metadata.name}".
func expand(subDir string, m map[string]string) (string, error) {
	for tmpl, key := range templates {
		if !strings.Contains(subDir, tmpl) {
			continue
		}
		v, ok := m[key]
		if !ok || v == "" {
			return "", status.Errorf(codes.InvalidArgument, "subDir %q uses %s, but the provisioner did not pass %s (run it with --extra-create-metadata)", driver.Printable(subDir), tmpl, key)
		}
		subDir = strings.ReplaceAll(subDir, tmpl, v)
	}
	return subDir, nil
}

// checkServer accepts a DNS name or an IP address (IPv6 with or without
// brackets, with a zone of an interface name's plain characters): nothing
// that mount could read as an option or a second argument, and nothing a
// volume handle could not carry ('#' separates its fields, '/' the older
// form's).
func checkServer(s string) error {
	if err := driver.CheckText("server", s, 253); err != nil {
		return err
	}
	bad := status.Errorf(codes.InvalidArgument, "server %q is not a host name or an IP address", driver.Printable(s))
	if strings.ContainsAny(s, ":[]%") {
		inner, bracketed := strings.CutPrefix(s, "[")
		if bracketed {
			var ok bool
			if inner, ok = strings.CutSuffix(inner, "]"); !ok {
				return bad
			}
		}
		a, err := netip.ParseAddr(inner)
		if err != nil || !a.Is6() || !plainZone(a.Zone()) {
			return status.Errorf(codes.InvalidArgument, "server %q is not a host name or an IP address (an IPv6 zone must be an interface name: letters, digits, '.', '_', '-')", driver.Printable(s))
		}
		return nil
	}
	if _, err := netip.ParseAddr(s); err == nil {
		return nil
	}
	for _, label := range strings.Split(s, ".") {
		ok := label != "" && len(label) <= 63 && label[0] != '-' && label[len(label)-1] != '-'
		for _, c := range label {
			ok = ok && (c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_')
		}
		if !ok {
			return bad
		}
	}
	return nil
}

// plainZone accepts an IPv6 zone that is empty or an interface name of
// letters, digits, '.', '_' and '-' (at most 15 bytes, as Linux's).
func plainZone(z string) bool {
	if len(z) > 15 {
		return false
	}
	for _, c := range z {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// mountHost is the server as mount wants it: IPv6 addresses in brackets.
func mountHost(server string) string {
	if a, err := netip.ParseAddr(server); err == nil && a.Is6() {
		return "[" + server + "]"
	}
	return server
}

// checkShare accepts a clean absolute export path.
func checkShare(s string) error {
	if err := driver.CheckText("share", s, 1024); err != nil {
		return err
	}
	if !strings.HasPrefix(s, "/") {
		return status.Errorf(codes.InvalidArgument, "share %q must be an absolute path on the server", driver.Printable(s))
	}
	if strings.Contains(s, separator) {
		return status.Errorf(codes.InvalidArgument, "share %q contains '#', which volume handles cannot carry", driver.Printable(s))
	}
	if t := strings.TrimRight(s, "/"); t != "" && path.Clean(t) != t {
		return status.Errorf(codes.InvalidArgument, "share %q must be a clean path (no '.', '..' or repeated '/')", driver.Printable(s))
	}
	return nil
}

// checkSubDir accepts a relative path of plain names: no '..', '.', empty
// segment or leading '/', so it can only name a place inside the share.
func checkSubDir(s string) error {
	if err := driver.CheckText("subDir", s, 1024); err != nil {
		return err
	}
	if strings.Contains(s, separator) {
		return status.Errorf(codes.InvalidArgument, "subDir %q contains '#', which volume handles cannot carry", driver.Printable(s))
	}
	if strings.HasPrefix(s, "/") {
		return status.Errorf(codes.InvalidArgument, "subDir %q must be relative to the share", driver.Printable(s))
	}
	for _, seg := range strings.Split(strings.TrimSuffix(s, "/"), "/") {
		if seg == "" || seg == "." || seg == ".." {
			return status.Errorf(codes.InvalidArgument, "subDir %q must be a path of plain names inside the share (no '', '.' or '..' segments)", driver.Printable(s))
		}
		if len(seg) > 255 {
			return status.Errorf(codes.InvalidArgument, "subDir %q has a name of %d bytes; a file name has at most 255", driver.Printable(s), len(seg))
		}
	}
	return nil
}

// splitOptions splits a comma-separated mountOptions value and checks each.
func splitOptions(s string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	opts := strings.Split(s, ",")
	return opts, checkOptions(opts)
}

// checkOptions refuses options that are empty, carry a comma (two options
// smuggled as one) or a control character.
func checkOptions(opts []string) error {
	for _, o := range opts {
		if o == "" || strings.Contains(o, ",") {
			return status.Errorf(codes.InvalidArgument, "mount option %q is not a single mount option", driver.Printable(o))
		}
		if err := driver.CheckText("mount option", o, 256); err != nil {
			return err
		}
	}
	return nil
}
