package tftp

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
)

// Remap rewrites file names with regular-expression rules, in the format
// of tftpd-hpa's remap file (in.tftpd --map-file). Use its Rewrite method
// as [ServerConfig].Rewrite; a Remap may be used from several goroutines
// at once.
//
// Each line holds a rule: flags, a regular expression and, for some
// flags, a replacement, separated by white space; "#" starts a comment.
// Rules run from the top, each on the name the rules above left:
//
//	r  replace the first match of the regex by the replacement
//	g  with r: repeat the rule until the regex no longer matches
//	i  match case-insensitively
//	e  when the rule matches, stop: the name is final
//	s  when the rule matches, start over from the first rule
//	a  when the rule matches, refuse the request (ERROR 2); the
//	   replacement, if any, is the message the client sees
//	G  the rule applies to downloads (RRQ) only; P to uploads (WRQ) only
//	4  the rule applies to IPv4 clients only; 6 to IPv6 clients only
//	~  the rule matches when the regex does not (not with r)
//
// In the replacement, \0 is the whole match, \1 to \9 the parenthesized
// groups, \i the client's IP address, \x the address in upper-case hex
// (C00002A9), \U and \L turn the letters that follow to upper or lower
// case and \E ends that; a backslash before any other character (\\, \#,
// a space) stands for that character. In the regex and the replacement,
// a backslash before white space or "#" makes it part of the field.
//
//	rg \\ /                      # Windows clients: boot\pxelinux.0 is boot/pxelinux.0
//	ri ^/?PXELINUX\.0$ pxelinux.0 # any case
//	rG ^([^/]+\.cfg)$ cfg/\i/\1  # a configuration per client address
//	a \.\. no\ dots\ here        # refuse any name with "..", with a message
//
// Differences from tftpd-hpa: the regex is Go's RE2 syntax ([regexp]),
// matched leftmost-longest as POSIX does, not egrep's: (a|b), [[:alpha:]],
// \. and \S work, back-references in the regex do not; a replacement that
// names a group the regex does not have, an unknown flag, a rule that
// cannot end (g or s on a regex that matches the empty string, g whose
// replacement matches its own regex, s without r) and lines or files over
// the limits are errors when the file is parsed; rule processing stops
// after 1024 rule applications and rewrites, 256 KiB of name scanned, or
// a name longer than 4096 bytes, and the request is refused with ERROR 0
// ([ErrRemapLoop]), where tftpd-hpa can loop forever on a g rule.
//
// Rewriting only maps names: the server's [Files] still confine the
// result (a rule that maps a name outside the root of an [FS] is refused
// with ERROR 2, as the name itself would be).
type Remap struct {
	rules []remapRule
}

// Limits of a remap file, and of the work one request's rewriting does.
const (
	maxRemapFile  = 64 << 10 // bytes
	maxRemapLine  = 4096     // bytes
	maxRemapRules = 1000
	maxRemapSteps = 1024 // rule applications and rewrites per request
	// maxRemapWork bounds the bytes of name the regexes scan for one
	// request: a few milliseconds of the event loop at worst.
	maxRemapWork = 256 << 10
	// maxRemapMessage bounds the message of an a rule, which may quote
	// the client's name.
	maxRemapMessage = 200
)

// ErrRemapLoop reports a request whose name rewriting did not end within
// the bounds (see [Remap]).
var ErrRemapLoop = errors.New("tftp: remap: the rules did not end")

type remapRule struct {
	line                            int
	re                              *regexp.Regexp
	repl                            []replPart
	replace, again, end, restart    bool
	abort, get, put, v4, v6, invert bool
}

// replPart is a piece of a replacement: literal text, a group (\0 to \9),
// the client's address (\i, \x) or a case change (\U, \L, \E).
type replPart struct {
	kind  byte // 0 literal, 'g' group, 'i', 'x', 'U', 'L', 'E'
	text  string
	group int
}

// LoadRemap parses the remap file at path.
func LoadRemap(path string) (*Remap, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("tftp: remap: %w", err)
	}
	defer f.Close()
	m, err := ParseRemap(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// ParseRemap parses remap rules (see [Remap]). Errors name the line.
func ParseRemap(r io.Reader) (*Remap, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxRemapFile+1))
	if err != nil {
		return nil, fmt.Errorf("tftp: remap: %w", err)
	}
	if len(b) > maxRemapFile {
		return nil, fmt.Errorf("tftp: remap: the file is larger than %d bytes", maxRemapFile)
	}
	m := &Remap{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 1024), maxRemapLine)
	line := 0
	for sc.Scan() {
		line++
		fields, err := remapFields(sc.Text())
		if err != nil {
			return nil, fmt.Errorf("tftp: remap: line %d: %w", line, err)
		}
		if len(fields) == 0 {
			continue
		}
		if len(m.rules) == maxRemapRules {
			return nil, fmt.Errorf("tftp: remap: line %d: more than %d rules", line, maxRemapRules)
		}
		rule, err := parseRemapRule(fields)
		if err != nil {
			return nil, fmt.Errorf("tftp: remap: line %d: %w", line, err)
		}
		rule.line = line
		m.rules = append(m.rules, rule)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("tftp: remap: line %d: longer than %d bytes", line+1, maxRemapLine)
		}
		return nil, fmt.Errorf("tftp: remap: %w", err)
	}
	return m, nil
}

