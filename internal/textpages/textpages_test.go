package textpages

import (
	"crypto/sha256"
	"fmt"
	"testing"
)

func TestParse(t *testing.T) {
	const smaps = `00400000-01478000 r-xp 00000000 00:2f 1234                               /monocsi
Size:              17888 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me
01478000-01ad6000 r--p 01078000 00:2f 1234                               /monocsi
Anonymous:             8 kB
0266c000-02704000 rw-p 0226c000 00:2f 1234                               /monocsi
Anonymous:            96 kB
c000000000-c000400000 rw-p 00000000 00:00 0
Anonymous:          4096 kB
7ffd1000-7ffd3000 r-xp 00000000 00:00 0                                  [vdso]
`
	got := parse(smaps)
	want := []mapping{
		{from: 0x400000, to: 0x1478000, file: "00:2f 1234"},
		{from: 0x1478000, to: 0x1ad6000, file: "00:2f 1234", private: true},
		{from: 0x266c000, to: 0x2704000, file: "00:2f 1234", writable: true, private: true},
		{from: 0xc000000000, to: 0xc000400000, writable: true, private: true},
		{from: 0x7ffd1000, to: 0x7ffd3000},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("parse:\n got %v\nwant %v", got, want)
	}
}

var global = []string{"kept", "as written"}

// TestRelease unmaps this test binary's read-only pages: its resident file
// pages fall, and the program runs on (code, read-only data and written
// globals alike).
func TestRelease(t *testing.T) {
	before := rssFile()
	if before == 0 {
		t.Fatal("no RssFile in /proc/self/status")
	}
	n, err := Release()
	if err != nil {
		t.Fatal(err)
	}
	after := rssFile()
	t.Logf("unmapped %d MB of mappings: RssFile %d kB -> %d kB", n>>20, before>>10, after>>10)
	if n == 0 || after >= before {
		t.Fatalf("Release unmapped %d bytes, RssFile %d kB -> %d kB: want fewer resident file pages", n, before>>10, after>>10)
	}
	// Code that had not run yet, and globals written at start.
	if sum := fmt.Sprintf("%x", sha256.Sum256([]byte("abc"))); sum != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Errorf("sha256 after Release = %s", sum)
	}
	if fmt.Sprint(global) != "[kept as written]" {
		t.Errorf("global after Release = %v", global)
	}
	if _, err := Release(); err != nil {
		t.Errorf("second Release: %v", err)
	}
}
