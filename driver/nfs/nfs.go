// Package nfs is the NFS driver: a volume is a sub-directory of an existing
// NFS share, created and removed by the controller through a short-lived
// mount of the share, and mounted by the node straight from the server.
// It does what kubernetes-csi/csi-driver-nfs does, with its parameters and
// volume handles, so its volumes keep working under monocsi.
package nfs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/monocsi/monocsi/driver"
)

// DefaultName is the CSI driver name of the NFS driver. Set it to
// csi-driver-nfs's "nfs.csi.k8s.io" to take over that driver's volumes.
const DefaultName = "nfs.csi.monocsi.io"

// DefaultWorkDir holds the controller's short-lived mounts of shares.
const DefaultWorkDir = "/tmp/monocsi-nfs"

// Config configures an NFS driver.
type Config struct {
	Name    string // CSI driver name; DefaultName when empty
	NodeID  string
	Version string // reported as vendor_version
	// WorkDir holds the controller's working mounts; DefaultWorkDir when empty.
	WorkDir string
	// OnDelete is what DeleteVolume does when the volume does not say:
	// delete (the default), retain or archive.
	OnDelete string
	// MountTimeout bounds every mount (30 s when zero); each unmount step
	// (plain, forced, lazy) gets a third of it.
	MountTimeout time.Duration
}

// Driver serves NFS sub-directory volumes.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	name, nodeID, version, workDir, onDelete string
	run                                      runner
	locks                                    driver.Locks
	own                                      driver.Reserved // the work directory: no target in, on or above it
	statMu                                   sync.Mutex
	statting                                 map[string]bool // paths with a statfs in flight
}

var _ driver.Driver = (*Driver)(nil)

// New checks the configuration and clears working mounts a previous process
// left behind when it was killed mid-call.
func New(c Config) (*Driver, error) {
	if c.Name == "" {
		c.Name = DefaultName
	}
	if c.WorkDir == "" {
		c.WorkDir = DefaultWorkDir
	}
	if c.OnDelete == "" {
		c.OnDelete = onDeleteDelete
	}
	if c.MountTimeout == 0 {
		c.MountTimeout = 30 * time.Second
	}
	if c.NodeID == "" {
		return nil, fmt.Errorf("nfs driver: a node ID is required (--node-id)")
	}
	switch c.OnDelete {
	case onDeleteDelete, onDeleteRetain, onDeleteArchive:
	default:
		return nil, fmt.Errorf("nfs driver: default onDelete %q must be delete, retain or archive", c.OnDelete)
	}
	if !filepath.IsAbs(c.WorkDir) {
		return nil, fmt.Errorf("nfs driver: work directory %q must be an absolute path", c.WorkDir)
	}
	d := &Driver{
		name: c.Name, nodeID: c.NodeID, version: c.Version, workDir: filepath.Clean(c.WorkDir), onDelete: c.OnDelete,
		run: runner{timeout: c.MountTimeout, unmountTimeout: c.MountTimeout / 3},
	}
	if err := os.MkdirAll(d.workDir, 0o700); err != nil {
		return nil, fmt.Errorf("nfs driver: create work directory: %w", err)
	}
	var err error
	if d.own, err = driver.Reserve("the nfs driver's work directory (its working mounts of shares)", d.workDir); err != nil {
		return nil, fmt.Errorf("nfs driver: %w", err)
	}
	if err := d.clearWorkDir(); err != nil {
		return nil, fmt.Errorf("nfs driver: %w", err)
	}
	return d, nil
}

// clearWorkDir unmounts and removes every working mount point left in the
// work directory.
func (d *Driver) clearWorkDir() error {
	entries, err := os.ReadDir(d.workDir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		p := filepath.Join(d.workDir, e.Name())
		if err := d.run.unmount(context.Background(), p); err != nil {
			return fmt.Errorf("clear leftover working mount %s: %w", p, err)
		}
		if err := os.Remove(p); err != nil {
			return fmt.Errorf("clear leftover working mount %s: %w", p, err)
		}
		klog.InfoS("Removed a working mount left by an earlier process", "path", p)
	}
	return nil
}

// withShare mounts server:share in a fresh working directory, runs fn with
// the share's root opened as an os.Root (every path fn uses stays inside the
// share, whatever symlinks the share holds), and always unmounts and removes
// the working directory. The working mount is soft unless the options say
// otherwise, and fn is abandoned when ctx ends (the mount is then forced
// off, which fails its pending calls on a dead server): a server that dies
// mid-operation costs an error, not a stuck call.
//
// Abandoned work may still go on through its open descriptors (a removal, a
// copy on a server that answers slowly), so fn holds lk until it returns:
// the volume stays locked, and a retry gets ABORTED instead of running beside
// it. lk may be nil for an operation that takes no lock.
func (d *Driver) withShare(ctx context.Context, lk *driver.Lock, server, share string, opts []string, fn func(*os.Root) error) (err error) {
	dir, err := os.MkdirTemp(d.workDir, "share-")
	if err != nil {
		return internal("create working mount point: %v", err)
	}
	defer func() {
		if uerr := d.run.unmount(context.Background(), dir); uerr != nil {
			klog.ErrorS(uerr, "Working mount left behind; it is cleared at the next start", "path", dir)
			err = firstErr(err, uerr)
			return
		}
		if rerr := os.Remove(dir); rerr != nil && err == nil {
			err = internal("remove working mount point %s: %v", dir, rerr)
		}
	}()
	if err := d.run.mountNFS(ctx, mountHost(server)+":"+share, dir, workingOptions(opts)); err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return internal("open the share's root: %v", err)
	}
	done := make(chan error, 1)
	release := lk.Hold()
	go func() {
		err := fn(root)
		root.Close()
		release() // before the result: a caller that got it may retry at once
		done <- err
	}()
	select {
	case err = <-done:
		return err
	case <-ctx.Done():
	}
	klog.ErrorS(ctx.Err(), "Call ended during an operation on the share; the working mount is forced off, and the operation keeps the volume locked until it returns", "server", server, "share", share)
	return status.Errorf(status.FromContextError(ctx.Err()).Code(), "%s:%s: the call ended (%v) before the operation on the share did; the volume stays locked until it returns (is the NFS server reachable?)", server, share, ctx.Err())
}

// workingOptions makes the controller's short-lived mounts soft (a call
// fails with EIO instead of hanging when the server goes) unless the user's
// options choose.
func workingOptions(opts []string) []string {
	for _, o := range opts {
		if o == "hard" || o == "soft" {
			return opts
		}
	}
	return append(slices.Clone(opts), "soft", "timeo=50", "retrans=2")
}

// Drain waits for work abandoned calls left running on shares (driver.Drainer).
func (d *Driver) Drain(ctx context.Context) error { return d.locks.Wait(ctx) }
