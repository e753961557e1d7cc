#!/usr/bin/env bash
# release.sh VERSION REPO KUBECTL HELM ARCH... — what `make release` runs
# after `make image` has written dist/monocsi-image-VERSION.tar (image
# REPO:VERSION) and bin/linux-ARCH/monocsi: the rest of the bundle in dist/.
#   monocsi-VERSION-linux-ARCH    the static binary of each architecture
#   install.yaml                  `kubectl kustomize manifests/` with the image pinned by digest
#   monocsi-X.Y.Z.tgz             the chart, its image pinned the same way
#   example-local-dynamic.yaml    a claim of monocsi-local and its pod, to try it
#   SHA256SUMS                    of every file above and the image archive
set -euo pipefail
VERSION=$1 REPO=$2 KUBECTL=$3 HELM=$4; shift 4
cd "$(dirname "$0")/.."
DIST=dist ARCHIVE=dist/monocsi-image-$VERSION.tar
DIGEST=$(cat "$ARCHIVE.digest")
[[ $DIGEST =~ ^sha256:[0-9a-f]{64}$ ]] || { echo "release: bad digest in $ARCHIVE.digest" >&2; exit 1; }
for a in "$@"; do install -m755 "bin/linux-$a/monocsi" "$DIST/monocsi-$VERSION-linux-$a"; done

# install.yaml: an overlay of manifests/ that only pins the image.
overlay=$(mktemp -d "$PWD/dist/.overlay-XXXXXX"); chart=$(mktemp -d)
trap 'rm -rf "$overlay" "$chart"' EXIT
cat > "$overlay/kustomization.yaml" <<YAML
resources:
- ../../manifests
images:
- name: localhost/monocsi
  newName: $REPO
  digest: $DIGEST
YAML
"$KUBECTL" kustomize "$overlay" > "$DIST/install.yaml"
grep -q "image: $REPO@$DIGEST" "$DIST/install.yaml" || { echo "release: install.yaml does not name $REPO@$DIGEST" >&2; exit 1; }

# The chart, with the same image as its default.
cp -r charts/monocsi "$chart/"
sed -i -e "s|^  repository: .*|  repository: $REPO|" -e "s|^  tag: .*|  tag: $VERSION|" -e "s|^  digest: .*|  digest: \"$DIGEST\"|" "$chart/monocsi/values.yaml"
"$HELM" package "$chart/monocsi" --version "${VERSION#v}" --app-version "$VERSION" -d "$DIST" >/dev/null
"$HELM" template monocsi "$DIST/monocsi-${VERSION#v}.tgz" | grep -q "image: \"\?$REPO@$DIGEST" ||
  { echo "release: the packaged chart does not render $REPO@$DIGEST" >&2; exit 1; }

# The example's pod runs the public busybox image (the test cluster's own is local).
sed 's|image: localhost/busybox:local|image: busybox:1.37|' manifests/examples/local-dynamic.yaml > "$DIST/example-local-dynamic.yaml"
(cd "$DIST" && rm -f SHA256SUMS && sha256sum -- * > SHA256SUMS)
echo "dist/ ($VERSION, image $REPO@$DIGEST):"
(cd "$DIST" && ls -l --time-style=+ -- *)
