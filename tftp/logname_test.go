package tftp

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
)

// A hostile file name reaches a log line once quoted, on one line, and cut
// to maxLoggedName bytes, with the text and the JSON handler alike.
func TestLogNameIsQuotedOnceAndBounded(t *testing.T) {
	var text bytes.Buffer
	slog.New(slog.NewTextHandler(&text, nil)).Info("x", "file", logName("a b\n\"c\x00"))
	line := strings.TrimSuffix(text.String(), "\n")
	if strings.Contains(line, "\n") || !strings.Contains(line, `file="a b\n\"c\x00"`) {
		t.Fatalf("text line %q: want the name quoted once, escaped, on one line", line)
	}
	text.Reset()
	slog.New(slog.NewTextHandler(&text, nil)).Info("x", "file", logName("plain.bin"))
	if !strings.Contains(text.String(), "file=plain.bin ") && !strings.HasSuffix(strings.TrimSpace(text.String()), "file=plain.bin") {
		t.Fatalf("text line %q: a plain name must not be quoted", text.String())
	}

	long := strings.Repeat("é", 40000) // 80,000 bytes
	var js bytes.Buffer
	slog.New(slog.NewJSONHandler(&js, nil)).Info("x", "file", logName(long))
	var rec map[string]any
	if err := json.Unmarshal(js.Bytes(), &rec); err != nil {
		t.Fatalf("JSON line: %v", err)
	}
	got, _ := rec["file"].(string)
	if len(got) > maxLoggedName+32 || !strings.HasSuffix(got, "…(80000 bytes)") || !strings.HasPrefix(got, "éé") {
		t.Fatalf("logged name %d bytes %q: want at most %d bytes of it and its length", len(got), got[:min(len(got), 100)], maxLoggedName)
	}
}
