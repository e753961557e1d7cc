#!/bin/bash
# e2e.sh IMAGEROOT SANITY_TEST — the real-kernel tier (`make e2e-kernel`;
# `make e2e-nfs` is its NFS suite alone): the root filesystem of the image
# users run (`make image`, linux/amd64, unpacked) and the static test binary
# go into a fresh share directory with a generated run.sh, the test VM boots
# once (boot.sh), and the guest runs every suite of KERNEL_SUITES:
#   nfs    the NFS driver's tests against the guest's own kernel NFS server,
#          once per nfsvers (4.1 and 3)
#   local  the local driver's project-quota tests and csi-sanity on an XFS
#          loop filesystem mounted with prjquota and on an ext4 one made with
#          -O quota,project and mounted with prjquota
# monocsi runs chrooted in that root filesystem, as in its container: its
# mount, mount.nfs and libraries are the image's, not the guest's;
# FlexVolume scripts reach the guest's root through nsenter, as they reach a
# node's in a cluster.
# Prints each run's summary (and its tail on failure), writes everything to
# KERNEL_OUT. Exit 0 all passed, or SKIP (no VM backend); else 1.
#   KERNEL_SUITES       the suites (default "nfs local")
#   KERNEL_OUT          the full output (default e2e-kernel.out in the checkout)
#   MONOCSI_NFSVM_RUN   -test.run pattern of the nfs suite (default NFS: the NFS driver's tests)
#   MONOCSI_LOCALVM_RUN -test.run pattern of the local suite (default LocalQuota|LocalBlock)
#   NFSVM_TIMEOUT       bound of the whole VM run in seconds (default 420 per nfs run, 120 per local run, plus 60)
#   NFSVM_VERSIONS      the nfsvers values, one run each (default "4.1 3")
#   LOCALVM_FS          the filesystems of the local suite, one run each (default "xfs ext4")
set -uo pipefail
IMAGEROOT=$(realpath "${1:?usage: e2e.sh IMAGEROOT SANITY_TEST}") SANITY=$(realpath "${2:?usage: e2e.sh IMAGEROOT SANITY_TEST}") || exit 1
[ -x "$IMAGEROOT/monocsi" ] && [ -x "$IMAGEROOT/sbin/mount.nfs" ] || { echo "FAIL: $IMAGEROOT is not monocsi's image root (no /monocsi or /sbin/mount.nfs)"; exit 1; }
SRC=$(cd "$(dirname "$0")" && pwd)
SUITES=${KERNEL_SUITES:-nfs local}
OUT=${KERNEL_OUT:-$(cd "$SRC/../.." && pwd)/e2e-kernel.out}
RUN=${MONOCSI_NFSVM_RUN:-NFS}
LOCALRUN=${MONOCSI_LOCALVM_RUN:-LocalQuota|LocalBlock}
VERSIONS=${NFSVM_VERSIONS:-4.1 3} # nfsvers values, one run each
FSES=${LOCALVM_FS:-xfs ext4}      # local suite filesystems, one run each
# The runs, by name; each one's output is name.out in the share.
runs=()
for s in $SUITES; do
  case $s in
    nfs) for v in $VERSIONS; do runs+=("nfsvers=$v"); done ;;
    local) for f in $FSES; do runs+=("local-$f"); done ;;
    *) echo "FAIL: unknown suite $s in KERNEL_SUITES (nfs, local)"; exit 1 ;;
  esac
done
[ ${#runs[@]} -gt 0 ] || { echo "FAIL: no suite to run (KERNEL_SUITES)"; exit 1; }
# Each run gets its share of the VM's time, less a minute for boot and the
# checks, so a hung test ends with Go's goroutine dump, not a killed VM: by
# default 420 s per nfs run and 120 s per local run (NFSVM_TIMEOUT their sum
# and the minute); a given NFSVM_TIMEOUT is shared in the same proportions.
NFS_T=420 LOCAL_T=120 n_nfs=0 n_local=0
for r in "${runs[@]}"; do case $r in nfsvers=*) n_nfs=$((n_nfs + 1)) ;; *) n_local=$((n_local + 1)) ;; esac; done
want=$((n_nfs * NFS_T + n_local * LOCAL_T))
export NFSVM_TIMEOUT=${NFSVM_TIMEOUT:-$((want + 60))}
NFS_T=$(( NFS_T * (NFSVM_TIMEOUT - 60) / want )); [ $NFS_T -ge 30 ] || NFS_T=30
LOCAL_T=$(( LOCAL_T * (NFSVM_TIMEOUT - 60) / want )); [ $LOCAL_T -ge 30 ] || LOCAL_T=30
has() { case " $SUITES " in *" $1 "*) return 0 ;; esac; return 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/monocsi-e2e-kernel.XXXXXX") || exit 1
trap 'rm -rf "$work"' EXIT
share=$work/share
mkdir "$share" && cp -a "$IMAGEROOT" "$share/image" && cp "$SANITY" "$share/sanity.test" || exit 1

