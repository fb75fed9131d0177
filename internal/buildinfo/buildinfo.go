// Package buildinfo gives the binaries their -version string.
package buildinfo

import "runtime/debug"

// Version returns the module version and VCS revision the binary was built
// from, as far as the build recorded them.
func Version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" {
			v += " " + s.Value
		}
	}
	return v + " " + bi.GoVersion
}
