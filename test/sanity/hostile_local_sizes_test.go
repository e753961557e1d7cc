package sanity

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestHostileLocalSizes aims at the local driver's sizes and stats: bad
// enforceSize values, enforced sizes on a root without project quotas,
// shrinks, and stats of a volume full of symlinks that lead out of it, to
// the root of the node and back into itself (the walk must follow none).
// Each case checks the code, the canary tree, the mounts and the processes
// (runHostile).
func TestHostileLocalSizes(t *testing.T) {
	requireRoot(t)
	sock, root := serveLocal(t)
	conn := dial(t, sock)
	e := &localEnv{ctl: csi.NewControllerClient(conn), node: csi.NewNodeClient(conn), root: root}
	c := newCanary(t)
	pods := realTempDir(t)
	var a string
	create := func(name string, params map[string]string) error {
		_, err := e.ctl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
			Name: name, VolumeCapabilities: []*csi.VolumeCapability{rwoMount},
			CapacityRange: &csi.CapacityRange{RequiredBytes: 10 << 20}, Parameters: params})
		return err
	}
	nothingMade := func(name string) func(t *testing.T) {
		return func(t *testing.T) {
			for _, p := range []string{filepath.Join(root, name), filepath.Join(root, ".monocsi", name+".json")} {
				if _, err := os.Lstat(p); !os.IsNotExist(err) {
					t.Errorf("a refused create left %s", p)
				}
			}
		}
	}
	expand := func(id string, req, lim int64) error {
		_, err := e.ctl.ControllerExpandVolume(context.Background(), &csi.ControllerExpandVolumeRequest{
			VolumeId: id, CapacityRange: &csi.CapacityRange{RequiredBytes: req, LimitBytes: lim}})
		return err
	}
	sized := func(t *testing.T) string {
		t.Helper()
		e.n++
		id := fmt.Sprintf("sized-%d", e.n)
		if err := create(id, nil); err != nil {
			t.Fatal(err)
		}
		return id
	}
	stillTen := func(t *testing.T) {
		var rec struct {
			CapacityBytes int64 `json:"capacityBytes"`
		}
		b, err := os.ReadFile(filepath.Join(root, ".monocsi", a+".json"))
		if err == nil {
			err = json.Unmarshal(b, &rec)
		}
		if err != nil || rec.CapacityBytes != 10<<20 {
			t.Errorf("volume %s: recorded %d bytes (%v), want 10 MiB", a, rec.CapacityBytes, err)
		}
		e.gone(t, a)
	}
	var cases []hostileCase
	for _, v := range []string{"yes", "TRUE", "", "1", "true ", "true\x00"} {
		cases = append(cases, hostileCase{name: "enforceSize " + string(mustJSON(v)), run: func(t *testing.T) error {
			return create("bad-enforce", map[string]string{"enforceSize": v})
		}, after: nothingMade("bad-enforce")})
	}
	cases = append(cases,
		hostileCase{name: "enforceSize true without project quotas", codes: []codes.Code{codes.ResourceExhausted}, run: func(t *testing.T) error {
			err := create("must-enforce", map[string]string{"enforceSize": "true"})
			if msg := status.Convert(err).Message(); err != nil && !(strings.Contains(msg, "prjquota") && strings.Contains(msg, root)) {
				t.Errorf("the message does not name the root and the mount option: %s", msg)
			}
			return err
		}, after: nothingMade("must-enforce")},
		hostileCase{name: "expand to a smaller size", codes: []codes.Code{codes.OutOfRange}, run: func(t *testing.T) error {
			a = sized(t)
			return expand(a, 5<<20, 0)
		}, after: stillTen},
		hostileCase{name: "expand with a limit below the size", codes: []codes.Code{codes.OutOfRange}, run: func(t *testing.T) error {
			a = sized(t)
			return expand(a, 0, 1<<20)
		}, after: stillTen},
		hostileCase{name: "expand with a negative size", run: func(t *testing.T) error {
			a = sized(t)
			return expand(a, -1, 0)
		}, after: stillTen},
		hostileCase{name: "expand past the free space", codes: []codes.Code{codes.ResourceExhausted}, run: func(t *testing.T) error {
			a = sized(t)
			return expand(a, 1<<62, 0)
		}, after: stillTen},
		hostileCase{name: "expand a volume that does not exist", codes: []codes.Code{codes.NotFound}, run: func(t *testing.T) error {
			return expand("no-such-volume", 20<<20, 0)
		}},
		hostileCase{name: "stats of a volume of symlinks out of it and into itself", codes: []codes.Code{codes.OK}, run: func(t *testing.T) error {
			a = e.volume(t)
			for name, to := range map[string]string{"root": "/", "canary": c.dir, "self": ".", "up": "..", "volumes": root, "loop": "loop"} {
				mustSymlink(t, to, e.dir(a, name))
			}
			start := time.Now()
			resp, err := e.node.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: a, VolumePath: e.dir(a)})
			if err != nil {
				return err
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("stats took %v", d)
			}
			for _, u := range resp.GetUsage() {
				if u.GetUnit() == csi.VolumeUsage_BYTES && u.GetUsed() > 1<<20 {
					t.Errorf("bytes %v: a symlink was followed, or the filesystem's figures were reported", u)
				}
				if u.GetUnit() == csi.VolumeUsage_INODES && u.GetUsed() != 8 { // the directory, data, 6 symlinks
					t.Errorf("inodes %v, want 8 used", u)
				}
			}
			return nil
		}, after: func(t *testing.T) { e.gone(t, a) }},
	)
	n := runHostile(t, c, []string{pods, filepath.Dir(root)}, cases)
	t.Logf("%d hostile local size cases", n)
}

func mustJSON(v string) []byte {
	b, _ := json.Marshal(v)
	return b
}
