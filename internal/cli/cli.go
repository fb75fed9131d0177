// Package cli gives the module's binaries the same command-line habits:
//
//   - -h (or -help) prints the usage to stdout and exits 0, for the command
//     and for each subcommand;
//   - a usage error (an unknown flag or subcommand, a missing argument)
//     prints what is wrong and the usage to stderr and exits 2;
//   - a failure prints "NAME: error" to stderr and exits 1;
//   - -version prints the module version and the VCS revision the binary
//     was built from;
//   - SIGINT or SIGTERM cancels the run's context; a second signal kills.
//
// A binary's main is one line, cli.Main("name", run), and run is testable:
// it takes the arguments and the output streams and returns an error.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
)

// ErrUsage reports a usage error whose explanation has already been
// written to stderr; Main exits 2 on it without printing it again.
var ErrUsage = errors.New("usage error")

// Usagef writes the message to w and returns an error wrapping ErrUsage.
func Usagef(w io.Writer, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	fmt.Fprintln(w, msg)
	return fmt.Errorf("%w: %s", ErrUsage, msg)
}

// Parse parses args into fs. On -h it prints fs's usage to stdout and
// returns flag.ErrHelp; on a bad flag it prints the error and the usage to
// stderr and returns an error wrapping ErrUsage. fs.Usage must write to
// fs.Output().
func Parse(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.SetOutput(stdout)
		fs.Usage()
	case err != nil:
		fs.SetOutput(stderr)
		fmt.Fprintln(stderr, err)
		fs.Usage()
		err = fmt.Errorf("%w: %w", ErrUsage, err)
	}
	fs.SetOutput(stderr)
	return err
}

// IsHelp reports whether arg asks for help.
func IsHelp(arg string) bool {
	switch arg {
	case "-h", "-help", "--help", "help":
		return true
	}
	return false
}

// IsVersion reports whether arg asks for the version.
func IsVersion(arg string) bool {
	switch arg {
	case "-version", "--version", "version":
		return true
	}
	return false
}

// Main runs run with the process's arguments and streams and a context
// that SIGINT or SIGTERM cancels (a second signal kills the process), then
// exits: 0 on success or help, 2 on a usage error, 1 on any other error,
// which it prints prefixed with name.
func Main(name string, run func(ctx context.Context, args []string, stdout, stderr io.Writer) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second signal kills the process
	}()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(ExitCode(name, err, os.Stderr))
}

// ExitCode is the exit status for run's error, printing the error to
// stderr when the user has not seen it yet.
func ExitCode(name string, err error, stderr io.Writer) int {
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, ErrUsage):
		return 2
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, name+":") {
		msg = name + ": " + msg
	}
	fmt.Fprintln(stderr, msg)
	return 1
}

// Version returns the module version and the VCS revision (with its time,
// and "+dirty" for a modified tree) that the build recorded, and the Go
// version. `go build` and `go install` in a git checkout record the
// revision unless -buildvcs=false is set (GOFLAGS may set it); the string
// says so when it is missing.
func Version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown (no build information)"
	}
	var rev, at, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			at = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+dirty"
			}
		}
	}
	v := bi.Main.Path + " " + bi.Main.Version
	if rev == "" {
		v += ", VCS revision not recorded (built with -buildvcs=false or outside a git checkout)"
	} else {
		v += ", revision " + rev + dirty
		if at != "" {
			v += " (" + at + ")"
		}
	}
	return v + ", " + bi.GoVersion
}
