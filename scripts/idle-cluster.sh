#!/usr/bin/env bash
# Three tftpd cluster nodes on loopback, no transfer: CPU per node (utime +
# stime from /proc, % of one core) over WINDOW seconds (default 60), and,
# with STRACE=1, the leader's system calls over 10 s (strace -c -f).
# Stops only what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
window=${WINDOW:-60}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

go build -o "$work/tftpd" ./cmd/tftpd
start() { # start N [JOIN]
  local i=$1
  mkdir -p "$work/root$i"
  "$work/tftpd" -cluster -cluster-insecure -node-id "n$i" -data "$work/data$i" -raft "127.0.0.1:2700$i" \
    -cluster-http "127.0.0.1:2800$i" -root "$work/root$i" -listen 127.0.0.1:26969 \
    ${2:+-join "$2"} > "$work/n$i.log" 2>&1 &
  pids[$i]=$!
}
start 1; sleep 1.5
start 2 127.0.0.1:28001; start 3 127.0.0.1:28001; sleep 3
leader=$("$work/tftpd" -status 127.0.0.1:28002 | sed -n 's/.*"leader": "n\([0-9]\)".*/\1/p')
echo "leader: n$leader"
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
declare -A before
for i in 1 2 3; do before[$i]=$(ticks "${pids[$i]}"); done
if [ "${STRACE:-0}" = 1 ]; then
  timeout -s INT 10 strace -c -f -p "${pids[$leader]}" -o "$work/strace.txt" || true
  sed -n '1,25p' "$work/strace.txt"
fi
sleep "$window"
for i in 1 2 3; do
  t=$(( $(ticks "${pids[$i]}") - before[$i] ))
  role=follower; [ "$i" = "$leader" ] && role=leader
  awk -v t="$t" -v hz="$hz" -v w="$window" -v n="n$i" -v r="$role" \
    'BEGIN { printf "%s (%s): %.2f %% of a core over %d s\n", n, r, 100 * t / hz / w, w }'
done
