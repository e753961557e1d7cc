package flex

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
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

// maxArg is the longest argument an executable can be given: Linux's
// MAX_ARG_STRLEN (32 pages of 4 KiB, with the terminating NUL); longer,
// execve fails with E2BIG. maxArgs bounds all arguments together, below the
// 2 MiB that execve allows with the default 8 MiB stack limit.
const (
	maxArg  = 32*4096 - 1
	maxArgs = 1 << 20
)

// checkArgs refuses arguments execve would refuse, as OUT_OF_RANGE naming
// which: they come from the request (options, paths, IDs), not from a fault.
func checkArgs(op string, args []string) error {
	total := 0
	for i, a := range args {
		if len(a) > maxArg {
			return status.Errorf(codes.OutOfRange, "%s: argument %d is %d bytes long, more than an executable may be given (%d)", op, i+1, len(a), maxArg)
		}
		if strings.IndexByte(a, 0) >= 0 {
			return status.Errorf(codes.InvalidArgument, "%s: argument %d contains a NUL byte, which no executable can be given", op, i+1)
		}
		total += len(a) + 1
	}
	if total > maxArgs {
		return status.Errorf(codes.OutOfRange, "%s: the arguments are %d bytes long, more than an executable may be given (%d)", op, total, maxArgs)
	}
	return nil
}

// maxOutput bounds what an executable may print: its reply is a small JSON
// object, and a runaway one must not fill the process's memory.
const maxOutput = 64 << 10

// call runs the executable with a command and its arguments under timeout
// and returns its Success reply; every other outcome is a gRPC error naming
// the driver and the command, or errNotSupported.
func (d *Driver) call(ctx context.Context, timeout time.Duration, args ...string) (*reply, error) {
	if err := checkArgs(args[0], args); err != nil {
		return nil, status.Errorf(status.Code(err), "flex driver %s: %s", d.name, status.Convert(err).Message())
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := d.command(ctx, args)
	// stderr as large as stdout: some scripts write their Failure reply there.
	stdout, stderr := &proc.Buffer{Max: maxOutput}, &proc.Buffer{Max: maxOutput}
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
	if errors.Is(runErr, syscall.E2BIG) {
		// A backstop for checkArgs: the limits of this kernel were lower.
		return nil, fail(codes.OutOfRange, "the arguments are too long to run the executable (%v): store less in the volume", runErr)
	}
	if errors.Is(runErr, exec.ErrWaitDelay) && cmd.ProcessState.Success() {
		runErr = nil // it answered and exited; a child it left keeps the pipe
	}
	if stdout.Overflow {
		return nil, fail(codes.Internal, "output exceeds %d bytes", maxOutput)
	}
	r, extra, err := decodeReply(stdout.Bytes())
	if err != nil && !stderr.Overflow {
		// No reply on stdout: a script may have written its reply (a
		// Failure, usually) to stderr, as kubernetes/examples' NFS one does.
		if sr, sextra, serr := decodeReply(stderr.Bytes()); serr == nil && !sextra && sr.Status != "" {
			klog.V(4).InfoS("FlexVolume reply taken from stderr", "driver", d.name, "command", op)
			r, extra, err = sr, false, nil
		}
	}
	if err != nil {
		detail := strings.TrimSpace(stdout.String() + " " + stderr.String())
		if runErr != nil {
			return nil, fail(codes.Internal, "%v: %s", runErr, clip(detail))
		}
		return nil, fail(codes.Internal, "reply is not JSON (%v): %s", err, clip(detail))
	}
	if extra {
		return nil, fail(codes.Internal, "reply has more than one JSON value: %s", clip(stdout.String()))
	}
	switch r.Status {
	case statusSuccess:
		if runErr != nil {
			return nil, fail(codes.Internal, "said Success but %v", runErr)
		}
		return r, nil
	case statusNotSupported:
		return r, errNotSupported
	case statusFailure:
		c, ok := failureCodes[r.Code]
		if !ok {
			c = codes.Internal
		}
		return nil, fail(c, "%s", clip(r.Message))
	}
	return nil, fail(codes.Internal, "unknown status %q", clip(r.Status))
}

// command is the exec.Cmd of one call: the executable itself, or nsenter
// running it in the host's mount namespace (ExecHost), with the commands'
// PATH and the variables passed on.
func (d *Driver) command(ctx context.Context, args []string) *exec.Cmd {
	argv := append([]string{d.exe}, args...)
	if d.nsenter != "" {
		argv = hostCommand(d.nsenter, d.mountNS, d.exe, args)
	}
	cmd := proc.Command(ctx, argv[0], argv[1:]...)
	cmd.Env = commandEnv(os.Environ(), d.path, d.env)
	return cmd
}

// decodeReply decodes a reply from the first JSON value of out; extra says
// more followed it.
func decodeReply(out []byte) (r *reply, extra bool, err error) {
	r = &reply{}
	dec := json.NewDecoder(bytes.NewReader(out))
	if err := dec.Decode(r); err != nil {
		return nil, false, err
	}
	_, err = dec.Token()
	return r, err != io.EOF, nil
}

func clip(s string) string {
	const limit = 512
	if len(s) > limit {
		return s[:limit] + "..."
	}
	return s
}
