package raftnode

import (
	"context"
	"io"
	"log"
	"log/slog"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// NewRaftLogger returns an hclog.Logger for hashicorp/raft that writes
// through l: each raft line is one slog record at the mapped level (Trace
// and Debug as Debug, Info, Warn and Error as themselves), with raft's
// key-value pairs as attributes and its logger name as "logger". Lines
// below min are dropped before they are formatted.
func NewRaftLogger(l *slog.Logger, min hclog.Level) hclog.Logger {
	return &slogHclog{l: l, name: "raft", level: min}
}

// slogHclog is an hclog.Logger on a slog.Logger. hclog has no slog
// bridge of its own (FromStandardLogger formats the level into the
// message text), hence this small adapter.
type slogHclog struct {
	l     *slog.Logger
	name  string
	level hclog.Level
	args  []any
}

func slogLevel(l hclog.Level) slog.Level {
	switch l {
	case hclog.Trace, hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	}
	return slog.LevelInfo
}

func (h *slogHclog) Log(level hclog.Level, msg string, args ...any) {
	if level == hclog.Off || level < h.level {
		return
	}
	sl := slogLevel(level)
	if !h.l.Enabled(context.Background(), sl) {
		return
	}
	attrs := make([]any, 0, 2+len(h.args)+len(args))
	attrs = append(attrs, "logger", h.name)
	attrs = append(attrs, h.args...)
	attrs = append(attrs, args...)
	h.l.Log(context.Background(), sl, msg, attrs...)
}

func (h *slogHclog) Trace(msg string, args ...any) { h.Log(hclog.Trace, msg, args...) }
func (h *slogHclog) Debug(msg string, args ...any) { h.Log(hclog.Debug, msg, args...) }
func (h *slogHclog) Info(msg string, args ...any)  { h.Log(hclog.Info, msg, args...) }
func (h *slogHclog) Warn(msg string, args ...any)  { h.Log(hclog.Warn, msg, args...) }
func (h *slogHclog) Error(msg string, args ...any) { h.Log(hclog.Error, msg, args...) }

func (h *slogHclog) IsTrace() bool { return h.level <= hclog.Trace }
func (h *slogHclog) IsDebug() bool { return h.level <= hclog.Debug }
func (h *slogHclog) IsInfo() bool  { return h.level <= hclog.Info }
func (h *slogHclog) IsWarn() bool  { return h.level <= hclog.Warn }
func (h *slogHclog) IsError() bool { return h.level <= hclog.Error }

func (h *slogHclog) ImpliedArgs() []any { return h.args }

func (h *slogHclog) With(args ...any) hclog.Logger {
	c := *h
	c.args = append(append([]any(nil), h.args...), args...)
	return &c
}

func (h *slogHclog) Name() string { return h.name }

func (h *slogHclog) Named(name string) hclog.Logger {
	c := *h
	if c.name != "" {
		name = c.name + "." + name
	}
	c.name = name
	return &c
}

func (h *slogHclog) ResetNamed(name string) hclog.Logger {
	c := *h
	c.name = name
	return &c
}

// SetLevel changes this logger's minimum; raft does not call it, and
// loggers derived before keep theirs.
func (h *slogHclog) SetLevel(level hclog.Level) { h.level = level }

func (h *slogHclog) GetLevel() hclog.Level { return h.level }

func (h *slogHclog) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(h.StandardWriter(opts), "", 0)
}

func (h *slogHclog) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	level := hclog.Info
	if opts != nil && opts.ForceLevel != hclog.NoLevel {
		level = opts.ForceLevel
	}
	return writerFunc(func(p []byte) (int, error) {
		h.Log(level, strings.TrimRight(string(p), "\n"))
		return len(p), nil
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
