package raftnode

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"testing"

	"github.com/hashicorp/go-hclog"
)

func TestRaftLoggerMapsLevelsAndArgs(t *testing.T) {
	var buf bytes.Buffer
	l := NewRaftLogger(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), hclog.Info)
	l.Named("snapshot").With("id", "n2").Warn("heartbeat timeout reached", "last-leader-addr", "127.0.0.1:7001")
	l.Debug("dropped below the minimum")
	l.Error("failed to contact", "server-id", "n3")
	l.StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Warn}).Print("from the std logger")
	var recs []map[string]any
	for _, line := range bytes.Split(bytes.TrimSpace(buf.Bytes()), []byte("\n")) {
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		recs = append(recs, m)
	}
	if len(recs) != 3 {
		t.Fatalf("%d records: %s", len(recs), buf.String())
	}
	want := []struct{ level, msg, key, val string }{
		{"WARN", "heartbeat timeout reached", "last-leader-addr", "127.0.0.1:7001"},
		{"ERROR", "failed to contact", "server-id", "n3"},
		{"WARN", "from the std logger", "logger", "raft"},
	}
	for i, w := range want {
		r := recs[i]
		if r["level"] != w.level || r["msg"] != w.msg || r[w.key] != w.val {
			t.Errorf("record %d: %v, want %+v", i, r, w)
		}
	}
	if recs[0]["logger"] != "raft.snapshot" || recs[0]["id"] != "n2" {
		t.Errorf("name and implied args lost: %v", recs[0])
	}
}
