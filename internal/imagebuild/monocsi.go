package imagebuild

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Tools are the programs monocsi runs, at the paths Debian bookworm's
// packages install them (see image/packages.lock): mount-utils' mount,
// umount, findmnt, blkid, fsck and the mkfs/resize tools; losetup for
// block volumes; mount.nfs for NFS (without it the kernel refuses an NFS
// mount: "mount program didn't pass remote address"); nsenter to run
// FlexVolume executables in the host's mount namespace.
var Tools = []string{
	"/bin/mount", "/bin/umount", "/sbin/losetup", // mount
	"/bin/findmnt", "/sbin/blkid", "/sbin/blockdev", "/sbin/fsck", "/usr/bin/nsenter", // util-linux
	"/sbin/mount.nfs", "/sbin/mount.nfs4", "/sbin/umount.nfs", "/sbin/umount.nfs4", // nfs-common
	"/sbin/mke2fs", "/sbin/mkfs.ext4", "/sbin/mkfs.ext3", "/sbin/e2fsck", "/sbin/fsck.ext4", "/sbin/resize2fs", "/sbin/tune2fs", // e2fsprogs
	"/sbin/mkfs.xfs", "/usr/sbin/xfs_growfs", "/sbin/xfs_repair", // xfsprogs
}

// DataFiles are configuration the tools read.
var DataFiles = []string{
	"/etc/mke2fs.conf", // e2fsprogs: mkfs defaults
	"/etc/netconfig",   // libtirpc-common: mount.nfs's RPC transports
	// netbase: protocol, service and RPC program names, which mount.nfs
	// looks up for NFSv3 (without them: "Protocol not supported").
	"/etc/protocols", "/etc/services", "/etc/rpc",
}

// MonocsiFiles returns the root filesystem of monocsi's image for one
// platform: the binary as /monocsi, the tools and data files taken from
// the packages extracted under tree, with every library they load.
func MonocsiFiles(tree, monocsiBin string, p Platform) ([]File, error) {
	r := NewRootfs(tree)
	for _, t := range Tools {
		if err := r.AddELF(t, p.Triple); err != nil {
			return nil, fmt.Errorf("%s image: %w", p.Debian, err)
		}
	}
	for _, d := range DataFiles {
		if _, err := r.Add(d); err != nil {
			return nil, fmt.Errorf("%s image: %w", p.Debian, err)
		}
	}
	files := append(r.Files(),
		File{Path: "/monocsi", Mode: 0o755, Src: monocsiBin},
		// mount and findmnt read the mount table from /etc/mtab.
		File{Path: "/etc/mtab", Link: "/proc/self/mounts"},
		File{Path: "/tmp", Mode: os.ModeDir | os.ModeSticky | 0o777},
	)
	for _, d := range []string{"/proc", "/sys", "/dev", "/run"} {
		files = append(files, File{Path: d, Mode: os.ModeDir | 0o755})
	}
	return files, nil
}

// Monocsi builds the multi-arch image and writes it to the OCI archive out,
// named ref: for each platform with a binary in bins (by Debian
// architecture), the pinned packages of lock are fetched (cached under
// cache), extracted into a scratch tree and reduced to MonocsiFiles.
// version is recorded in the image's labels. It returns the image's digest.
func Monocsi(ctx context.Context, lock, cache string, bins map[string]string, version, out, ref string) (v1.Hash, error) {
	_, pkgs, err := ReadPackages(lock)
	if err != nil {
		return v1.Hash{}, err
	}
	var want []Package
	for _, p := range pkgs {
		if _, ok := bins[p.Arch]; ok {
			want = append(want, p)
		}
	}
	debs, err := FetchPackages(ctx, cache, want)
	if err != nil {
		return v1.Hash{}, err
	}
	// The layers are read from the extracted trees while the archive is
	// written: the scratch directory lives until then.
	scratch, err := os.MkdirTemp("", "monocsi-image-")
	if err != nil {
		return v1.Hash{}, err
	}
	defer os.RemoveAll(scratch)
	imgs := map[string]v1.Image{}
	for arch, bin := range bins {
		p, ok := PlatformByDebian(arch)
		if !ok {
			return v1.Hash{}, fmt.Errorf("unknown architecture %q", arch)
		}
		if len(debs[arch]) == 0 {
			return v1.Hash{}, fmt.Errorf("%s: no packages pinned for %s", lock, arch)
		}
		tree := filepath.Join(scratch, arch)
		if err := Extract(ctx, tree, debs[arch]); err != nil {
			return v1.Hash{}, err
		}
		files, err := MonocsiFiles(tree, bin, p)
		if err != nil {
			return v1.Hash{}, err
		}
		img, err := Image(p.OCI, Config{
			Entrypoint: []string{"/monocsi"},
			Env:        []string{PATH},
			Labels: map[string]string{
				"org.opencontainers.image.title":   "monocsi",
				"org.opencontainers.image.version": version,
			},
		}, files)
		if err != nil {
			return v1.Hash{}, err
		}
		imgs[arch] = img
	}
	idx, err := Index(imgs)
	if err != nil {
		return v1.Hash{}, err
	}
	if err := WriteOCIArchive(out, ref, idx); err != nil {
		return v1.Hash{}, err
	}
	return idx.Digest()
}
