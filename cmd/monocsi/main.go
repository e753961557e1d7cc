// Command monocsi is Kubernetes storage in one binary: CSI drivers plus the
// roles that the CSI sidecars play, selected by subcommand.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/klog/v2"

	"github.com/monocsi/monocsi/internal/version"
)

const usage = `monocsi — Kubernetes storage in one binary.

Usage:
  monocsi node    --node-id=NAME [--kubelet-dir=/var/lib/kubelet] [--drivers=local] [flags]
  monocsi serve   --driver=local --endpoint=unix:///path.sock --node-id=NAME [flags]
  monocsi controller [--drivers=...] [--leader-election] [flags]
  monocsi version

Run "monocsi <command> --help" for a command's flags.
`

func main() {
	err := run(os.Args[1:])
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "monocsi:", err)
	}
	klog.Flush()
	os.Exit(exitCode(err))
}

// exitCode is 0 for success and for --help (the flag package printed the
// command's flags), 1 otherwise.
func exitCode(err error) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return 1
}

func run(args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return errors.New("no command given")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	switch args[0] {
	case "node":
		return runNode(ctx, args[1:])
	case "serve":
		return runServe(ctx, args[1:])
	case "controller":
		return runController(ctx, args[1:])
	case "version", "--version":
		fmt.Println(version.Version)
		return nil
	case "help", "-h", "--help":
		fmt.Print(usage)
		return nil
	}
	fmt.Fprint(os.Stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

// newFlags returns a flag set with klog's flags (--v and friends), as the CSI
// sidecars have them.
func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	klog.InitFlags(fs)
	return fs
}