# Runs in the guest as root, cwd /host, TMPDIR=/tmp (a tmpfs).
cat > "$share/run.sh" <<EOF
#!/bin/sh
# The image's root, as a container runtime would set it up: /proc, /sys,
# /dev and a fresh /run; /tmp, where the tests put targets and working
# directories, is the guest's /tmp, shared both ways so that mounts made in
# the image are the test's and the other way round.
cp -a /host/image /image || { echo "RESULT image=FAIL"; exit 1; }
mount --make-shared /tmp && mount --rbind /tmp /image/tmp && mount -t proc proc /image/proc &&
  mount --rbind /sys /image/sys && mount --rbind /dev /image/dev && mount -t tmpfs tmpfs /image/run ||
  { echo "RESULT image=FAIL"; exit 1; }
printf '#!/bin/sh\nexec chroot /image /monocsi "\$@"\n' > /usr/local/bin/monocsi-in-image && chmod 755 /usr/local/bin/monocsi-in-image
echo "RESULT image=OK (\$(chroot /image /sbin/mount.nfs -V 2>&1), monocsi \$(chroot /image /monocsi version 2>&1))"
export MONOCSI_TEST_BIN=/usr/local/bin/monocsi-in-image MONOCSI_NFS_SERVER=127.0.0.1 MONOCSI_NFS_SHARE=/srv/export
export MONOCSI_NFS_SERVER_STOP=/usr/local/sbin/nfs-server-stop MONOCSI_NFS_SERVER_START=/usr/local/sbin/nfs-server-start
export TMPDIR=/tmp
EOF
if has nfs; then cat >> "$share/run.sh" <<EOF
# Check the server serves, to the image's own mount and mount.nfs, before
# any test runs, so a broken VM or image shows as such.
mkdir -p /tmp/nfs-check
if chroot /image /bin/mount -t nfs -o nfsvers=4.1 127.0.0.1:/srv/export /tmp/nfs-check && echo ok > /tmp/nfs-check/.check &&
   [ "\$(cat /srv/export/.check)" = ok ] && rm /tmp/nfs-check/.check && chroot /image /bin/umount /tmp/nfs-check && rmdir /tmp/nfs-check; then
  echo "RESULT nfs-check=OK"
else
  echo "RESULT nfs-check=FAIL"; exit 1
fi
for v in $VERSIONS; do
  echo "==> sanity.test -test.run '$RUN' with MONOCSI_NFS_MOUNT_OPTIONS=nfsvers=\$v"
  # Each run starts from a serving server (a failed dead-server test may have
  # left it stopped) and an empty share.
  [ "\$(cat /proc/fs/nfsd/threads)" -gt 0 ] || nfs-server-start
  find /srv/export -mindepth 1 -delete
  start=\$(date +%s)
  MONOCSI_NFS_MOUNT_OPTIONS=nfsvers=\$v ./sanity.test -test.v -test.timeout ${NFS_T}s -test.run '$RUN' -ginkgo.no-color \\
    > nfsvers=\$v.out 2>&1
  echo "RESULT nfsvers=\$v rc=\$? (\$((\$(date +%s) - start)) s)"
