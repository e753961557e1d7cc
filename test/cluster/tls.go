package cluster

import (
	"crypto/tls"
	"net/http"
)

// insecureTransport talks to the apiserver's self-signed serving certificate.
func insecureTransport() *http.Transport {
	return &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // local test cluster
}
