package flex

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/monocsi/monocsi/internal/proc"
)

// reply is a FlexVolume executable's answer.
type reply struct {
	Status       string        `json:"status"`
	Message      string        `json:"message,omitempty"`
	Device       string        `json:"device,omitempty"`
	VolumeName   string        `json:"volumeName,omitempty"`
	Attached     bool          `json:"attached,omitempty"`
	Capabilities *capabilities `json:"capabilities,omitempty"`
	// Code is monocsi's extension to the protocol: a Failure may name the
	// gRPC code that fits it (NotFound, AlreadyExists, ...); without one a
	// Failure is INTERNAL. The kubelet ignores the field.
	Code string `json:"code,omitempty"`
}

// failureCodes are the codes a Failure may name.
var failureCodes = map[string]codes.Code{
	"InvalidArgument": codes.InvalidArgument, "NotFound": codes.NotFound, "AlreadyExists": codes.AlreadyExists,
	"FailedPrecondition": codes.FailedPrecondition, "ResourceExhausted": codes.ResourceExhausted,
	"Unavailable": codes.Unavailable, "OutOfRange": codes.OutOfRange,
}

type capabilities struct {
	// Attach is a pointer: left out, it means true (the kubelet's default).
	Attach *bool `json:"attach,omitempty"`
}

const (
	statusSuccess      = "Success"
	statusFailure      = "Failure"
	statusNotSupported = "Not supported"
)

// errNotSupported is the executable's "Not supported": the caller falls back
// to the default behaviour for that step.
var errNotSupported = errors.New("not supported")

// maxOutput bounds what an executable may print: its reply is a small JSON
// object, and a runaway one must not fill the process's memory.
const maxOutput = 64 << 10

// call runs the executable with a command and its arguments under timeout
// and returns its Success reply; every other outcome is a gRPC error naming
// the driver and the command, or errNotSupported.
func (d *Driver) call(ctx context.Context, timeout time.Duration, args ...string) (*reply, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := proc.Command(ctx, d.exe, args...)
	stdout, stderr := &proc.Buffer{Max: maxOutput}, &proc.Buffer{Max: 4096}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.Stdin = nil
	start := time.Now()
	runErr := proc.Run(ctx, cmd)
	op := args[0]
	klog.V(4).InfoS("FlexVolume call", "driver", d.name, "command", op, "duration", time.Since(start), "error", runErr)
	fail := func(c codes.Code, format string, a ...any) error {
		return status.Errorf(c, "flex driver %s: %s: %s", d.name, op, fmt.Sprintf(format, a...))
	}
	if ctx.Err() != nil {
		// Checked first: an unkillable command may still write its output.
		if ctx.Err() == context.DeadlineExceeded {
			return nil, fail(codes.DeadlineExceeded, "no answer within %s", timeout)
		}
		return nil, fail(codes.Canceled, "%v", ctx.Err())
	}
	if errors.Is(runErr, exec.ErrWaitDelay) && cmd.ProcessState.Success() {
		runErr = nil // it answered and exited; a child it left keeps the pipe
	}
	if stdout.Overflow {
		return nil, fail(codes.Internal, "output exceeds %d bytes", maxOutput)
	}
	var r reply
	dec := json.NewDecoder(bytes.NewReader(stdout.Bytes()))
	if err := dec.Decode(&r); err != nil {
		detail := strings.TrimSpace(stdout.String() + " " + stderr.String())
		if runErr != nil {
			return nil, fail(codes.Internal, "%v: %s", runErr, clip(detail))
		}
		return nil, fail(codes.Internal, "reply is not JSON (%v): %s", err, clip(detail))
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fail(codes.Internal, "reply has more than one JSON value: %s", clip(stdout.String()))
	}
	switch r.Status {
	case statusSuccess:
		if runErr != nil {
			return nil, fail(codes.Internal, "said Success but %v", runErr)
		}
		return &r, nil
	case statusNotSupported:
		return &r, errNotSupported
	case statusFailure:
		c, ok := failureCodes[r.Code]
		if !ok {
			c = codes.Internal
		}
		return nil, fail(c, "%s", clip(r.Message))
	}
	return nil, fail(codes.Internal, "unknown status %q", clip(r.Status))
}

func clip(s string) string {
	const limit = 512
	if len(s) > limit {
		return s[:limit] + "..."
	}
	return s
}
