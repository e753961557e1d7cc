SHELL := /bin/bash
# monocsi — build, test, lint. Everything a fresh machine needs is installed
# by these targets (Go tools into ./bin); tests that mount need root.

GO          ?= go
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS     := -s -w -X github.com/monocsi/monocsi/internal/version.Version=$(VERSION)
# grpcnotrace leaves out gRPC's golang.org/x/net/trace (never enabled here): it
# imports html/template, whose reflect.Value.MethodByName makes the linker keep
# every exported method of every type in the program (44 % of the binary).
BUILD_TAGS  := grpcnotrace
BIN         := $(CURDIR)/bin
STATICCHECK_VERSION := v0.8.2
HELM_VERSION        := v4.3.1
# helm lint/template also with the optional NFS StorageClass on
HELM_NFS_VALUES     := --set nfs.storageClass.create=true,nfs.storageClass.server=nfs.example.com,nfs.storageClass.share=/exports

DEMO_DIR    ?= /tmp/monocsi-demo

.PHONY: all build test unit sanity e2e e2e-nfs e2e-kernel bench demo demo-down lint clean image image-push image-packages release release-test image-test FORCE

all: build

## build: the static monocsi binary in bin/
build:
	CGO_ENABLED=0 $(GO) build -trimpath -tags '$(BUILD_TAGS)' -ldflags '$(LDFLAGS)' -o $(BIN)/monocsi ./cmd/monocsi

## test: lint, unit tests, node-role tests, csi-sanity, the e2e tests and the real-kernel tier in a VM (the CI command)
test:
	@./hack/stages.sh lint unit image-test sanity e2e e2e-kernel release-test

## unit: unit tests with the race detector (real mounts: run as root), the node-role tests and the chart's
## rendering test (which needs kubectl: Kubernetes is built on first use, hence the timeout)
unit: $(BIN)/helm
	$(GO) test -race -count=1 -timeout 30m $$($(GO) list ./... | grep -v -e /test/sanity -e /test/e2e -e /test/image)

## sanity: the upstream csi-sanity suite (csi-test v5.6.0) against `monocsi serve`
sanity:
	$(GO) test -count=1 -v ./test/sanity/ -args -ginkgo.no-color 2>&1 | tee sanity.out | grep -E '^(---|ok|FAIL|PASS)|Ran [0-9]+ of|Passed \|' ; \
	  status=$${PIPESTATUS[0]}; [ $$status -eq 0 ] || { tail -100 sanity.out; ./hack/failures.sh sanity.out; }; exit $$status

## e2e: a real single-node Kubernetes (built and cached on first use), monocsi
## installed with the Helm chart (charts/monocsi), and the end-to-end tests against it
e2e: $(BIN)/helm
	$(GO) test -count=1 -timeout 60m -v ./test/e2e/ 2>&1 | tee e2e.out | grep -E '^(=== RUN|---|ok|FAIL|PASS|==>|    [0-9])|e2e' ; \
	  status=$${PIPESTATUS[0]}; [ $$status -eq 0 ] || { tail -150 e2e.out; ./hack/failures.sh e2e.out; }; exit $$status

## e2e-kernel: the real-kernel tier: one boot of a VM (User-Mode Linux, Linux 6.1; the image is
## built and cached on first use, see test/nfsvm) runs every suite of KERNEL_SUITES (default
## "nfs local"): the NFS driver's tests (-test.run pattern MONOCSI_NFSVM_RUN, default NFS) against
## a real kernel NFS server with nfsvers=4.1 and nfsvers=3, and the local driver's project-quota
## tests, csi-sanity and the block-volume test (MONOCSI_LOCALVM_RUN, default LocalQuota|LocalBlock) on XFS prjquota and ext4
## quota,project loop filesystems. Static binaries: the guest has no Go toolchain.
## Full output in e2e-kernel.out.
e2e-kernel: image
	CGO_ENABLED=0 $(GO) test -c -o $(BIN)/nfsvm/sanity.test ./test/sanity
	rm -rf $(BIN)/nfsvm/image && $(GO) run ./hack/mkimage -out $(IMAGE_ARCHIVE) -unpack $(BIN)/nfsvm/image -platform linux/amd64
	KERNEL_OUT=$${KERNEL_OUT:-$(CURDIR)/e2e-kernel.out} ./test/nfsvm/e2e.sh $(BIN)/nfsvm/image $(BIN)/nfsvm/sanity.test

## e2e-nfs: the real-kernel tier's NFS suite alone (as before e2e-kernel). Full output in e2e-nfs.out.
e2e-nfs:
	$(MAKE) --no-print-directory e2e-kernel KERNEL_SUITES=nfs KERNEL_OUT=$(CURDIR)/e2e-nfs.out

## bench: the benchmark on the test cluster (about 15 minutes; not part of make test): memory of the
## node and controller roles idle, with 200 volumes and with 1,000 and 5,000 volumes of other nodes
## and drivers; provisioning and deletion of N=200 claims per driver (BENCH_N) against a floor; the
## binary. Writes BENCHMARKS.md (beside BENCH_BASELINE's figures) and bench/results.json.
BENCH_N        ?= 200
BENCH_BASELINE ?= bench/baseline.json
bench: $(BIN)/helm
	$(GO) run ./bench/provision -n $(BENCH_N) -out BENCHMARKS.md -json bench/results.json $(if $(wildcard $(BENCH_BASELINE)),-baseline $(BENCH_BASELINE))

## demo: start the test cluster with monocsi and a pod writing into a volume; it keeps running
demo: $(BIN)/helm
	$(GO) run ./test/cluster/testcluster demo $(DEMO_DIR)

