#!/bin/bash
# build-image.sh OUT — builds the NFS test VM into OUT: linux.uml (a Linux
# kernel that runs as a host process: User-Mode Linux) and rootfs.img (an ext4
# Debian root with the kernel NFS server). Why a VM: the kernel running the
# tests may have no NFS client or server, and a software /dev/kvm cannot boot
# a stock kernel; UML boots a real 6.1 kernel in seconds without either.
# boot.sh calls this into a temp dir and renames it when it succeeded.
# Needs root (debootstrap, chroot).
set -euo pipefail
OUT=${1:?usage: build-image.sh OUT}
SRC=$(cd "$(dirname "$0")" && pwd)
SUITE=bookworm # the rootfs; the UML kernel comes from the host's apt
t() { echo "[$(date +%T)] $*"; }
[ "$(id -u)" = 0 ] || { echo "build-image.sh: needs root (debootstrap, chroot)" >&2; exit 1; }
# The only backend is User-Mode Linux (Debian's user-mode-linux, amd64); where
# it cannot be had, say so and skip (exit 77).
command -v apt-get >/dev/null || { echo "SKIP: no VM backend for the NFS tests: no apt-get to fetch Debian's user-mode-linux"; exit 77; }
export DEBIAN_FRONTEND=noninteractive

# Host tools, installed when missing (as test/cluster does): a fresh CI
# machine has none of them.
missing=()
for p in debootstrap:/usr/sbin/debootstrap e2fsprogs:/usr/sbin/mkfs.ext4 dpkg:/usr/bin/dpkg-deb; do
  [ -e "${p#*:}" ] || missing+=("${p%%:*}")
done
if ! apt-cache show user-mode-linux >/dev/null 2>&1 || [ ${#missing[@]} -gt 0 ]; then
  t "apt-get update"; apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
  t "installing host packages: ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
apt-cache show user-mode-linux >/dev/null 2>&1 ||
  { echo "SKIP: no VM backend for the NFS tests: Debian's user-mode-linux is not available from this machine's apt ($(dpkg --print-architecture))"; exit 77; }

# The Debian mirror apt already uses (a CI machine may only reach that one).
MIRROR=${MIRROR:-$(awk '/^URIs:/ && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)}
MIRROR=${MIRROR:-$(awk '$1 == "deb" && $3 == "'$SUITE'" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

mkdir -p "$OUT/work"; OUT=$(cd "$OUT" && pwd); cd "$OUT/work"
# Mounts debootstrap may leave behind if interrupted must not survive us.
trap '{ grep -o " $OUT/work/[^ ]*" /proc/mounts | sort -r | xargs -r umount -l; rm -rf --one-file-system "$OUT/work"; } || true' EXIT

t "download user-mode-linux"
apt-get download -q user-mode-linux 2>&1 | grep -v '^W:' || true
dpkg-deb -x user-mode-linux_*.deb uml
UV=$(ls uml/usr/lib/uml/modules)

t "debootstrap $SUITE from $MIRROR"
# nfs-kernel-server: rpc.nfsd, mountd, exportfs; nfs-common: mount.nfs, statd.
# util-linux/mount come with minbase (mount, findmnt); busybox: poweroff -f;
# jq (and minbase's bash): the FlexVolume script the tests run on the "host".
# xfsprogs, e2fsprogs: mkfs.xfs, mkfs.ext4 -O quota,project and xfs_quota
# (which reads XFS and ext4 project quotas) for the local driver's suite.
debootstrap --variant=minbase --include=nfs-kernel-server,nfs-common,kmod,iproute2,procps,busybox,jq,xfsprogs,e2fsprogs \
  "$SUITE" rootfs "$MIRROR" > debootstrap.log 2>&1 || { tail -30 debootstrap.log; exit 1; }

t "guest init, server scripts, kernel modules"
rm -rf rootfs/var/cache/apt/archives/*.deb rootfs/var/cache/apt/*.bin rootfs/var/lib/apt/lists/*_Packages \
  rootfs/usr/share/{locale,doc,man,info}/*
install -m755 "$SRC/guest-init" rootfs/sbin/nfsvm-init
# For tests of a dead server (MONOCSI_NFS_SERVER_STOP/START): stopping the
# threads closes the sockets, so clients' I/O hangs (hard) or fails (soft).
# -G/-L 10: grace and lease of 10 s, so a restarted server serves soon again.
printf '#!/bin/sh\n# stops serving NFS: clients see a dead server\nexportfs -ua\nrpc.nfsd 0\n' > rootfs/usr/local/sbin/nfs-server-stop
printf '#!/bin/sh\n# serves NFS again after nfs-server-stop\nrpc.nfsd -G 10 -L 10 4\nexportfs -ra\n' > rootfs/usr/local/sbin/nfs-server-start
chmod 755 rootfs/usr/local/sbin/nfs-server-{stop,start}
# Only the modules the suites need (the full set is ~10x the size): NFS,
# loop devices, and quota_v2 (ext4's quota feature; XFS quota is built in).
mkdir -p rootfs/usr/lib/modules
cp -a "uml/usr/lib/uml/modules/$UV" full
cp -a full "rootfs/usr/lib/modules/$UV"
chroot rootfs depmod -a "$UV"
keep=$(chroot rootfs sh -c "for m in nfsd nfsv3 nfsv4 loop overlay quota_v2; do modprobe -S $UV --show-depends \$m 2>/dev/null; done" | awk '/^insmod/{print $2}' | sort -u)
rm -rf "rootfs/usr/lib/modules/$UV"; mkdir -p "rootfs/usr/lib/modules/$UV"
for m in $keep; do
  r=${m#/lib/modules/$UV/}; mkdir -p "rootfs/usr/lib/modules/$UV/$(dirname "$r")"; cp "full/$r" "rootfs/usr/lib/modules/$UV/$r"
done
cp full/modules.builtin* full/modules.order "rootfs/usr/lib/modules/$UV/" 2>/dev/null || true
chroot rootfs depmod -a "$UV"
# The UML kernel has no IPv6: without these lines rpcbind/mountd try it and complain.
sed -i '/^udp6\|^tcp6/d' rootfs/etc/netconfig

t "ext4 image"
# Initialized up front: lazy init writes zeroes the UML block driver rejects (noisy console).
mkfs.ext4 -q -F -L nfsvm -E lazy_itable_init=0,lazy_journal_init=0 -d rootfs ../rootfs.img 1G
cp uml/usr/bin/linux.uml ../linux.uml
t "done"; du -sh ../rootfs.img ../linux.uml
