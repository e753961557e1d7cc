// Command mkimage builds, pushes, unpacks, measures and pins monocsi's
// multi-arch image (the Makefile's image, image-push, e2e-nfs and
// image-packages targets); the work is internal/imagebuild's.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/monocsi/monocsi/internal/imagebuild"
)

// options are the flags; out is the archive every mode works on.
type options struct {
	lock, cache, bins, out, ref, version string
	push, unpack, platform, update       string
	sizes                                bool
}

func main() {
	var o options
	flag.StringVar(&o.lock, "packages", "image/packages.lock", "the pinned Debian packages")
	flag.StringVar(&o.cache, "cache", "", "where downloaded packages are kept (default: $MONOCSI_CACHE or ~/.cache/monocsi, + /image)")
	flag.StringVar(&o.bins, "bins", "", "monocsi binaries by GOARCH: amd64=PATH,arm64=PATH,...")
	flag.StringVar(&o.out, "out", "", "the OCI image archive: written by a build, read by the other modes")
	flag.StringVar(&o.ref, "name", "localhost/monocsi:dev", "the image name recorded in the archive")
	flag.StringVar(&o.version, "version", "dev", "recorded in the image's labels")
	flag.StringVar(&o.push, "push", "", "push the archive to this reference instead of building")
	flag.StringVar(&o.unpack, "unpack", "", "unpack the root filesystem of -platform from the archive into this directory instead of building")
	flag.StringVar(&o.platform, "platform", "linux/amd64", "with -unpack: the platform")
	flag.BoolVar(&o.sizes, "sizes", false, "print the archive's sizes instead of building")
	flag.StringVar(&o.update, "update-packages", "", "re-pin the packages of -packages for these Debian architectures (comma-separated) to the versions apt serves now")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.cache == "" {
		o.cache = defaultCache()
	}
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	if o.update == "" && o.out == "" {
		return fmt.Errorf("-out is required")
	}
	switch {
	case o.update != "":
		return updatePackages(ctx, o)
	case o.sizes:
		t, err := imagebuild.ArchiveSizeTable(o.out)
		fmt.Print(t)
		return err
	case o.unpack != "":
		return imagebuild.Unpack(o.out, o.platform, o.unpack)
	case o.push != "":
		return push(ctx, o)
	}
	return build(ctx, o)
}

func build(ctx context.Context, o options) error {
	byArch := map[string]string{}
	for _, kv := range strings.Split(o.bins, ",") {
		a, p, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("-bins: want arch=path, got %q", kv)
		}
		pl, ok := imagebuild.PlatformByGOARCH(a)
		if !ok {
			return fmt.Errorf("-bins: no image platform for GOARCH %q", a)
		}
		byArch[pl.Debian] = p
	}
	// No digest file may outlive the archive it describes.
	if err := os.Remove(o.out + ".digest"); err != nil && !os.IsNotExist(err) {
		return err
	}
	d, err := imagebuild.Monocsi(ctx, o.lock, o.cache, byArch, o.version, o.out, o.ref)
	if err != nil {
		return err
	}
	sizes, err := imagebuild.ArchiveSizeTable(o.out)
	if err != nil {
		return err
	}
	fmt.Print(sizes)
	fmt.Printf("%s %s\n", d, o.out)
	return os.WriteFile(o.out+".digest", []byte(d.String()+"\n"), 0o644)
}

func push(ctx context.Context, o options) error {
	r, err := name.ParseReference(o.push)
	if err != nil {
		return err
	}
	return imagebuild.WithOCIArchive(o.out, func(idx v1.ImageIndex) error {
		if err := remote.WriteIndex(r, idx, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
			return err
		}
		d, err := idx.Digest()
		if err != nil {
			return err
		}
		fmt.Printf("pushed %s@%s\n", r.Context().Name(), d)
		return nil
	})
}

// updatePackages re-pins every package the lock names.
func updatePackages(ctx context.Context, o options) error {
	header, pkgs, err := imagebuild.ReadPackages(o.lock)
	if err != nil {
		return err
	}
	var names []string
	seen := map[string]bool{}
	for _, p := range pkgs {
		if !seen[p.Name] {
			seen[p.Name] = true
			names = append(names, p.Name)
		}
	}
	pinned, err := imagebuild.Candidates(ctx, o.cache, strings.Split(o.update, ","), names)
	if err != nil {
		return err
	}
	return imagebuild.WritePackages(o.lock, header, pinned)
}

func defaultCache() string {
	if d := os.Getenv("MONOCSI_CACHE"); d != "" {
		return d + "/image"
	}
	home, err := os.UserHomeDir()
	if err != nil {
		home = "/root"
	}
	return home + "/.cache/monocsi/image"
}
