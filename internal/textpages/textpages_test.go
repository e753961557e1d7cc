package textpages

import (
	"crypto/sha256"
	"fmt"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParse(t *testing.T) {
	const smaps = `00400000-01478000 r-xp 00000000 00:2f 1234                               /monocsi
Size:              17888 kB
Anonymous:             0 kB
Swap:                  0 kB
VmFlags: rd ex mr mw me
01478000-01ad6000 r--p 01078000 00:2f 1234                               /monocsi
Anonymous:             8 kB
Swap:                  0 kB
01ad6000-01ae0000 r--p 016d6000 00:2f 1234                               /monocsi
Anonymous:             0 kB
Swap:                  4 kB
01ae0000-01ae4000 r--p 016e0000 00:2f 1234                               /monocsi (deleted)
Anonymous:             0 kB
0266c000-02704000 rw-p 0226c000 00:2f 1234                               /monocsi
Anonymous:            96 kB
Swap:                  0 kB
c000000000-c000400000 rw-p 00000000 00:00 0
Anonymous:          4096 kB
Swap:                  0 kB
7ffd1000-7ffd3000 r-xp 00000000 00:00 0                                  [vdso]
`
	got := parse(smaps)
	want := []mapping{
		{from: 0x400000, to: 0x1478000, file: "00:2f 1234", anon: 0, swap: 0},
		{from: 0x1478000, to: 0x1ad6000, file: "00:2f 1234", anon: 8, swap: 0},
		{from: 0x1ad6000, to: 0x1ae0000, file: "00:2f 1234", anon: 0, swap: 4},
		{from: 0x1ae0000, to: 0x1ae4000, file: "00:2f 1234", anon: 0, swap: -1},
		{from: 0x266c000, to: 0x2704000, file: "00:2f 1234", writable: true, anon: 96, swap: 0},
		{from: 0xc000000000, to: 0xc000400000, writable: true, anon: 4096, swap: 0},
		{from: 0x7ffd1000, to: 0x7ffd3000, anon: -1, swap: -1},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("parse:\n got %v\nwant %v", got, want)
	}
	// Only the first is the file's own pages throughout: private copies in
	// memory or swap, or a line missing, keep the others.
	for i, m := range got {
		if m.shared() != (i == 0) {
			t.Errorf("mapping %d (%v): shared() = %v", i, m, m.shared())
		}
	}
}

var (
	compiled = []string{"kept", "as written"}
	zeroed   []string
	counter  = 41
)

// TestRelease drops this test binary's read-only pages: its resident file
// pages fall, and the program runs on: code not run before, read-only data,
// and globals written at run time (zero-initialised ones among them).
func TestRelease(t *testing.T) {
	zeroed = append(zeroed, "set at run time")
	counter++
	compiled[1] = "changed at run time"
	before := rssFile()
	if before == 0 {
		t.Fatal("no RssFile in /proc/self/status")
	}
	n, err := Release()
	if err != nil {
		t.Fatal(err)
	}
	after := rssFile()
	t.Logf("dropped the pages of %d MB of mappings: RssFile %d kB -> %d kB", n>>20, before>>10, after>>10)
	if n == 0 || after >= before {
		t.Fatalf("Release spanned %d bytes, RssFile %d kB -> %d kB: want fewer resident file pages", n, before>>10, after>>10)
	}
	if sum := fmt.Sprintf("%x", sha256.Sum256([]byte("abc"))); sum != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Errorf("sha256 after Release = %s", sum)
	}
	if got := fmt.Sprint(compiled, zeroed, counter); got != "[kept changed at run time] [set at run time] 42" {
		t.Errorf("globals after Release = %s", got)
	}
	if _, err := Release(); err != nil {
		t.Errorf("second Release: %v", err)
	}
}

// TestReleaseKeepsPrivateCopies: a read-only private file mapping whose page
// was written before it was made read-only (as a dynamic linker's
// relocations are) is left alone and keeps the written byte; a mapping of
// the same file holding only the file's pages is dropped.
func TestReleaseKeepsPrivateCopies(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "pages")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	page := os.Getpagesize()
	if _, err := f.Write(make([]byte, 2*page)); err != nil {
		t.Fatal(err)
	}
	written, err := unix.Mmap(int(f.Fd()), 0, page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(written)
	written[0] = 'x'
	if err := unix.Mprotect(written, unix.PROT_READ); err != nil {
		t.Fatal(err)
	}
	clean, err := unix.Mmap(int(f.Fd()), int64(page), page, unix.PROT_READ, unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(clean)
	_ = clean[0] // resident

	raw, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	file := fmt.Sprintf("%02x:%02x %d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	var ours []mapping
	for _, m := range parse(string(raw)) {
		if m.file == file {
			ours = append(ours, m)
		}
	}
	if len(ours) != 2 {
		t.Fatalf("mappings of %s in smaps: %v, want 2", file, ours)
	}
	n, err := release(ours, file)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(page) {
		t.Errorf("release spanned %d bytes, want the clean mapping's %d", n, page)
	}
	if written[0] != 'x' {
		t.Fatalf("the privately written page lost its byte: %q", written[0])
	}
}