## demo-down: remove the demo cluster
demo-down:
	$(GO) run ./test/cluster/testcluster down $(DEMO_DIR)

## lint: gofmt, go vet, staticcheck, go mod tidy, helm lint and helm template of charts/monocsi
lint: $(BIN)/staticcheck $(BIN)/helm
	@out=$$(gofmt -l $$(git ls-files '*.go')); [ -z "$$out" ] || { echo "gofmt needed: $$out"; exit 1; }
	$(GO) vet ./...
	$(BIN)/staticcheck ./...
	$(GO) mod tidy -diff
	$(BIN)/helm lint --strict charts/monocsi
	$(BIN)/helm lint --strict charts/monocsi $(HELM_NFS_VALUES)
	$(BIN)/helm template monocsi charts/monocsi >/dev/null
	$(BIN)/helm template monocsi charts/monocsi $(HELM_NFS_VALUES) >/dev/null

$(BIN)/staticcheck:
	GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

## bin/helm: helm $(HELM_VERSION), built from the Go module proxy (a few minutes, once)
$(BIN)/helm:
	GOBIN=$(BIN) $(GO) install helm.sh/helm/v4/cmd/helm@$(HELM_VERSION)

# `make bin/helm` and `make bin/staticcheck` name the same files.
bin/helm bin/staticcheck: bin/%: $(BIN)/% ;

## image: the multi-arch OCI image archive $(IMAGE_ARCHIVE) (linux/amd64, linux/arm64), built
## without a container engine from the static binaries and the Debian packages pinned in
## image/packages.lock (downloaded once into ~/.cache/monocsi/image); prints its digest
IMAGE         ?= localhost/monocsi:dev
IMAGE_ARCHES  ?= amd64 arm64
IMAGE_ARCHIVE ?= $(BIN)/monocsi-image.tar
image: $(foreach a,$(IMAGE_ARCHES),$(BIN)/linux-$(a)/monocsi)
	$(GO) run ./hack/mkimage -out $(IMAGE_ARCHIVE) -name $(IMAGE) -version $(VERSION) \
	  -bins $(subst $(space),$(comma),$(foreach a,$(IMAGE_ARCHES),$(a)=$(BIN)/linux-$(a)/monocsi))

## image-test: the image's contents per architecture, its amd64 tools run, a second build's
## digest, a push to a registry (go-containerregistry's, on loopback)
image-test: image
	MONOCSI_IMAGE_ARCHIVE=$(IMAGE_ARCHIVE) MONOCSI_IMAGE="$(IMAGE)" MONOCSI_IMAGE_VERSION=$(VERSION) MONOCSI_IMAGE_ARCHES="$(IMAGE_ARCHES)" \
	  MONOCSI_IMAGE_BINS=$(subst $(space),$(comma),$(foreach a,$(IMAGE_ARCHES),$(a)=$(BIN)/linux-$(a)/monocsi)) \
	  $(GO) test -count=1 -v ./test/image/ 2>&1 | grep -E '^(---|ok|FAIL|PASS|\s+image_test)|image_test.go' ; exit $${PIPESTATUS[0]}

## release: VERSION=vX.Y.Z: the bundle in dist/ (binaries, image archive of RELEASE_REPO:VERSION,
## install.yaml and the chart with the image pinned by digest, SHA256SUMS); see hack/release.sh
RELEASE_REPO ?= ghcr.io/monocsi/monocsi
release: $(BIN)/helm
	@[[ "$(VERSION)" =~ ^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$$ ]] || { echo "make release VERSION=vX.Y.Z (got $(VERSION))"; exit 1; }
	rm -rf dist && mkdir -p dist
	$(MAKE) --no-print-directory image IMAGE=$(RELEASE_REPO):$(VERSION) IMAGE_ARCHIVE=$(CURDIR)/dist/monocsi-image-$(VERSION).tar
	./hack/release.sh $(VERSION) $(RELEASE_REPO) "$$($(GO) run ./test/cluster/testcluster bin)/kubectl" $(BIN)/helm $(IMAGE_ARCHES)

## release-test: make release, then the README's Install steps from dist/ on a fresh test
## cluster (testcluster bundle: checksums, ctr images import, helm install of the packaged
## chart, the bundle's example claim provisioned for its pod); the cluster is removed after
release-test:
	$(MAKE) --no-print-directory release VERSION=v0.0.0-test
	$(GO) run ./test/cluster/testcluster bundle $$(mktemp -d -u /tmp/monocsi-bundle.XXXXXX) dist

## image-push: push the archive IMAGE_ARCHIVE (as built: a release's dist/monocsi-image-*.tar keeps
## the digest its install.yaml pins) to IMAGE=<registry>/monocsi:<tag> (credentials: ~/.docker/config.json)
image-push:
	$(GO) run ./hack/mkimage -out $(IMAGE_ARCHIVE) -push $(IMAGE)

## image-packages: pin image/packages.lock's packages to the versions Debian serves now
image-packages:
	$(GO) run ./hack/mkimage -update-packages $(subst $(space),$(comma),$(IMAGE_ARCHES))

# One static binary per architecture (GOARM=7 for arm).
$(BIN)/linux-%/monocsi: FORCE
	CGO_ENABLED=0 GOOS=linux GOARCH=$* $(if $(filter arm,$*),GOARM=7) $(GO) build -trimpath -tags '$(BUILD_TAGS)' -ldflags '$(LDFLAGS)' -o $@ ./cmd/monocsi

FORCE:
comma := ,
space := $(subst ,, )

clean:
	rm -rf $(BIN) dist sanity.out e2e.out e2e-nfs.out e2e-kernel.out
