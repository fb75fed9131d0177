// Package term answers what the binaries ask about their terminal.
package term

import (
	"io"
	"os"
)

// IsTerminal reports whether w is a character device (a terminal), where a
// progress line that redraws itself belongs.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
