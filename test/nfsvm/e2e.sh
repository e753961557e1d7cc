#!/bin/bash
# e2e.sh IMAGEROOT SANITY_TEST — what `make e2e-nfs` runs: the root
# filesystem of the image users run (`make image`, linux/amd64, unpacked) and
# the static test binary go into a fresh share directory with a generated
# run.sh, the NFS test VM boots once (boot.sh), and the guest runs the test
# binary twice against its own kernel NFS server, with nfsvers=4.1 and
# nfsvers=3. monocsi runs chrooted in that root filesystem, as in its
# container: its mount, mount.nfs and libraries are the image's, not the
# guest's; FlexVolume scripts reach the guest's root through nsenter, as
# they reach a node's in a cluster.
# Prints each run's summary (and its tail on failure), writes everything to
# e2e-nfs.out. Exit 0 all passed, or SKIP (no VM backend); else 1.
#   MONOCSI_NFSVM_RUN  -test.run pattern (default NFS: the NFS driver's tests)
#   NFSVM_TIMEOUT      bound of the whole VM run in seconds (default 600)
#   NFSVM_VERSIONS     the nfsvers values, one run each (default "4.1 3")
set -uo pipefail
IMAGEROOT=$(realpath "${1:?usage: e2e.sh IMAGEROOT SANITY_TEST}") SANITY=$(realpath "${2:?usage: e2e.sh IMAGEROOT SANITY_TEST}") || exit 1
[ -x "$IMAGEROOT/monocsi" ] && [ -x "$IMAGEROOT/sbin/mount.nfs" ] || { echo "FAIL: $IMAGEROOT is not monocsi's image root (no /monocsi or /sbin/mount.nfs)"; exit 1; }
SRC=$(cd "$(dirname "$0")" && pwd)
OUT=$(cd "$SRC/../.." && pwd)/e2e-nfs.out
RUN=${MONOCSI_NFSVM_RUN:-NFS}
export NFSVM_TIMEOUT=${NFSVM_TIMEOUT:-600}
VERSIONS=${NFSVM_VERSIONS:-4.1 3} # nfsvers values, one run each
# Each run gets its share of the VM's time, less a minute for boot and the
# check, so a hung test ends with Go's goroutine dump, not a killed VM.
SUITE_TIMEOUT=$(( (NFSVM_TIMEOUT - 60) / 2 )); [ $SUITE_TIMEOUT -ge 30 ] || SUITE_TIMEOUT=30

work=$(mktemp -d "${TMPDIR:-/tmp}/monocsi-e2e-nfs.XXXXXX") || exit 1
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
  MONOCSI_NFS_MOUNT_OPTIONS=nfsvers=\$v ./sanity.test -test.v -test.timeout ${SUITE_TIMEOUT}s -test.run '$RUN' -ginkgo.no-color \
    > sanity-nfsvers=\$v.out 2>&1
  echo "RESULT nfsvers=\$v rc=\$? (\$((\$(date +%s) - start)) s)"
done
EOF
chmod +x "$share/run.sh"

"$SRC/boot.sh" "$share"; rc=$?
[ $rc -eq 77 ] && exit 0 # boot.sh printed "SKIP: why"

{ for f in console.log $(for v in $VERSIONS; do echo "sanity-nfsvers=$v.out"; done); do
    [ -f "$share/$f" ] && { echo "===== $f ====="; cat "$share/$f"; }
  done; } > "$OUT"
if [ $rc -ne 0 ]; then # boot failed or timed out: show where the guest was
  last=$(ls -t "$share"/sanity-nfsvers=*.out 2>/dev/null | head -1)
  [ -n "$last" ] && { echo "last lines of ${last##*/}:"; tail -40 "$last"; }
  echo "FAIL: e2e-nfs (full output in $OUT)"; exit 1
fi

grep -q '^RESULT image=OK' "$share/console.log" ||
  { echo "FAIL: the image's root filesystem could not be set up in the guest (console in $OUT)"; exit 1; }
grep '^RESULT image=OK' "$share/console.log" | tr -d '\r'
grep -q '^RESULT nfs-check=OK' "$share/console.log" ||
  { echo "FAIL: the guest's NFS server does not serve; no test ran (console in $OUT)"; exit 1; }
status=0
for v in $VERSIONS; do
  f=$share/sanity-nfsvers=$v.out
  echo "===== nfsvers=$v: sanity.test -test.run '$RUN' ====="
  grep -E '^(--- |ok|FAIL|PASS)|Ran [0-9]+ of|Passed \|' "$f" 2>/dev/null
  if ! grep -q "^RESULT nfsvers=$v rc=0 " "$share/console.log"; then
    # Ginkgo's failure summary is above its long log; Go's is at the end.
    echo "FAIL: nfsvers=$v:"; sed -n '/^Summarizing [0-9]* Failure/,/^Ran [0-9]* of/p' "$f"
    echo "last lines:"; tail -60 "$f" 2>/dev/null; status=1
  elif grep -q '^testing: warning: no tests to run' "$f"; then
    echo "FAIL: no test matches -test.run '$RUN' (MONOCSI_NFSVM_RUN)"; status=1
  fi
done
grep -q '^RESULT guest run.sh rc=0' "$share/console.log" || [ $status -ne 0 ] ||
  { echo "FAIL: the guest's run.sh failed (see $OUT)"; status=1; }
[ $status -eq 0 ] && echo "PASS: e2e-nfs (full output in $OUT)" || echo "FAIL: e2e-nfs (full output in $OUT)"
exit $status
