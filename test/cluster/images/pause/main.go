// Command pause is the test cluster's pod sandbox container: it holds the
// pod's namespaces open until the runtime stops it with SIGTERM or SIGINT,
// and, as PID 1 of a pod that shares its PID namespace, reaps orphaned
// children. Build it with CGO_ENABLED=0 so the image needs no libraries.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		reap()
	}
}

// reap collects every child that has already exited. It runs only on
// SIGCHLD and never blocks or spins: WNOHANG returns 0 while children are
// still running, and ECHILD ends the loop when there are none. One call
// reaps them all because pending SIGCHLDs coalesce.
func reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
	}
}
