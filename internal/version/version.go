// Package version holds the build's version, set by the Makefile through -ldflags.
package version

// Version is overwritten at link time: -X github.com/monocsi/monocsi/internal/version.Version=...
var Version = "dev"
