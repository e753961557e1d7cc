package flex

import (
	"encoding/base64"
	"encoding/json"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The keys the kubelet added to a FlexVolume's options.
const (
	optFSType     = "kubernetes.io/fsType"
	optReadWrite  = "kubernetes.io/readwrite"
	optVolumeName = "kubernetes.io/pvOrVolumeName"
	optSecret     = "kubernetes.io/secret/"
)

// podInfo maps the pod information the kubelet gives CSI drivers with
// podInfoOnMount to the keys FlexVolume executables read.
var podInfo = map[string]string{
	"csi.storage.k8s.io/pod.name":            "kubernetes.io/pod.name",
	"csi.storage.k8s.io/pod.namespace":       "kubernetes.io/pod.namespace",
	"csi.storage.k8s.io/pod.uid":             "kubernetes.io/pod.uid",
	"csi.storage.k8s.io/serviceAccount.name": "kubernetes.io/serviceAccount.name",
}

// options builds the JSON options of a call: the volume's attributes (a PV's
// volumeAttributes are a flexVolume's options), the kubelet's keys, and the
// secrets base64-encoded. The user's attributes may not set the kubelet's
// keys: a pod must not pass itself off as another.
func options(volumeID string, attrs map[string]string, vc *csi.VolumeCapability, readOnly bool, secrets map[string]string) (string, error) {
	o := map[string]string{}
	for k, v := range attrs {
		if strings.HasPrefix(k, "csi.storage.k8s.io/") {
			if fk, ok := podInfo[k]; ok {
				o[fk] = v
			}
			continue
		}
		if strings.HasPrefix(k, "kubernetes.io/") {
			return "", status.Errorf(codes.InvalidArgument, "volume attribute %q is reserved for the keys the kubelet sets", k)
		}
		o[k] = v
	}
	if fs := vc.GetMount().GetFsType(); fs != "" {
		o[optFSType] = fs
	}
	o[optReadWrite] = "rw"
	if readOnly {
		o[optReadWrite] = "ro"
	}
	o[optVolumeName] = volumeID
	for k, v := range secrets {
		o[optSecret+k] = base64.StdEncoding.EncodeToString([]byte(v))
	}
	b, err := json.Marshal(o)
	if err != nil {
		return "", err
	}
	if len(b) > maxArg {
		return "", status.Errorf(codes.OutOfRange,
			"volume attributes and secrets make %d bytes of options, more than an executable may be given in one argument (%d bytes): store less in the volume",
			len(b), maxArg)
	}
	return string(b), nil
}
