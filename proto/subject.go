package proto

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Subject prefixes. Service and version tokens follow them (see InSubject).
const (
	PrefixIn      = "herd.in."
	PrefixRollup  = "herd.rollup."
	PrefixVerdict = "herd.verdict."
	PrefixDeploy  = "herd.deploy."
)

// Wildcard subjects for subscribers.
const (
	SubjectInAll      = "herd.in.>"
	SubjectRollupAll  = "herd.rollup.>"
	SubjectVerdictAll = "herd.verdict.>"
	SubjectDeployAll  = "herd.deploy.>"
)

// Token limits.
const (
	// MaxServiceLen bounds a service name.
	MaxServiceLen = 64
	// MaxVersionLen bounds a raw version string (before escaping).
	MaxVersionLen = 64
)

// ErrBadToken is wrapped by every service or version validation error.
var ErrBadToken = errors.New("bad token")

// ValidService checks a service name: 1–64 characters of lower-case a-z, 0-9, '_' and '-',
// starting with a letter or digit. Service names are used in subjects as they are.
func ValidService(s string) error {
	if len(s) == 0 || len(s) > MaxServiceLen {
		return fmt.Errorf("%w: service %q must have 1 to %d characters", ErrBadToken, clip(s), MaxServiceLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || (i > 0 && (c == '_' || c == '-'))) {
			return fmt.Errorf("%w: service %q may hold only lower-case a-z, 0-9, '_' and '-' (not first)", ErrBadToken, clip(s))
		}
	}
	return nil
}

// ValidVersion checks a raw version string such as "1.4.2" or "2026-11-26.3": 1–64 bytes of
// printable ASCII without spaces. Versions are escaped in subjects (see EscapeVersion).
func ValidVersion(v string) error {
	if len(v) == 0 || len(v) > MaxVersionLen {
		return fmt.Errorf("%w: version %q must have 1 to %d bytes", ErrBadToken, clip(v), MaxVersionLen)
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c <= ' ' || c > '~' {
			return fmt.Errorf("%w: version %q may hold only printable ASCII without spaces", ErrBadToken, clip(v))
		}
	}
	return nil
}

func clip(s string) string {
	if len(s) > 80 {
		s = s[:80] + "…"
	}
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "?")
	}
	return s
}

// EscapeVersion turns a valid raw version into a subject token, reversibly: a-z, 0-9 and '-'
// stay as they are; every other byte b becomes '_' followed by two lower-case hex digits.
// "1.4.2" → "1_2e4_2e2", "2026-11-26.3" → "2026-11-26_2e3", "V2_rc" → "_562_5frc".
// It returns an error for an invalid version (see ValidVersion).
func EscapeVersion(v string) (string, error) {
	if err := ValidVersion(v); err != nil {
		return "", err
	}
	n := 0
	for i := 0; i < len(v); i++ {
		if !plainTokenByte(v[i]) {
			n++
		}
	}
	if n == 0 {
		return v, nil
	}
	const hex = "0123456789abcdef"
	b := make([]byte, 0, len(v)+2*n)
	for i := 0; i < len(v); i++ {
		c := v[i]
		if plainTokenByte(c) {
			b = append(b, c)
		} else {
			b = append(b, '_', hex[c>>4], hex[c&15])
		}
	}
	return string(b), nil
}

func plainTokenByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-'
}

// UnescapeVersion reverses EscapeVersion. It returns an error for a token that EscapeVersion
// cannot have produced.
func UnescapeVersion(tok string) (string, error) {
	if strings.IndexByte(tok, '_') < 0 {
		for i := 0; i < len(tok); i++ {
			if !plainTokenByte(tok[i]) {
				return "", fmt.Errorf("%w: version token %q holds %q", ErrBadToken, clip(tok), tok[i])
			}
		}
		if err := ValidVersion(tok); err != nil {
			return "", err
		}
		return tok, nil
	}
	b := make([]byte, 0, len(tok))
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		switch {
		case plainTokenByte(c):
			b = append(b, c)
		case c == '_' && i+2 < len(tok) && lowerHex(tok[i+1]) >= 0 && lowerHex(tok[i+2]) >= 0:
			d := byte(lowerHex(tok[i+1])<<4 | lowerHex(tok[i+2]))
			if plainTokenByte(d) {
				return "", fmt.Errorf("%w: version token %q escapes a plain byte", ErrBadToken, clip(tok))
			}
			b = append(b, d)
			i += 2
		default:
			return "", fmt.Errorf("%w: version token %q has a bad escape at byte %d", ErrBadToken, clip(tok), i)
		}
	}
	v := string(b)
	if err := ValidVersion(v); err != nil {
		return "", err
	}
	return v, nil
}

func lowerHex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	}
	return -1
}

func groupSubject(prefix, service, version string) (string, error) {
	if err := ValidService(service); err != nil {
		return "", err
	}
	tok, err := EscapeVersion(version)
	if err != nil {
		return "", err
	}
	return prefix + service + "." + tok, nil
}

// InSubject returns herd.in.<service>.<escaped version>, where agents publish batches.
func InSubject(service, version string) (string, error) {
	return groupSubject(PrefixIn, service, version)
}

// RollupSubject returns herd.rollup.<service>.<escaped version>, where closed windows go.
func RollupSubject(service, version string) (string, error) {
	return groupSubject(PrefixRollup, service, version)
}

// VerdictSubject returns herd.verdict.<service>.
func VerdictSubject(service string) (string, error) {
	if err := ValidService(service); err != nil {
		return "", err
	}
	return PrefixVerdict + service, nil
}

// DeploySubject returns herd.deploy.<service>.
func DeploySubject(service string) (string, error) {
	if err := ValidService(service); err != nil {
		return "", err
	}
	return PrefixDeploy + service, nil
}

// ParseGroupSubject splits <prefix><service>.<escaped version> into the service and the raw
// version. The subject may have further tokens after the version (e.g. a partition prefix is
// removed by the caller); they are ignored.
func ParseGroupSubject(prefix, subject string) (service, version string, err error) {
	rest, ok := strings.CutPrefix(subject, prefix)
	if !ok {
		return "", "", fmt.Errorf("%w: subject %q does not start with %q", ErrBadToken, clip(subject), prefix)
	}
	service, tok, ok := strings.Cut(rest, ".")
	if !ok {
		return "", "", fmt.Errorf("%w: subject %q has no version token", ErrBadToken, clip(subject))
	}
	if i := strings.IndexByte(tok, '.'); i >= 0 {
		tok = tok[:i]
	}
	if err := ValidService(service); err != nil {
		return "", "", err
	}
	version, err = UnescapeVersion(tok)
	if err != nil {
		return "", "", err
	}
	return service, version, nil
}
