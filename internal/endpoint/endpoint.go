// Package endpoint turns CSI-style endpoint strings into listening Unix sockets.
//
// Every socket monocsi serves (CSI endpoints, kubelet registration sockets) goes
// through Listen, so stale-socket handling and permissions are decided once.
package endpoint

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
)

// Path returns the filesystem path of a Unix endpoint given as
// "unix:///abs/path", "unix:/abs/path" or a plain absolute path.
func Path(ep string) (string, error) {
	p := ep
	switch {
	case strings.HasPrefix(ep, "unix://"):
		p = strings.TrimPrefix(ep, "unix://")
	case strings.HasPrefix(ep, "unix:"):
		p = strings.TrimPrefix(ep, "unix:")
	case strings.Contains(ep, "://"):
		return "", fmt.Errorf("endpoint %q: only unix sockets are supported", ep)
	}
	if p == "" || !filepath.IsAbs(p) {
		return "", fmt.Errorf("endpoint %q: need an absolute socket path, e.g. unix:///run/csi.sock", ep)
	}
	return filepath.Clean(p), nil
}

// Listen creates the parent directory, removes a stale socket left by an
// earlier run (never any other kind of file) and listens on path. The socket
// file gets mode perm: kubelet and monocsi run as root, nobody else needs it.
func Listen(path string, perm os.FileMode) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if err := RemoveStale(path); err != nil {
		return nil, err
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	// The listener must not unlink the path on Close: a newer listener may
	// already own it (see registrar's re-creation loop).
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(path, perm); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return l, nil
}

// RemoveStale removes path if it is a socket; a missing path is fine and any
// other file is an error, so a mistyped endpoint never deletes user data.
func RemoveStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket; refusing to replace it", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	return nil
}
