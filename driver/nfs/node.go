package nfs

import (
	"context"
	"os"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/monocsi/monocsi/driver"
)

// source is what a node mounts for a volume: from its volume attributes
// (dynamic PVs, static PVs written by hand, inline volumes), or from the
// handle when the attributes do not name a server.
func source(id string, attrs map[string]string) (src string, p params, err error) {
	if _, ok := lookup(attrs, paramServer); ok {
		if p, err = parseParams(attrs, false); err != nil {
			return "", p, err
		}
		if p.hasSubDir {
			if p.subDir, err = expand(p.subDir, attrs); err != nil {
				return "", p, err
			}
		}
	} else {
		v, herr := parseHandle(id)
		if herr != nil {
			return "", p, status.Errorf(codes.InvalidArgument, "volume %q names no server in its attributes, and its ID is not an NFS volume handle", driver.Printable(id))
		}
		p = params{server: v.server, share: v.share, subDir: v.subDir, hasSubDir: true}
	}
	src = mountHost(p.server) + ":" + p.share
	if p.hasSubDir && strings.Trim(p.subDir, "/") != "" {
		if err := checkSubDir(strings.TrimSuffix(p.subDir, "/")); err != nil {
			return "", p, err
		}
		src = strings.TrimRight(src, "/") + "/" + strings.TrimSuffix(p.subDir, "/")
	}
	return src, p, nil
}

// lookup finds a key in any case.
func lookup(m map[string]string, key string) (string, bool) {
	for k, v := range m {
		if strings.EqualFold(k, key) {
			return v, true
		}
	}
	return "", false
}

// NodePublishVolume mounts server:share/subDir at the target path with the
// PV's mount options, read-only when asked.
func (d *Driver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	id, target, vc := req.GetVolumeId(), req.GetTargetPath(), req.GetVolumeCapability()
	if err := driver.CheckText("volume ID", id, maxHandleLen); err != nil {
		return nil, err
	}
	if err := driver.CheckHostPath("target path", target, d.own); err != nil {
		return nil, err
	}
	if err := checkCapabilities([]*csi.VolumeCapability{vc}); err != nil {
		return nil, err
	}
	src, p, err := source(id, req.GetVolumeContext())
	if err != nil {
		return nil, err
	}
	opts := append([]string{}, vc.GetMount().GetMountFlags()...)
	if more, _ := splitOptions(p.mountOptions); len(more) > 0 {
		opts = append(opts, more...)
	}
	if err := checkOptions(opts); err != nil {
		return nil, err
	}
	readOnly := driver.ReadOnly(vc, req.GetReadonly())
	if readOnly {
		opts = append(opts, "ro")
	}
	if req.GetVolumeContext()["csi.storage.k8s.io/ephemeral"] == "true" {
		// An inline volume's server and options are the pod author's, not
		// an administrator's: no setuid programs or device files from it.
		opts = append(opts, "nosuid", "nodev")
	}

	unlock, err := d.locks.TryLock(target)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if m, err := mounted(target); err != nil {
		return nil, internal("read the mount table: %v", err)
	} else if m {
		return &csi.NodePublishVolumeResponse{}, nil
	}
	created, err := driver.MkdirHostPath("target path", target, 0o750, false, d.own)
	if err != nil {
		return nil, err
	}
	if err := d.run.mountNFS(ctx, src, target, opts); err != nil {
		if created {
			_ = driver.RemoveHostDir("target path", target)
		}
		return nil, err
	}
	if p.mountPermissions > 0 && !readOnly {
		// The mount root's mode is the server's; applied after every mount,
		// as csi-driver-nfs does, so pods of any user can write when asked.
		if err := os.Chmod(target, fileMode(p.mountPermissions)); err != nil {
			klog.ErrorS(err, "Cannot apply mountPermissions to the volume", "target", target)
		} else if fi, err := os.Stat(target); err == nil && modeBits(fi.Mode()) != p.mountPermissions {
			klog.ErrorS(nil, "The server does not keep mountPermissions on the volume", "target", target, "want", p.mountPermissions, "got", modeBits(fi.Mode()))
		}
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

// NodeUnpublishVolume unmounts the target and removes it. A mount whose
// server is gone is forced or detached lazily, so the call returns in
// bounded time and the pod can go.
func (d *Driver) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	if err := driver.CheckText("volume ID", id, maxHandleLen); err != nil {
		return nil, err
	}
	if err := driver.CheckHostPath("target path", target, d.own); err != nil {
		return nil, err
	}
	unlock, err := d.locks.TryLock(target)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := d.run.unmount(ctx, target); err != nil {
		return nil, err
	}
	if err := driver.RemoveHostDir("target path", target); err != nil {
		return nil, err
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// NodeGetVolumeStats reports the share's bytes and inodes (a sub-directory
// has no quota). statfs is bounded: a dead server must not hold the kubelet.
func (d *Driver) NodeGetVolumeStats(_ context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	id, p := req.GetVolumeId(), req.GetVolumePath()
	if err := driver.CheckText("volume ID", id, maxHandleLen); err != nil {
		return nil, err
	}
	if err := driver.CheckText("volume path", p, 4096); err != nil {
		return nil, err
	}
	if m, err := mounted(p); err != nil {
		return nil, internal("read the mount table: %v", err)
	} else if !m {
		return nil, status.Errorf(codes.NotFound, "volume %s is not mounted at %s", driver.Printable(id), p)
	}
	r, err := d.statfs(p)
	if err != nil {
		return nil, err
	}
	st, bs := r.st, r.st.Bsize
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
		{Unit: csi.VolumeUsage_BYTES, Total: int64(st.Blocks) * bs, Available: int64(st.Bavail) * bs, Used: int64(st.Blocks-st.Bfree) * bs},
		{Unit: csi.VolumeUsage_INODES, Total: int64(st.Files), Available: int64(st.Ffree), Used: int64(st.Files - st.Ffree)},
	}}, nil
}

type statfsResult struct {
	st  unix.Statfs_t
	err error
}

// statfs asks for a mount's usage, bounded: on a dead server statfs never
// returns, so at most one call per path is left waiting, and callers meanwhile
// get UNAVAILABLE at once instead of stacking up stuck threads.
func (d *Driver) statfs(p string) (statfsResult, error) {
	d.statMu.Lock()
	if d.statting == nil {
		d.statting = map[string]bool{}
	}
	if d.statting[p] {
		d.statMu.Unlock()
		return statfsResult{}, status.Errorf(codes.Unavailable, "statfs %s: an earlier call has not returned; is the NFS server reachable?", p)
	}
	d.statting[p] = true
	d.statMu.Unlock()
	done := make(chan statfsResult, 1)
	go func() {
		var r statfsResult
		r.err = unix.Statfs(p, &r.st)
		d.statMu.Lock()
		delete(d.statting, p)
		d.statMu.Unlock()
		done <- r
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return r, internal("statfs %s: %v", p, r.err)
		}
		return r, nil
	case <-time.After(d.run.unmountTimeout):
		return statfsResult{}, status.Errorf(codes.Unavailable, "statfs %s: no answer within %s; is the NFS server reachable?", p, d.run.unmountTimeout)
	}
}

// NodeGetInfo returns the node ID; NFS volumes are reachable from every node.
func (d *Driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: d.nodeID}, nil
}

// NodeGetCapabilities lists the node RPCs the driver implements.
func (d *Driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return driver.NodeCapabilities(
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
	), nil
}
