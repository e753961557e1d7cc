#!/bin/bash
# boot.sh SHARE — boots the NFS test VM once: a real Linux kernel (User-Mode
# Linux) whose kernel NFS server exports a tmpfs at /srv/export to 127.0.0.1.
# SHARE (a host directory) is /host in the guest, and the guest runs
# /host/run.sh, then powers off. The console goes to stdout and to
# SHARE/console.log. The image is built on first use (build-image.sh, a few
# minutes, needs root) and cached by a hash of the recipe, so a changed recipe
# rebuilds; boots use a copy-on-write layer and leave the image as it was.
# Exit: 0 the guest ran run.sh to the end (its results are in the console),
# 1 build or boot failed or timed out, 77 skip: no VM backend can run here.
# NFSVM_TIMEOUT bounds the whole boot (default 600 s).
set -uo pipefail
SHARE=$(cd "${1:?usage: boot.sh SHARE}" && pwd) || exit 1
SRC=$(cd "$(dirname "$0")" && pwd)
TIMEOUT=${NFSVM_TIMEOUT:-600}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/monocsi
IMG=$CACHE/nfs-vm-$(cat "$SRC/build-image.sh" "$SRC/guest-init" | sha256sum | cut -c1-12)

# The image: built into a temp dir, renamed when complete, so an interrupted
# build is never used.
tmp= RUN=
trap 'rm -rf --one-file-system ${tmp:+"$tmp"} ${RUN:+"$RUN"}' EXIT
if [ ! -d "$IMG" ]; then
  mkdir -p "$CACHE" && tmp=$(mktemp -d "$IMG.tmp.XXXXXX") || exit 1
  echo "==> building the NFS test VM image into $IMG (cached for later runs)"
  start=$SECONDS
  "$SRC/build-image.sh" "$tmp"; rc=$?
  if [ $rc -eq 0 ] && mv -T "$tmp" "$IMG" 2>/dev/null; then
    echo "    built in $((SECONDS - start)) s"
  else
    [ $rc -eq 77 ] && exit 77                          # build-image.sh said SKIP and why
    [ $rc -ne 0 ] && { echo "FAIL: image build failed"; exit 1; }
    # else a concurrent run renamed its build first: use that one.
  fi
fi

# UML maps its memory from files in $TMPDIR and executes them: the directory
# must not be noexec (often true of /tmp and /dev/shm in containers).
for d in "${TMPDIR:-}" /dev/shm /tmp "$CACHE"; do
  [ -n "$d" ] && [ -d "$d" ] || continue
  r=$(mktemp -d "$d/nfsvm-run.XXXXXX" 2>/dev/null) || continue
  printf '#!/bin/sh\n' > "$r/x" && chmod +x "$r/x" && "$r/x" 2>/dev/null && { RUN=$r; break; }
  rm -rf "$r"
done
[ -n "$RUN" ] || { echo "FAIL: no exec-able temp dir for UML (tried \$TMPDIR, /dev/shm, /tmp, $CACHE)"; exit 1; }
mkdir -p "$RUN/tmp"

echo "==> booting $IMG/linux.uml (timeout ${TIMEOUT}s)"
# timeout signals its whole process group, which holds UML's helper processes.
TMPDIR=$RUN/tmp timeout -k 10 "$TIMEOUT" "$IMG/linux.uml" umid=nfsvm uml_dir="$RUN" mem=1536M \
  ubd0="$RUN/root.cow,$IMG/rootfs.img" root=/dev/ubda rw init=/sbin/nfsvm-init HOSTSHARE="$SHARE" \
  con=null con0=null,fd:1 ssl=null quiet < /dev/null 2>&1 | tee "$SHARE/console.log"
rc=${PIPESTATUS[0]}

grep -q '^RESULT guest run.sh rc=' "$SHARE/console.log" && exit 0
[ $rc -eq 124 ] && { echo "FAIL: the VM did not finish within ${TIMEOUT}s (NFSVM_TIMEOUT)"; exit 1; }
# UML runs guest processes under ptrace; where that is forbidden it cannot start.
if ! grep -q '^guest: booted' "$SHARE/console.log" && why=$(grep -m1 -i 'ptrace' "$SHARE/console.log"); then
  echo "SKIP: User-Mode Linux cannot run here: $why"; exit 77
fi
echo "FAIL: the VM exited (rc=$rc) before the guest finished; console above and in $SHARE/console.log"
exit 1
