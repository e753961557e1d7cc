// Package opmetrics is csi_sidecar_operations_seconds: the duration of every
// CSI call monocsi's embedded sidecars (provisioner, attacher, resizer,
// capacity, snapshotter) make, with the sidecars' metric name and labels, so
// dashboards built for them keep working.
package opmetrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/status"
)

// Operations is registered once per process by the role that serves /metrics.
var Operations = prometheus.NewHistogramVec(prometheus.HistogramOpts{
	Name:    "csi_sidecar_operations_seconds",
	Help:    "Duration of CSI operations called by monocsi's embedded sidecars.",
	Buckets: []float64{.001, .005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
}, []string{"driver_name", "method_name", "grpc_status_code"})

// Observe records one Controller call that started at start.
func Observe(driverName, method string, start time.Time, err error) {
	Operations.WithLabelValues(driverName, "/csi.v1.Controller/"+method, status.Code(err).String()).Observe(time.Since(start).Seconds())
}
