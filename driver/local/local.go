// Package local is the node-local volume driver: a volume is a directory under
// a root directory on one node, bind-mounted into pods. It needs no storage
// server, which makes it the default for edge and single-node clusters.
//
// Layout under the root:
//
//	<root>/<volume-id>/                           the volume's data
//	<root>/<volume-id>                            a block volume's data: a sparse file (see block.go)
//	<root>/.monocsi/<volume-id>.json              its record (capacity, creation time, project ID)
//	<root>/.monocsi/snapshots/<snap-id>.tar.gz    a snapshot's archive
//	<root>/.monocsi/snapshots/<snap-id>.json      its record
//	<root>/.monocsi/new/<volume-id>/              a clone or restore being filled
//	<root>/.monocsi/lock                          held by the one driver serving the root
//
// The record is the commit point: a volume exists exactly when its record
// does. CreateVolume makes the directory first and the record last;
// DeleteVolume removes the directory first and the record last, so an
// interrupted call leaves either an empty directory that the retry adopts or a
// record whose retry finishes the deletion — never a record-less directory of
// old data that a new volume of the same name could inherit.
//
// Sizes are enforced where the root's filesystem has project quotas (XFS
// mounted with prjquota, ext4 with the quota and project features mounted
// with prjquota): each volume's directory gets a project ID of its own,
// whose block limit is the volume's size (see quota.go). Elsewhere sizes
// are checked against free space only, and the StorageClass parameter
// enforceSize: "true" makes CreateVolume fail instead.
package local

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"

	"github.com/monocsi/monocsi/driver"
	"github.com/monocsi/monocsi/internal/filelock"
)

// DefaultName is the CSI driver name of the local driver.
const DefaultName = "local.csi.monocsi.io"

// DefaultRoot is where volumes live unless configured otherwise.
const DefaultRoot = "/var/lib/monocsi/local"

const metaDirName = ".monocsi"

// Config configures a local driver.
type Config struct {
	Name    string // CSI driver name; DefaultName when empty
	NodeID  string // this node's name; also the topology value volumes pin to
	Root    string // directory holding the volumes; DefaultRoot when empty
	Version string // reported as vendor_version
	// Mounter performs mounts; mount.New("") when nil.
	Mounter mount.Interface

	// quota replaces the detection of the root's project quotas (tests).
	quota quotaFS
	// firstID, lastID replace the project ID range (tests).
	firstID, lastID uint32
	// loopControl replaces /dev/loop-control (tests: one that does not open).
	loopControl string
	// walkTimeout, walkTTL, walkers replace the bounds of the usage walks (tests).
	walkTimeout, walkTTL time.Duration
	walkers              int
}

// ParamEnforceSize is the StorageClass parameter that requires ("true") or
// refuses ("false") enforced sizes; without it sizes are enforced where the
// root's filesystem can.
const ParamEnforceSize = "enforceSize"

// Driver serves local volumes of one node.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	name, nodeID, root, version string
	mounter                     mount.Interface
	locks                       driver.Locks
	// own is the root as a reserved directory: no target may be in, on or
	// above it. meta is the record directory as New found it, so a mount
	// over it (or over the root) is noticed before a record is written.
	own  driver.Reserved
	meta driver.Reserved

	// quota enforces sizes on the root's filesystem; nil where it cannot
	// (noQuota says why).
	quota   quotaFS
	noQuota string
	ids     *projectIDs
	walks   *walker

	// loopControl is the loop control device; noLoop says why block
	// volumes cannot be served here ("" where they can).
	loopControl, noLoop string

	// unlockRoot releases the root's lock (see lockRoot).
	unlockRoot func()
}

var _ driver.Driver = (*Driver)(nil)