// remapFields splits a line into fields at unescaped white space, up to an
// unescaped "#". Escapes stay in the fields.
func remapFields(s string) ([]string, error) {
	var fields []string
	var cur strings.Builder
	in, bs := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !bs && (isSpace(c) || c == '#') {
			if in {
				fields = append(fields, cur.String())
				cur.Reset()
				in = false
			}
			if c == '#' {
				break
			}
			continue
		}
		bs = !bs && c == '\\'
		cur.WriteByte(c)
		in = true
	}
	if in {
		fields = append(fields, cur.String())
	}
	if len(fields) > 3 {
		return nil, fmt.Errorf("unexpected %q after the replacement (escape white space with \\)", fields[3])
	}
	return fields, nil
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f' }

func parseRemapRule(fields []string) (remapRule, error) {
	var r remapRule
	icase := false
	for _, c := range []byte(fields[0]) {
		switch c {
		case 'r':
			r.replace = true
		case 'g':
			r.again = true
		case 'i':
			icase = true
		case 'e':
			r.end = true
		case 's':
			r.restart = true
		case 'a':
			r.abort = true
		case 'G':
			r.get = true
		case 'P':
			r.put = true
		case '4':
			r.v4 = true
		case '6':
			r.v6 = true
		case '~':
			r.invert = true
		default:
			return r, fmt.Errorf("unknown flag %q in %q (flags: r g i e s a G P 4 6 ~)", c, fields[0])
		}
	}
	switch {
	case len(fields) < 2:
		return r, fmt.Errorf("no regex after the flags %q", fields[0])
	case r.invert && r.replace:
		return r, errors.New("an r rule cannot be inverted (~)")
	case r.again && !r.replace:
		return r, errors.New("g repeats a rewrite: it needs r")
	case r.get && r.put:
		return r, errors.New("a rule for G and P requests alike takes neither flag")
	case r.v4 && r.v6:
		return r, errors.New("a rule for IPv4 and IPv6 alike takes neither flag")
	}
	expr := unescapeRegex(fields[1])
	if icase {
		expr = "(?i)" + expr
	}
	re, err := regexp.Compile(expr)
	if err != nil {
		return r, fmt.Errorf("bad regex %q: %w", fields[1], err)
	}
	re.Longest()
	r.re = re
	if len(fields) == 3 {
		if r.repl, err = parseReplacement(fields[2], re.NumSubexp()); err != nil {
			return r, err
		}
	}
	if (r.again || r.restart) && !r.invert && re.MatchString("") {
		return r, fmt.Errorf("the regex %q matches the empty name: with g or s the rule would not end", fields[1])
	}
	switch {
	case r.restart && !r.replace && !r.end && !r.abort:
		return r, errors.New("s without r starts over on the same name: the rule would not end")
	case r.again && re.MatchString(r.expand("", nil, "", "")):
		return r, fmt.Errorf("g repeats while the regex matches, and %q matches its own replacement: the rule would not end", fields[1])
	}
	return r, nil
}

// unescapeRegex turns the field escapes that RE2 does not take (a
// backslash before white space) into hex escapes.
func unescapeRegex(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			if isSpace(s[i+1]) {
				fmt.Fprintf(&b, `\x%02x`, s[i+1])
			} else {
				b.WriteByte('\\')
				b.WriteByte(s[i+1])
			}
			i++
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func parseReplacement(s string, groups int) ([]replPart, error) {
	var parts []replPart
	var lit strings.Builder
	flush := func() {
		if lit.Len() > 0 {
			parts = append(parts, replPart{text: lit.String()})
			lit.Reset()
		}
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' {
			lit.WriteByte(c)
			continue
		}
		if i+1 == len(s) {
			return nil, fmt.Errorf("the replacement %q ends with a lone backslash", s)
		}
		i++
		c = s[i]
		switch {
		case c >= '0' && c <= '9':
			g := int(c - '0')
			if g > groups {
				return nil, fmt.Errorf("the replacement %q names group \\%d; the regex has %d", s, g, groups)
			}
			flush()
			parts = append(parts, replPart{kind: 'g', group: g})
		case c == 'i', c == 'x', c == 'U', c == 'L', c == 'E':
			flush()
			parts = append(parts, replPart{kind: c})
		default:
			lit.WriteByte(c)
		}
	}
	flush()
	return parts, nil
}

