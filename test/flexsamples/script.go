package flexsamples

import (
	_ "embed"
	"os"
	"path/filepath"
)

// NFSScript is the bash + jq NFS sample (./nfsscript/nfs): a FlexVolume
// driver of the classic shape, which needs the host's bash, jq, findmnt and
// mount.nfs (monocsi runs it with --flex-exec=host). Dir(NFSScript) is its
// driver directory, monocsi~nfs; its CSI driver is NFSScriptDriver.
const NFSScript = "nfs"

// NFSScriptDriver is the CSI name monocsi derives for the NFS script.
const NFSScriptDriver = "nfs.monocsi.flex.monocsi.io"

// The script is embedded: the VM tests run a test binary without the tree.
//
//go:embed nfsscript/nfs
var nfsScript []byte

// InstallNFSScript writes the NFS script into flexDir as
// <flexDir>/monocsi~nfs/nfs, mode 0755, appearing by rename in one step.
func InstallNFSScript(flexDir string) (exe string, err error) {
	dir := filepath.Join(flexDir, Dir(NFSScript))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	tmp := filepath.Join(dir, "."+NFSScript+".tmp")
	if err := os.WriteFile(tmp, nfsScript, 0o755); err != nil {
		return "", err
	}
	// WriteFile's mode is masked by the umask; the kubelet wants 0755.
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", err
	}
	exe = filepath.Join(dir, NFSScript)
	return exe, os.Rename(tmp, exe)
}