// New checks the configuration and prepares the root directory.
func New(c Config) (*Driver, error) {
	if c.Name == "" {
		c.Name = DefaultName
	}
	if c.Root == "" {
		c.Root = DefaultRoot
	}
	if c.Mounter == nil {
		c.Mounter = mount.New("")
	}
	if c.NodeID == "" {
		return nil, fmt.Errorf("local driver: a node ID is required (--node-id)")
	}
	if !filepath.IsAbs(c.Root) {
		return nil, fmt.Errorf("local driver: root %q must be an absolute path", c.Root)
	}
	if err := os.MkdirAll(filepath.Clean(c.Root), 0o711); err != nil {
		return nil, fmt.Errorf("local driver: create root: %w", err)
	}
	// The root with its symlinks resolved: the mount table, and the checks
	// of target paths (which refuse symlinks), see real paths.
	root, err := filepath.EvalSymlinks(c.Root)
	if err != nil {
		return nil, fmt.Errorf("local driver: root: %w", err)
	}
	d := &Driver{name: c.Name, nodeID: c.NodeID, root: root, version: c.Version, mounter: c.Mounter}
	for _, dir := range []string{d.recordDir(), d.snapshotDir(), d.newDir()} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("local driver: create %s: %w", dir, err)
		}
	}
	if d.unlockRoot, err = lockRoot(root, d.rootLock()); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			d.Close()
		}
	}()
	if d.own, err = driver.Reserve("the local driver's root (volumes' data and the driver's records)", root); err != nil {
		return nil, fmt.Errorf("local driver: root: %w", err)
	}
	if d.meta, err = driver.Reserve("the local driver's record directory", d.recordDir()); err != nil {
		return nil, fmt.Errorf("local driver: %w", err)
	}
	if c.walkTimeout == 0 {
		c.walkTimeout = defaultWalkTimeout
	}
	if c.walkTTL == 0 {
		c.walkTTL = defaultWalkTTL
	}
	if c.walkers == 0 {
		c.walkers = defaultWalkers
	}
	d.walks = newWalker(c.walkTimeout, c.walkTTL, c.walkers)
	if c.firstID == 0 {
		c.firstID, c.lastID = firstProjectID, lastProjectID
	}
	d.ids = newProjectIDs(c.firstID, c.lastID)
	d.quota = c.quota
	if d.quota == nil {
		d.quota, d.noQuota = detectQuota(root)
	}
	if err := d.loadProjects(); err != nil {
		return nil, err
	}
	d.loopControl = c.loopControl
	if d.loopControl == "" {
		d.loopControl = defaultLoopControl
	}
	if ok, why := loopSupport(d.loopControl); !ok {
		d.noLoop = why
		klog.InfoS("Block volumes are not served on this node", "reason", why)
	}
	d.reconcileLoops()
	ok = true
	return d, nil
}

// lockRoot takes the root's lock, waiting while another process holds it:
// one driver per root, or each would take the other's published loop
// devices for leaks and reuse its free project IDs. A DaemonSet update
// that starts the new pod before the old one exits waits here.
func lockRoot(root, path string) (func(), error) {
	unlock, err := filelock.Lock(path, func() {
		klog.InfoS("Another process serves this local root; waiting until it exits", "root", root, "lock", path)
	})
	if err != nil {
		return nil, fmt.Errorf("local driver: lock the root: %w", err)
	}
	return unlock, nil
}

// Close releases the root for another driver; d serves nothing after it.
func (d *Driver) Close() {
	if d.unlockRoot != nil {
		d.unlockRoot()
		d.unlockRoot = nil
	}
}

// loadProjects marks the recorded project IDs used and, where quotas are
// on, puts back a limit that differs from the recorded size. It logs once
// whether sizes are enforced on the root.
func (d *Driver) loadProjects() error {
	ids, err := listIDs(d.recordDir())
	if err != nil {
		return fmt.Errorf("local driver: list volumes: %w", err)
	}
	enforced, fixed := 0, 0
	for _, id := range ids {
		rec, err := d.readRecord(id)
		if err != nil || rec == nil || rec.ProjectID == 0 {
			continue
		}
		enforced++
		if err := d.ids.add(rec.ProjectID, id); err != nil {
			klog.ErrorS(err, "Damaged volume records", "root", d.root)
		}
		if d.quota == nil {
			continue
		}
		if u, err := d.quota.Usage(rec.ProjectID); err != nil || u.LimitBytes != limitOf(d.quota, rec.CapacityBytes) {
			if err := d.quota.SetLimit(rec.ProjectID, rec.CapacityBytes); err != nil {
				klog.ErrorS(err, "Cannot restore a volume's quota limit", "volumeID", id, "projectID", rec.ProjectID)
				continue
			}
			fixed++
		}
	}
	if d.quota == nil {
		klog.InfoS("Volume sizes are NOT enforced on this root: volumes can fill the filesystem", "root", d.root, "reason", d.noQuota, "volumesRecordedAsEnforced", enforced)
		return nil
	}
	klog.InfoS("Volume sizes are enforced with project quotas", "root", d.root, "filesystem", d.quota.Kind(), "enforcedVolumes", enforced, "limitsRestored", fixed)
	return nil
}

// limitOf is the limit the filesystem keeps for n bytes: n rounded up to
// its quota unit.
func limitOf(q quotaFS, n int64) int64 {
	if q.Kind() == "ext4" {
		return int64(roundUp(n, qifDQBlock) << qifDQBlock)
	}
	return int64(roundUp(n, xfsBBShift) << xfsBBShift)
}

// checkStorage fails when the root or the record directory is no longer
// the directory New found: something is mounted over it (or it was
// replaced), and a record written now would land in someone else's data.
func (d *Driver) checkStorage() error {
	for _, r := range []driver.Reserved{d.own, d.meta} {
		now, err := driver.Reserve("", r.Path())
		if err != nil || !now.Same(r) {
			return status.Errorf(codes.FailedPrecondition,
				"%s is no longer the directory the driver started with (is something mounted over it?); refusing to touch it", r.Path())
		}
	}
	return nil
}

// topology is the segment every volume of this node is accessible from.
func (d *Driver) topology() *csi.Topology {
	return &csi.Topology{Segments: map[string]string{driver.TopologyKeyNode: d.nodeID}}
}

func (d *Driver) volumeDir(id string) string { return filepath.Join(d.root, id) }
