package supervisor

import (
	"context"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/monocsi/monocsi/csidriver"
	"github.com/monocsi/monocsi/driver/flex"
)

// KeepCSIDriver writes the CSIDriver object of a FlexVolume driver from its
// executable's init (attachRequired, pod info, inline volumes for drivers
// that do not attach), retrying from every second to every minute until it
// is written or ctx ends. Only the controller role calls it: the objects have
// one writer, and a node that disagrees records an Event (Node.Serve).
func KeepCSIDriver(ctx context.Context, client kubernetes.Interface, name string, d *flex.Driver) {
	for wait := time.Second; ctx.Err() == nil; wait = min(2*wait, time.Minute) {
		err := csidriver.Ensure(ctx, client, name, d.Declare())
		if err == nil {
			return
		}
		klog.ErrorS(err, "Cannot write the CSIDriver object of a FlexVolume driver; retrying", "driver", name, "in", wait)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
}
