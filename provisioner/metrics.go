package provisioner

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/status"
)

// operations has the CSI sidecars' metric name and labels, so dashboards
// built for them keep working.
var operations = prometheus.NewHistogramVec(prometheus.HistogramOpts{
	Name:    "csi_sidecar_operations_seconds",
	Help:    "Duration of CSI operations called by monocsi's embedded sidecars.",
	Buckets: []float64{.001, .005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
}, []string{"driver_name", "method_name", "grpc_status_code"})

func observe(driverName, method string, start time.Time, err error) {
	operations.WithLabelValues(driverName, "/csi.v1.Controller/"+method, status.Code(err).String()).Observe(time.Since(start).Seconds())
}
