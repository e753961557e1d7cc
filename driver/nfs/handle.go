package nfs

import (
	"fmt"
	"regexp"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/monocsi/monocsi/driver"
)

// A volume handle is csi-driver-nfs's, so PVs it created keep working when
// monocsi serves its driver name:
//
//	server#share#subDir#uuid[#onDelete]
//
// server, share and subDir are written with their slashes trimmed; uuid is
// the volume name when a subDir parameter was given (so two volumes with the
// same templated subDir still differ) and empty otherwise (subDir is then the
// volume name); onDelete is written only for retain and archive. '#' is not
// escaped upstream, so values containing it are refused at CreateVolume.
//
// Handles of fewer than three '#' segments are the older "server/share/subDir"
// form, still read.
const separator = "#"

// volume is what a handle names: a sub-directory of an NFS share.
type volume struct {
	server, share, subDir, uuid, onDelete string
}

// id is the volume's handle.
func (v volume) id() string {
	parts := []string{strings.Trim(v.server, "/"), strings.Trim(v.share, "/"), strings.Trim(v.subDir, "/"), v.uuid}
	if v.onDelete == onDeleteRetain || v.onDelete == onDeleteArchive {
		parts = append(parts, v.onDelete)
	}
	return strings.Join(parts, separator)
}

// dirKey names the volume's directory: creating and deleting it exclude
// each other, also between volumes whose templated subDirs coincide.
func (v volume) dirKey() string {
	return v.server + ":" + strings.TrimRight(v.share, "/") + "/" + v.subDir
}

var legacyHandle = regexp.MustCompile(`^([^/]+)/(.*)/([^/]+)$`)

// same reports whether two volumes are the same, onDelete "delete" being
// the unwritten default.
func (v volume) same(w volume) bool {
	norm := func(x volume) volume {
		if x.onDelete == onDeleteDelete {
			x.onDelete = ""
		}
		return x
	}
	return norm(v) == norm(w)
}

// checkRoundTrip refuses, at CreateVolume, values whose handle would read
// back as another volume: DeleteVolume would then act on that one.
func (v volume) checkRoundTrip() error {
	if back, err := parseHandle(v.id()); err != nil || !back.same(v) {
		return status.Errorf(codes.InvalidArgument, "server %q, share %q, subDir %q and name %q do not make a volume handle that reads back as the same volume",
			driver.Printable(v.server), driver.Printable(v.share), driver.Printable(v.subDir), driver.Printable(v.uuid))
	}
	return nil
}

// parseHandle reads a handle and validates every part, so nothing taken from
// it can reach a mount command or escape the share. The share is returned
// absolute ("/" + the trimmed value).
func parseHandle(id string) (volume, error) {
	v, err := splitHandle(id)
	if err != nil {
		return v, err
	}
	if back, err := splitHandle(v.id()); err != nil || !back.same(v) {
		return v, notOurs(id, "its fields, written back into a handle, read as other fields")
	}
	return v, nil
}

func splitHandle(id string) (volume, error) {
	var v volume
	if err := driver.CheckText("volume ID", id, maxHandleLen); err != nil {
		return v, err
	}
	parts := strings.Split(id, separator)
	switch {
	case len(parts) >= 3:
		v.server, v.share, v.subDir = parts[0], parts[1], parts[2]
		if len(parts) > 3 {
			v.uuid = parts[3]
		}
		if len(parts) > 4 {
			v.onDelete = parts[4]
		}
		if len(parts) > 5 {
			return v, notOurs(id, "it has more than five '#'-separated parts")
		}
	default:
		m := legacyHandle.FindStringSubmatch(id)
		if m == nil {
			return v, notOurs(id, "it is neither server#share#subDir#... nor server/share/subDir")
		}
		v.server, v.share, v.subDir = m[1], m[2], m[3]
	}
	v.share = "/" + strings.Trim(v.share, "/")
	if err := checkServer(v.server); err != nil {
		return v, notOurs(id, status.Convert(err).Message())
	}
	if err := checkShare(v.share); err != nil {
		return v, notOurs(id, status.Convert(err).Message())
	}
	if err := checkSubDir(v.subDir); err != nil {
		return v, notOurs(id, status.Convert(err).Message())
	}
	if v.uuid != "" {
		if err := driver.ValidID("uuid", v.uuid); err != nil {
			return v, notOurs(id, status.Convert(err).Message())
		}
	}
	switch v.onDelete {
	case "", onDeleteDelete, onDeleteRetain, onDeleteArchive:
	default:
		return v, notOurs(id, fmt.Sprintf("onDelete %q is not delete, retain or archive", v.onDelete))
	}
	return v, nil
}

// notOurs is NOT_FOUND: a handle this driver cannot have written names no
// volume of it (csi-driver-nfs treats it the same way).
func notOurs(id, why string) error {
	return status.Errorf(codes.NotFound, "volume ID %q is not an NFS volume handle: %s", driver.Printable(id), why)
}

// maxHandleLen bounds handles: a name (128) plus server, share and subDir.
const maxHandleLen = 4096
