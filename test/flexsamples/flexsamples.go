// Package flexsamples installs the test tree's sample FlexVolume drivers
// (./bindmount, ./loopdev) into a FlexVolume directory, as a user installs
// theirs: <dir>/monocsi~<name>/<name>.
package flexsamples

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
)

// Dir is the FlexVolume directory name of a sample.
func Dir(name string) string { return "monocsi~" + name }

// Install builds the named samples, static, into flexDir. The executable
// appears by rename, in one step, as a watcher of flexDir should see it.
func Install(flexDir string, names ...string) error {
	_, file, _, _ := runtime.Caller(0)
	for _, name := range names {
		dir := filepath.Join(flexDir, Dir(name))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		tmp := filepath.Join(dir, "."+name+".tmp")
		cmd := exec.Command("go", "build", "-o", tmp, "./"+name)
		cmd.Dir = filepath.Dir(file)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build flex sample %s: %v\n%s", name, err, out)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	return nil
}
