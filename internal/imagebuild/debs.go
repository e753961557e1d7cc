package imagebuild

import (
	"bufio"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/monocsi/monocsi/internal/filelock"
)

// Package is one pinned Debian package of one architecture.
type Package struct {
	Arch, Name, Version, SHA256 string
}

// File is the name the .deb is kept under.
func (p Package) File() string {
	return fmt.Sprintf("%s_%s_%s.deb", p.Name, strings.ReplaceAll(p.Version, ":", "%3a"), p.Arch)
}

// ReadPackages parses a package lock file: lines "arch name version
// sha256", with # comments.
func ReadPackages(file string) (header []string, pkgs []Package, err error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for n := 1; s.Scan(); n++ {
		line := strings.TrimSpace(s.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			if len(pkgs) == 0 {
				header = append(header, s.Text())
			}
			continue
		}
		f := strings.Fields(line)
		if len(f) != 4 || len(f[3]) != 64 {
			return nil, nil, fmt.Errorf("%s:%d: want \"arch package version sha256\", got %q", file, n, line)
		}
		if _, ok := PlatformByDebian(f[0]); !ok {
			return nil, nil, fmt.Errorf("%s:%d: unknown architecture %q", file, n, f[0])
		}
		pkgs = append(pkgs, Package{Arch: f[0], Name: f[1], Version: f[2], SHA256: f[3]})
	}
	return header, pkgs, s.Err()
}

// WritePackages writes a lock file: header, then pkgs sorted.
func WritePackages(file string, header []string, pkgs []Package) error {
	sort.Slice(pkgs, func(i, j int) bool {
		if pkgs[i].Arch != pkgs[j].Arch {
			return pkgs[i].Arch < pkgs[j].Arch
		}
		return pkgs[i].Name < pkgs[j].Name
	})
	var b strings.Builder
	for _, h := range header {
		b.WriteString(h + "\n")
	}
	for _, p := range pkgs {
		fmt.Fprintf(&b, "%s %s %s %s\n", p.Arch, p.Name, p.Version, p.SHA256)
	}
	return os.WriteFile(file, []byte(b.String()), 0o644)
}

// apt runs tool (apt-get, apt-cache) for architecture arch with its own
// package lists and state under cache, so the host's apt (its
// architectures, lists and installed packages) is neither used nor
// changed; the sources are the host's.
func apt(ctx context.Context, tool, cache, arch, dir string, args ...string) ([]byte, error) {
	state := filepath.Join(cache, "apt-"+arch)
	for _, d := range []string{"lists/partial", "cache/archives/partial"} {
		if err := os.MkdirAll(filepath.Join(state, d), 0o755); err != nil {
			return nil, err
		}
	}
	status := filepath.Join(state, "status")
	if _, err := os.Stat(status); err != nil {
		if err := os.WriteFile(status, nil, 0o644); err != nil {
			return nil, err
		}
	}
	opts := []string{
		"-q", "-o", "APT::Architecture=" + arch, "-o", "APT::Architectures::=" + arch,
		"-o", "Dir::State=" + state, "-o", "Dir::State::Lists=" + filepath.Join(state, "lists"),
		"-o", "Dir::State::status=" + status, "-o", "Dir::Cache=" + filepath.Join(state, "cache"),
		"-o", "APT::Sandbox::User=root", "-o", "Debug::NoLocking=1",
		// Only the package indexes: no AppStream metadata.
		"-o", "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false",
		"-o", "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false",
		"-o", "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false",
	}
	cmd := exec.CommandContext(ctx, tool, append(opts, args...)...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s (%s): %v\n%s", tool, strings.Join(args, " "), arch, err, out)
	}
	return out, nil
}

// update refreshes arch's package lists, trying again after a failed
// download (a mirror's index can be mid-update).
func update(ctx context.Context, cache, arch, dir string) error {
	var err error
	for try := 0; try < 3; try++ {
		if _, err = apt(ctx, "apt-get", cache, arch, dir, "update"); err == nil {
			return nil
		}
	}
	return err
}