done
EOF
fi
if has local; then cat >> "$share/run.sh" <<EOF
# The local driver on project-quota filesystems: loop devices over sparse
# files in /tmp, mounted below /tmp so that the image's chroot sees them.
modprobe loop && modprobe quota_v2 || echo "guest: modprobe loop quota_v2 failed"
mkdir -p /tmp/kernel-fs
for fs in $FSES; do
  img=/tmp/kernel-fs/\$fs.img mnt=/tmp/kernel-fs/\$fs
  mkdir -p \$mnt && truncate -s 2G \$img || continue
  case \$fs in
    # -I 256: project IDs live in the large inode's extra space.
    ext4) mkfs.ext4 -q -F -I 256 -O quota,project \$img ;;
    xfs) mkfs.xfs -q -f \$img ;;
  esac && mount -o loop,prjquota \$img \$mnt && echo "guest: \$(grep " \$mnt " /proc/self/mountinfo)" ||
    echo "RESULT local-\$fs rc=1 (mkfs or mount -o prjquota failed)"
done
for fs in $FSES; do
  mountpoint -q /tmp/kernel-fs/\$fs || continue
  echo "==> sanity.test -test.run '$LOCALRUN' on \$fs with project quotas"
  start=\$(date +%s)
  MONOCSI_LOCAL_QUOTA_DIR=/tmp/kernel-fs/\$fs MONOCSI_LOCAL_QUOTA_FS=\$fs \\
    ./sanity.test -test.v -test.timeout ${LOCAL_T}s -test.run '$LOCALRUN' -ginkgo.no-color > local-\$fs.out 2>&1
  echo "RESULT local-\$fs rc=\$? (\$((\$(date +%s) - start)) s)"
done
EOF
fi
chmod +x "$share/run.sh"

"$SRC/boot.sh" "$share"; rc=$?
[ $rc -eq 77 ] && exit 0 # boot.sh printed "SKIP: why"

{ for f in console.log; do [ -f "$share/$f" ] && { echo "===== $f ====="; cat "$share/$f"; }; done
  for r in "${runs[@]}"; do [ -f "$share/$r.out" ] && { echo "===== $r.out ====="; cat "$share/$r.out"; }; done; } > "$OUT"
if [ $rc -ne 0 ]; then # boot failed or timed out: show where the guest was
  last=$(ls -t "$share"/*.out 2>/dev/null | head -1)
  [ -n "$last" ] && { echo "last lines of ${last##*/}:"; tail -40 "$last"; }
  echo "FAIL: real-kernel tier (full output in $OUT)"; exit 1
fi

grep -q '^RESULT image=OK' "$share/console.log" ||
  { echo "FAIL: the image's root filesystem could not be set up in the guest (console in $OUT)"; exit 1; }
grep '^RESULT image=OK' "$share/console.log" | tr -d '\r'
if has nfs && ! grep -q '^RESULT nfs-check=OK' "$share/console.log"; then
  echo "FAIL: the guest's NFS server does not serve; no test ran (console in $OUT)"; exit 1
fi
status=0
for r in "${runs[@]}"; do
  f=$share/$r.out
  case $r in nfsvers=*) pat=$RUN ;; *) pat=$LOCALRUN ;; esac
  echo "===== $r: sanity.test -test.run '$pat' ====="
  grep -E '^(--- |ok|FAIL|PASS)|Ran [0-9]+ of|Passed \|' "$f" 2>/dev/null
  if ! grep -q "^RESULT $r rc=0 " "$share/console.log"; then
    grep "^RESULT $r " "$share/console.log" | tr -d '\r'
    # Ginkgo's failure summary is above its long log; Go's is at the end.
    echo "FAIL: $r:"; sed -n '/^Summarizing [0-9]* Failure/,/^Ran [0-9]* of/p' "$f" 2>/dev/null
    echo "last lines:"; tail -60 "$f" 2>/dev/null; status=1
  elif grep -q '^testing: warning: no tests to run' "$f"; then
    echo "FAIL: no test matches -test.run '$pat'"; status=1
  elif [ "${r#local-}" != "$r" ] && grep -q -- '--- SKIP' "$f"; then
    echo "FAIL: $r skipped tests that must run here:"; grep -A1 -- '--- SKIP' "$f"; status=1
  fi
done
grep -q '^RESULT guest run.sh rc=0' "$share/console.log" || [ $status -ne 0 ] ||
  { echo "FAIL: the guest's run.sh failed (see $OUT)"; status=1; }
[ $status -eq 0 ] && echo "PASS: real-kernel tier, suites: $SUITES (full output in $OUT)" || echo "FAIL: real-kernel tier, suites: $SUITES (full output in $OUT)"
exit $status
