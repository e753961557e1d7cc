// Command mkimage builds, pushes and pins monocsi's multi-arch image (the
// Makefile's image, image-push and image-packages targets); the work is
// internal/imagebuild's.
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

func main() {
	lock := flag.String("packages", "image/packages.lock", "the pinned Debian packages")
	cache := flag.String("cache", "", "where downloaded packages are kept (default: $MONOCSI_CACHE or ~/.cache/monocsi, + /image)")
	bins := flag.String("bins", "", "monocsi binaries by GOARCH: amd64=PATH,arm64=PATH,...")
	out := flag.String("out", "", "write the OCI image archive here")
	ref := flag.String("name", "localhost/monocsi:dev", "the image name recorded in the archive")
	version := flag.String("version", "dev", "recorded in the image's labels")
	push := flag.String("push", "", "push the archive given by -out to this reference instead of building")
	unpack := flag.String("unpack", "", "unpack the root filesystem of -platform from the archive given by -out into this directory instead of building")
	sizes := flag.Bool("sizes", false, "print the sizes of the archive given by -out instead of building")
	platform := flag.String("platform", "linux/amd64", "with -unpack: the platform")
	update := flag.String("update-packages", "", "re-pin the packages of -packages for these Debian architectures (comma-separated) to the versions apt serves now")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *cache == "" {
		*cache = defaultCache()
	}
	if *sizes {
		dir, err := os.MkdirTemp("", "mkimage-sizes-")
		if err == nil {
			defer os.RemoveAll(dir)
			var idx v1.ImageIndex
			if idx, err = imagebuild.ReadOCIArchive(*out, dir); err == nil {
				var t string
				if t, err = imagebuild.SizeTable(idx); err == nil {
					fmt.Print(t)
				}
			}
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "mkimage:", err)
			os.Exit(1)
		}
		return
	}
	if *unpack != "" {
		if err := imagebuild.Unpack(*out, *platform, *unpack); err != nil {
			fmt.Fprintln(os.Stderr, "mkimage:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(ctx, *lock, *cache, *bins, *out, *ref, *version, *push, *update); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, lock, cache, bins, out, ref, version, push, update string) error {
	switch {
	case update != "":
		header, pkgs, err := imagebuild.ReadPackages(lock)
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
		pinned, err := imagebuild.Candidates(ctx, cache, strings.Split(update, ","), names)
		if err != nil {
			return err
		}
		return imagebuild.WritePackages(lock, header, pinned)
	case push != "":
		dir, err := os.MkdirTemp("", "mkimage-push-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		idx, err := imagebuild.ReadOCIArchive(out, dir)
		if err != nil {
			return err
		}
		r, err := name.ParseReference(push)
		if err != nil {
			return err
		}
		if err := remote.WriteIndex(r, idx, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
			return err
		}
		d, err := idx.Digest()
		if err != nil {
			return err
		}
		fmt.Printf("pushed %s@%s\n", r.Context().Name(), d)
		return nil
	}
	byArch := map[string]string{}
	for _, kv := range strings.Split(bins, ",") {
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
	if out == "" {
		return fmt.Errorf("-out is required")
	}
	// No digest file may outlive the archive it describes.
	if err := os.Remove(out + ".digest"); err != nil && !os.IsNotExist(err) {
		return err
	}
	idx, cleanup, err := imagebuild.Monocsi(ctx, lock, cache, byArch, version)
	if err != nil {
		return err
	}
	defer cleanup()
	if err := imagebuild.WriteOCIArchive(out, ref, idx); err != nil {
		return err
	}
	d, err := idx.Digest()
	if err != nil {
		return err
	}
	sizes, err := imagebuild.SizeTable(idx)
	if err != nil {
		return err
	}
	fmt.Print(sizes)
	fmt.Printf("%s %s\n", d, out)
	return os.WriteFile(out+".digest", []byte(d.String()+"\n"), 0o644)
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