// expand returns name with the match at loc replaced by the rule's
// replacement; with loc nil, the replacement alone, groups empty. ip and
// hex are the client's address for \i and \x.
func (r *remapRule) expand(name string, loc []int, ip, hex string) string {
	var b strings.Builder
	if loc != nil {
		b.WriteString(name[:loc[0]])
	}
	var conv byte
	write := func(s string) {
		switch conv {
		case 'U':
			s = strings.ToUpper(s)
		case 'L':
			s = strings.ToLower(s)
		}
		b.WriteString(s)
	}
	for _, p := range r.repl {
		switch p.kind {
		case 0:
			write(p.text)
		case 'g':
			if loc != nil && loc[2*p.group] >= 0 {
				write(name[loc[2*p.group]:loc[2*p.group+1]])
			}
		case 'i':
			write(ip)
		case 'x':
			write(hex)
		case 'U', 'L':
			conv = p.kind
		case 'E':
			conv = 0
		}
	}
	if loc != nil {
		b.WriteString(name[loc[1]:])
	}
	return b.String()
}

// Rewrite applies the rules to req.Name and returns the new name, or an
// error that refuses the request: an [*Error] with code 2 for an a rule,
// [ErrRemapLoop] when the rules do not end within their bounds.
func (m *Remap) Rewrite(req FileRequest) (string, error) {
	name := req.Name
	if len(name) > maxNameLen {
		return "", fmt.Errorf("%w: a name of %d bytes (at most %d)", ErrInvalidName, len(name), maxNameLen)
	}
	addr := req.Client.Addr().Unmap().WithZone("")
	ip, hex := "", ""
	if addr.IsValid() {
		ip = addr.String()
		hex = strings.ToUpper(fmt.Sprintf("%x", addr.AsSlice()))
	}
	steps, work, last := 0, 0, 0 // last: the line of the last rule that matched
	budget := func() error {
		steps++
		work += len(name)
		switch {
		case steps > maxRemapSteps:
			return fmt.Errorf("%w: more than %d steps (last match: line %d)", ErrRemapLoop, maxRemapSteps, last)
		case work > maxRemapWork:
			return fmt.Errorf("%w: more than %d bytes scanned (last match: line %d)", ErrRemapLoop, maxRemapWork, last)
		}
		return nil
	}
	for i := 0; i < len(m.rules); i++ {
		r := &m.rules[i]
		if r.get && req.Op != OpRRQ || r.put && req.Op != OpWRQ || r.v4 && !addr.Is4() || r.v6 && !addr.Is6() {
			continue
		}
		if err := budget(); err != nil {
			return "", err
		}
		var loc []int
		if r.invert {
			if r.re.MatchString(name) {
				continue
			}
		} else if loc = r.re.FindStringSubmatchIndex(name); loc == nil {
			continue
		}
		last = r.line
		if r.abort {
			msg := "access violation: refused by the remap rules"
			if r.repl != nil {
				msg = r.expand("", nil, ip, hex)
				if loc != nil {
					msg = r.expand(name[loc[0]:loc[1]], shiftLoc(loc), ip, hex)
				}
				msg = msg[:min(len(msg), maxRemapMessage)]
			}
			return "", fmt.Errorf("tftp: remap: line %d: %w", r.line, &Error{Code: ErrAccessViolation, Message: msg})
		}
		for r.replace && loc != nil {
			name = r.expand(name, loc, ip, hex)
			if len(name) > maxNameLen {
				return "", fmt.Errorf("%w: the name grew past %d bytes (line %d)", ErrRemapLoop, maxNameLen, r.line)
			}
			if !r.again {
				break
			}
			if err := budget(); err != nil {
				return "", err
			}
			loc = r.re.FindStringSubmatchIndex(name)
		}
		if r.end {
			break
		}
		if r.restart {
			i = -1
		}
	}
	return name, nil
}

// shiftLoc rebases a match's group offsets on the match itself.
func shiftLoc(loc []int) []int {
	out := make([]int, len(loc))
	for i, v := range loc {
		out[i] = v
		if v >= 0 {
			out[i] = v - loc[0]
		}
	}
	return out
}

// Len returns the number of rules.
func (m *Remap) Len() int { return len(m.rules) }
