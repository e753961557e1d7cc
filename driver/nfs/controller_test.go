package nfs

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// DeleteVolume mounts with the PV's options when the provisioner passes
// them, else with the secrets' mountOptions, checked as every mount option.
func TestDeleteOptions(t *testing.T) {
	for _, tc := range []struct {
		name    string
		pv      []string
		secrets map[string]string
		want    []string
	}{
		{"nothing", nil, nil, nil},
		{"secrets", nil, map[string]string{"mountOptions": "nfsvers=4.1,ro"}, []string{"nfsvers=4.1", "ro"}},
		{"secrets key in any case", nil, map[string]string{"mountoptions": "nfsvers=3"}, []string{"nfsvers=3"}},
		{"the PV's win", []string{"nfsvers=4.2"}, map[string]string{"mountOptions": "nfsvers=3"}, []string{"nfsvers=4.2"}},
		{"other secrets ignored", nil, map[string]string{"password": "x"}, nil},
	} {
		got, err := deleteOptions(tc.pv, tc.secrets)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%s: %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
	for _, bad := range []string{"nfsvers=4\nro", "ro,,rw", ",ro", "vers=3\x00", strings.Repeat("x", 300)} {
		_, err := deleteOptions(nil, map[string]string{"mountOptions": bad})
		msg := status.Convert(err).Message()
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(msg, "mountOptions") || strings.Contains(msg, bad) {
			t.Errorf("secret mountOptions %q: %v; want InvalidArgument naming the key, not the value", bad, err)
		}
	}
	if _, err := deleteOptions([]string{"a\nb"}, nil); status.Code(err) != codes.InvalidArgument {
		t.Errorf("a PV mount option with a newline: %v, want InvalidArgument", err)
	}
}
