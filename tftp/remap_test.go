package tftp

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var (
	v4client = netip.MustParseAddrPort("192.0.2.169:1000")
	v6client = netip.MustParseAddrPort("[2001:db8::1]:1000")
)

func mustRemap(t *testing.T, rules string) *Remap {
	t.Helper()
	m, err := ParseRemap(strings.NewReader(rules))
	if err != nil {
		t.Fatalf("%q: %v", rules, err)
	}
	return m
}

func TestRemapRewrite(t *testing.T) {
	for _, c := range []struct {
		rules, name, want string
		op                Opcode
		client            netip.AddrPort
	}{
		{`rg \\ /`, `boot\x86\pxelinux.0`, "boot/x86/pxelinux.0", OpRRQ, v4client},
		{`r \\ /`, `a\b\c`, `a/b\c`, OpRRQ, v4client},
		{`ri ^PXELINUX\.0$ pxelinux.0`, "PxeLinux.0", "pxelinux.0", OpRRQ, v4client},
		{`r ^(.*)\.cfg$ cfg/\i/\1`, "boot.cfg", "cfg/192.0.2.169/boot", OpRRQ, v4client},
		{`r ^(.*)\.cfg$ cfg/\i/\1`, "boot.cfg", "cfg/2001:db8::1/boot", OpRRQ, v6client},
		{`r ^ \x-`, "f", "C00002A9-f", OpRRQ, v4client},
		{`r ^ \x-`, "f", "20010DB8000000000000000000000001-f", OpRRQ, v6client},
		{`r ^ \x-`, "f", "C00002A9-f", OpRRQ, netip.MustParseAddrPort("[::ffff:192.0.2.169]:1")},
		{`r (.*) \U\1\E-\L\1`, "MiXed", "MIXED-mixed", OpRRQ, v4client},
		{`r a\ b x\ y\#\\`, "a b", `x y#\`, OpRRQ, v4client},
		{"rG ^ get/\nrP ^ put/", "f", "get/f", OpRRQ, v4client},
		{"rG ^ get/\nrP ^ put/", "f", "put/f", OpWRQ, v4client},
		{"r4 ^ v4/\nr6 ^ v6/", "f", "v6/f", OpRRQ, v6client},
		{"r4 ^ v4/\nr6 ^ v6/", "f", "v4/f", OpRRQ, v4client},
		{"re ^a b\nr b c", "a", "b", OpRRQ, v4client},           // e stops
		{"r b c\nrs ^a b", "a", "c", OpRRQ, v4client},           // s starts over
		{"e~ ^keep\nr .* x", "keep", "x", OpRRQ, v4client},      // ~: matches when the regex does not
		{"e~ ^keep\nr .* x", "other", "other", OpRRQ, v4client}, // ... and e ends there
		{"r a|ab X", "abc", "Xc", OpRRQ, v4client},              // leftmost-longest, as POSIX
		{"# only a comment\n\n   \n", "f", "f", OpRRQ, v4client},
		{`r [[:upper:]]+ x # trailing comment`, "aBCd", "axd", OpRRQ, v4client},
	} {
		m := mustRemap(t, c.rules)
		got, err := m.Rewrite(FileRequest{Op: c.op, Name: c.name, Client: c.client})
		if err != nil || got != c.want {
			t.Errorf("%q on %q: %q %v, want %q", c.rules, c.name, got, err, c.want)
		}
	}
}

func TestRemapAbort(t *testing.T) {
	m := mustRemap(t, "a \\.\\.\na ^(secret)/ no\\ \\1\\ here")
	for name, msg := range map[string]string{
		"a/../b":    "access violation: refused by the remap rules",
		"secret/x":  "no secret here",
		"x/secret/": "",
	} {
		_, err := m.Rewrite(FileRequest{Name: name, Client: v4client})
		var te *Error
		if msg == "" {
			if err != nil {
				t.Errorf("%q: %v", name, err)
			}
			continue
		}
		if !errors.As(err, &te) || te.Code != ErrAccessViolation || te.Message != msg {
			t.Errorf("%q: %v, want ERROR 2 %q", name, err, msg)
		}
	}
}

// Rules that do not end are refused at parse time when that can be seen,
// and stopped within the bounds otherwise.
func TestRemapBounded(t *testing.T) {
	for _, rules := range []string{
		"rs a a",                  // starts over on the same name
		"r a b\nrs b a",           // two rules undo each other
		"rg (a) \\1\\1",           // the name grows a byte a step
		"rg (ay) a\\1",            // grows at the front
		"rs y yy",                 // grows at each start over
		"r ^a x\nr ^x a\nrs ^a a", // three rules go round
	} {
		m := mustRemap(t, rules)
		start := time.Now()
		_, err := m.Rewrite(FileRequest{Name: "ay", Client: v4client})
		if !errors.Is(err, ErrRemapLoop) || ErrorCodeOf(err) != ErrUndefined {
			t.Errorf("%q: %v, want ErrRemapLoop", rules, err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%q: took %v", rules, d)
		}
	}
	long := strings.Repeat("a", maxNameLen+1)
	if _, err := mustRemap(t, "r a b").Rewrite(FileRequest{Name: long}); !errors.Is(err, ErrInvalidName) {
		t.Errorf("a long name: %v", err)
	}
	// A name of a full request packet with 200 backslashes: within the
	// bounds; 2000 in a long name are not.
	win := mustRemap(t, `rg \\ /`)
	got, err := win.Rewrite(FileRequest{Name: strings.Repeat(`a\`, 200)})
	if err != nil || got != strings.Repeat("a/", 200) {
		t.Errorf("200 backslashes: %v", err)
	}
	start := time.Now()
	if _, err := win.Rewrite(FileRequest{Name: strings.Repeat(`a\`, 2000)}); !errors.Is(err, ErrRemapLoop) {
		t.Errorf("2000 backslashes: %v", err)
	}
	// A zero-width match that a g rule repeats for ever: the name grows
	// to the bound.
	if _, err := mustRemap(t, `rg \b /`).Rewrite(FileRequest{Name: "boot"}); !errors.Is(err, ErrRemapLoop) {
		t.Errorf("zero-width g: %v", err)
	}
	t.Logf("two worst cases took %v", time.Since(start))
}

func TestRemapParseErrors(t *testing.T) {
	for rules, want := range map[string]string{
		"x a b":                      "line 1: unknown flag 'x'",
		"r":                          "line 1: no regex",
		"\n\nr a( b":                 "line 3: bad regex",
		"r a b c":                    `line 1: unexpected "c"`,
		"r~ a b":                     "cannot be inverted",
		"g a b":                      "g repeats a rewrite: it needs r",
		"rg a* b":                    "matches the empty name",
		"rs ^ b":                     "matches the empty name",
		"s a":                        "s without r",
		"rg a xa":                    "matches its own replacement",
		"rg (x*)y \\1yy":             "matches its own replacement",
		"r (a) \\2":                  `names group \2; the regex has 1`,
		"r a b\\":                    "lone backslash",
		"rGP a b":                    "G and P",
		"r46 a b":                    "IPv4 and IPv6",
		"r (((a{100}){100}){100}) b": "bad regex",
	} {
		_, err := ParseRemap(strings.NewReader(rules))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", rules, err, want)
		}
	}
	huge := strings.Repeat("r a b\n", maxRemapFile/6+1)
	if _, err := ParseRemap(strings.NewReader(huge)); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("huge file: %v", err)
	}
	if _, err := ParseRemap(strings.NewReader(strings.Repeat("r a b\n", maxRemapRules+1))); err == nil || !strings.Contains(err.Error(), "rules") {
		t.Errorf("too many rules: %v", err)
	}
	if _, err := ParseRemap(strings.NewReader("r a " + strings.Repeat("b", maxRemapLine))); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Errorf("long line: %v", err)
	}
	path := filepath.Join(t.TempDir(), "map")
	os.WriteFile(path, []byte("r a b\nbad a\n"), 0o644)
	if _, err := LoadRemap(path); err == nil || !strings.Contains(err.Error(), path+": tftp: remap: line 2") {
		t.Errorf("LoadRemap: %v", err)
	}
	if _, err := LoadRemap(path + ".missing"); err == nil {
		t.Error("LoadRemap of a missing file")
	}
}

// Seed corpora are in testdata/fuzz/FuzzRemap.

// FuzzRemap parses a rule file and rewrites a name with it: no panic, and
// the work and the result stay within the bounds.
func FuzzRemap(f *testing.F) {
	f.Fuzz(func(t *testing.T, rules, name string, put, v6 bool) {
		m, err := ParseRemap(strings.NewReader(rules))
		if err != nil {
			if m != nil {
				t.Fatal("a Remap with an error")
			}
			return
		}
		req := FileRequest{Op: OpRRQ, Name: name, Client: v4client}
		if put {
			req.Op = OpWRQ
		}
		if v6 {
			req.Client = v6client
		}
		got, err := m.Rewrite(req)
		if err != nil {
			if ErrorCodeOf(err) != ErrUndefined && ErrorCodeOf(err) != ErrAccessViolation {
				t.Fatalf("error %v has code %d", err, ErrorCodeOf(err))
			}
			return
		}
		if len(got) > maxNameLen {
			t.Fatalf("a name of %d bytes", len(got))
		}
		if m.Len() == 0 && got != name {
			t.Fatalf("no rules changed %q to %q", name, got)
		}
	})
}
