#!/bin/bash
# User instructions per echoed message of one contender, deterministic:
# the server (cmd/bench serve) under valgrind --tool=callgrind, driven by
# scripts/echo-lockstep twice (R1 and R2 rounds); the difference over the extra
# messages cancels start-up and shutdown.
#
#   scripts/echo-callgrind.sh [impl] [conns] [pipe] [R1] [R2]
#   scripts/echo-callgrind.sh ioactor-ack 64 16 20 420
set -euo pipefail
impl=${1:-ioactor-ack} conns=${2:-64} pipe=${3:-16} r1=${4:-20} r2=${5:-420}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
go build -o "$dir/bench" ./cmd/bench
go build -o "$dir/echo-lockstep" ./scripts/echo-lockstep
total() { # rounds -> program total instructions
	local out=$dir/cg.$1
	coproc SRV { GODEBUG=asyncpreemptoff=1 exec valgrind --tool=callgrind --callgrind-out-file="$out" -q "$dir/bench" serve -impl "$impl" -listen 127.0.0.1:0 2>/dev/null; }
	local line addr
	read -r line <&"${SRV[0]}"
	addr=${line#listening }
	"$dir/echo-lockstep" -addr "$addr" -conns "$conns" -pipe "$pipe" -rounds "$1"
	eval "exec ${SRV[1]}>&-"
	wait "$SRV_PID" || true
	callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'
}
a=$(total "$r1")
b=$(total "$r2")
awk -v a="$a" -v b="$b" -v m=$((conns * pipe * (r2 - r1))) -v i="$impl" -v c="$conns" -v p="$pipe" \
	'BEGIN { printf "%s, %d conns x %d per write: %.1f user instructions per message\n", i, c, p, (b - a) / m }'
