package main

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Exit codes, for scripts (README.md lists them too).
const (
	// ExitOK: done.
	ExitOK = 0
	// ExitError: anything not below (consoleauth's internal error, a kill
	// asked whose session had not ended within 2 s).
	ExitError = 1
	// ExitUsage: bad flags, arguments or settings, or a request consoleauth
	// refused as invalid.
	ExitUsage = 2
	// ExitNotFound: no such session, proxy or instance.
	ExitNotFound = 3
	// ExitUnavailable: consoleauth or etcd could not be reached or did not
	// answer in time.
	ExitUnavailable = 4
	// ExitDenied: consoleauth refused the credentials (not an operator
	// certificate, or none).
	ExitDenied = 5
)

// usageError is a mistake on the command line or in the settings.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// notEndedError is a kill consoleauth asked for whose session had not
// ended when it answered.
type notEndedError struct{ msg string }

func (e notEndedError) Error() string { return e.msg }

// exitCode maps a command's error to the process's exit code.
func exitCode(err error) int {
	var u usageError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &u):
		return ExitUsage
	case errors.Is(err, context.DeadlineExceeded):
		return ExitUnavailable
	}
	st, ok := status.FromError(err)
	if !ok {
		return ExitError
	}
	switch st.Code() {
	case codes.InvalidArgument, codes.OutOfRange, codes.ResourceExhausted:
		return ExitUsage
	case codes.NotFound:
		return ExitNotFound
	case codes.Unavailable, codes.DeadlineExceeded:
		return ExitUnavailable
	case codes.Unauthenticated, codes.PermissionDenied:
		return ExitDenied
	}
	return ExitError
}
