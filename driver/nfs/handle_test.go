package nfs

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Handles as csi-driver-nfs writes them must read back to the same volume.
func TestHandles(t *testing.T) {
	for _, tc := range []struct {
		id   string
		want volume
	}{
		{"10.0.0.1#exports#pvc-1#", volume{server: "10.0.0.1", share: "/exports", subDir: "pvc-1"}},
		{"nfs.example#exports/k8s#ns/claim#pvc-2#archive", volume{server: "nfs.example", share: "/exports/k8s", subDir: "ns/claim", uuid: "pvc-2", onDelete: "archive"}},
		{"fd00::1#srv#d#pvc-3#retain", volume{server: "fd00::1", share: "/srv", subDir: "d", uuid: "pvc-3", onDelete: "retain"}},
		{"nfs.example/exports/k8s/pvc-4", volume{server: "nfs.example", share: "/exports/k8s", subDir: "pvc-4"}}, // the older form
		{"h#exports#d", volume{server: "h", share: "/exports", subDir: "d"}},
	} {
		got, err := parseHandle(tc.id)
		if err != nil || got != tc.want {
			t.Errorf("parseHandle(%q) = %+v, %v; want %+v", tc.id, got, err, tc.want)
		}
	}
	v := volume{server: "h", share: "/exports/k8s/", subDir: "ns/claim", uuid: "pvc-5", onDelete: "delete"}
	if id := v.id(); id != "h#exports/k8s#ns/claim#pvc-5" {
		t.Errorf("id() = %q: csi-driver-nfs trims slashes and writes onDelete only for retain and archive", id)
	}
}

// A handle this driver cannot have written is NOT_FOUND (no volume of
// ours), and nothing in it can name a place outside a share.
func TestHostileHandles(t *testing.T) {
	for _, id := range []string{
		"h#exports#../etc#", "h#exports#a/../../b#", "h#exports#/abs#", "h#..#d#", "h#exports/../..#d#",
		"-o#exports#d#", "evil host#exports#d#", "h#exports#d#u#shred", "h#exports#d#u#delete#extra",
		"nohandle", "h#exports##",
	} {
		if _, err := parseHandle(id); status.Code(err) != codes.NotFound {
			t.Errorf("parseHandle(%q): %v, want NotFound", id, err)
		}
	}
	for _, id := range []string{"", "h#e#d\x00#", "h#e#d\n#"} {
		if _, err := parseHandle(id); status.Code(err) != codes.InvalidArgument {
			t.Errorf("parseHandle(%q): %v, want InvalidArgument", id, err)
		}
	}
}

func TestExpandTemplates(t *testing.T) {
	m := map[string]string{"csi.storage.k8s.io/pvc/name": "data", "csi.storage.k8s.io/pvc/namespace": "team", "csi.storage.k8s.io/pv/name": "pvc-9"}
	got, err := expand("${pvc.metadata.namespace}/${pvc.metadata.name}-${pv.metadata.name}", m)
	if err != nil || got != "team/data-pvc-9" {
		t.Errorf("expand = %q, %v", got, err)
	}
	if _, err := expand("${pvc.metadata.name}", nil); status.Code(err) != codes.InvalidArgument {
		t.Errorf("a template without its parameter: %v, want InvalidArgument", err)
	}
}

// Every value CreateVolume accepts makes a handle that reads back as the
// same volume; a server whose IPv6 zone holds '#' or '/' would not (its
// handle named another server, share and subDir), so it is refused, and a
// handle whose fields do not survive being written back is not ours.
func TestHandlesRoundTrip(t *testing.T) {
	for _, v := range []volume{
		{server: "fe80::1%eth0", share: "/exports", subDir: "d", uuid: "pvc-1"},
		{server: "[fd00::1]", share: "/", subDir: "ns/claim", uuid: "pvc-2", onDelete: "archive"},
		{server: "nfs.example", share: "/a/b", subDir: "pvc-3"},
	} {
		if err := v.checkRoundTrip(); err != nil {
			t.Errorf("%+v: %v", v, err)
		}
	}
	for _, server := range []string{"fe80::1%a#b", "fe80::1%a/b", "fe80::1%", "fe80::1%a b", "fe80::1%" + "abcdefghijklmnop", "[fe80::1", "fe80::1]", "[10.0.0.1]", "10.0.0.1%eth0", "a:b", "h#x"} {
		if err := checkServer(server); status.Code(err) != codes.InvalidArgument {
			t.Errorf("checkServer(%q): %v, want InvalidArgument", server, err)
		}
	}
	for _, v := range []volume{
		{server: "h", share: "/exports", subDir: "d/", uuid: "pvc-4"}, // the handle trims the slash
		{server: "h", share: "/exports", subDir: "d", uuid: "a#b"},
		{server: "h", share: "/exports", subDir: "d", uuid: "../x"},
	} {
		if err := v.checkRoundTrip(); status.Code(err) != codes.InvalidArgument {
			t.Errorf("checkRoundTrip(%+v): %v, want InvalidArgument", v, err)
		}
	}
	for _, id := range []string{
		"h#exports#d/#pvc-5",      // reads back as subDir d
		"h#exports#d#../x",        // uuid is not a name
		"fe80::1%a#b#exports#d#u", // six fields: not ours either
		"h#exports#d#" + strings.Repeat("u", 200),
		"h#exports#" + strings.Repeat("n", 256) + "#",
	} {
		if _, err := parseHandle(id); status.Code(err) != codes.NotFound {
			t.Errorf("parseHandle(%q): %v, want NotFound", id, err)
		}
	}
	// csi-driver-nfs's own forms keep working: a trailing empty onDelete,
	// an explicit delete, no uuid.
	for _, id := range []string{"h#share#subdir#pv-name#", "h#share#pv-name##", "h#share#d#uuid#delete", "h#share#d##archive"} {
		if _, err := parseHandle(id); err != nil {
			t.Errorf("parseHandle(%q): %v", id, err)
		}
	}
	for _, id := range []string{"h#exports#snap#snap#pvc", "fd00::1#exports#snap#snap#pvc"} {
		if _, err := parseSnapshot(id); err != nil {
			t.Errorf("parseSnapshot(%q): %v", id, err)
		}
	}
	for _, id := range []string{"fe80::1%a/b#exports#s#s#pvc", "h#exports#s#t#pvc", "h#exports#s#s#../p"} {
		if _, err := parseSnapshot(id); status.Code(err) != codes.NotFound {
			t.Errorf("parseSnapshot(%q): %v, want NotFound", id, err)
		}
	}
}
