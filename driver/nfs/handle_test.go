package nfs

import (
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