// FetchPackages makes sure every pinned .deb is in cache/debs with its
// pinned digest, downloading what is missing through apt-get. It returns
// the paths of the .debs, by architecture.
func FetchPackages(ctx context.Context, cache string, pkgs []Package) (map[string][]string, error) {
	debs := filepath.Join(cache, "debs")
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return nil, err
	}
	unlock, err := filelock.Lock(filepath.Join(cache, "fetch.lock"), nil)
	if err != nil {
		return nil, err
	}
	defer unlock()
	out := map[string][]string{}
	updated := map[string]bool{}
	for _, p := range pkgs {
		file := filepath.Join(debs, p.File())
		if sum, err := fileSHA256(file); err != nil || sum != p.SHA256 {
			if !updated[p.Arch] {
				if err := update(ctx, cache, p.Arch, debs); err != nil {
					return nil, err
				}
				updated[p.Arch] = true
			}
			if err := download(ctx, cache, p, file); err != nil {
				return nil, err
			}
			sum, err := fileSHA256(file)
			if err != nil {
				return nil, err
			}
			if sum != p.SHA256 {
				return nil, fmt.Errorf("%s: sha256 %s, pinned %s", p.File(), sum, p.SHA256)
			}
		}
		out[p.Arch] = append(out[p.Arch], file)
	}
	return out, nil
}

// download fetches p's .deb to file. apt-get names it after the package's
// own architecture ("all" for data packages), so it is fetched into a
// directory of its own and renamed.
func download(ctx context.Context, cache string, p Package, file string) error {
	tmp, err := os.MkdirTemp(filepath.Dir(file), ".download-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if _, err := apt(ctx, "apt-get", cache, p.Arch, tmp, "download", p.Name+"="+p.Version); err != nil {
		return fmt.Errorf("%w\n(a pinned version can leave the archive when Debian updates it: run `make image-packages` to pin the current ones)", err)
	}
	got, err := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if err != nil || len(got) != 1 {
		return fmt.Errorf("apt-get download %s=%s (%s): got %v", p.Name, p.Version, p.Arch, got)
	}
	return os.Rename(got[0], file)
}

// Candidates pins, for each architecture, the version of each named
// package that apt would install now.
func Candidates(ctx context.Context, cache string, archs, names []string) ([]Package, error) {
	var pkgs []Package
	debs := filepath.Join(cache, "debs")
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return nil, err
	}
	for _, arch := range archs {
		if err := update(ctx, cache, arch, debs); err != nil {
			return nil, err
		}
		for _, n := range names {
			out, err := apt(ctx, "apt-cache", cache, arch, debs, "show", "--no-all-versions", n)
			if err != nil {
				return nil, err
			}
			p := Package{Arch: arch, Name: n}
			for _, line := range strings.Split(string(out), "\n") {
				if v, ok := strings.CutPrefix(line, "Version: "); ok {
					p.Version = v
				} else if v, ok := strings.CutPrefix(line, "SHA256: "); ok {
					p.SHA256 = v
				}
			}
			if p.Version == "" || len(p.SHA256) != 64 {
				return nil, fmt.Errorf("apt-cache show %s (%s): no version or SHA256 in\n%s", n, arch, out)
			}
			pkgs = append(pkgs, p)
		}
	}
	return pkgs, nil
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Extract unpacks debs into dir with dpkg-deb (which reads any
// architecture's packages).
func Extract(ctx context.Context, dir string, debs []string) error {
	for _, d := range debs {
		if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", d, dir).CombinedOutput(); err != nil {
			return fmt.Errorf("dpkg-deb -x %s: %v\n%s", d, err, out)
		}
	}
	return nil
}

// AddELF adds image path p and, for an ELF executable or library, its
// program interpreter and every shared library it needs, directly or
// not, found in the tree's library directories for triple. A library that
// cannot be found is an error naming it: add its package to the lock file.
func (r *Rootfs) AddELF(p, triple string) error {
	done := map[string]bool{}
	var walk func(p string) error
	walk = func(p string) error {
		real, err := r.Add(p)
		if err != nil {
			return err
		}
		if done[real] {
			return nil
		}
		done[real] = true
		f, err := elf.Open(r.host(real))
		if err != nil {
			return nil // a script or data file: nothing more to add
		}
		defer f.Close()
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				b, err := io.ReadAll(prog.Open())
				if err != nil {
					return err
				}
				if err := walk(strings.TrimRight(string(b), "\x00")); err != nil {
					return fmt.Errorf("%s: interpreter: %w", p, err)
				}
			}
		}
		libs, err := f.ImportedLibraries()
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		for _, lib := range libs {
			found := ""
			for _, d := range []string{"/lib/" + triple, "/usr/lib/" + triple, "/lib", "/usr/lib"} {
				if _, err := os.Stat(r.host(path.Join(d, lib))); err == nil {
					found = path.Join(d, lib)
					break
				}
			}
			if found == "" {
				return fmt.Errorf("%s needs %s, which no pinned package provides", p, lib)
			}
			if err := walk(found); err != nil {
				return err
			}
		}
		return nil
	}
	return walk(p)
}
