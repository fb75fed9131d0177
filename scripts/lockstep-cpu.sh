#!/usr/bin/env bash
# Server CPU per 64 MiB lock-step download (tftp-hpa, 512-byte blocks) of
# two tftpd builds, alternating, N rounds of 3 downloads each:
#   scripts/lockstep-cpu.sh OLD_REV [NEW_REV] [ROUNDS]
# NEW_REV defaults to the working tree, ROUNDS to 3. Prints the CPU seconds
# (utime+stime from /proc) of every download and the medians. Needs
# tftp-hpa. Stops only what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
old=$1 new=${2:-} rounds=${3:-3}
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; git worktree remove --force "$work/src" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

git worktree add -q "$work/src" "$old"
(cd "$work/src" && go build -o "$work/old" ./cmd/tftpd)
git worktree remove --force "$work/src"
if [ -n "$new" ]; then
  git worktree add -q "$work/src" "$new"
  (cd "$work/src" && go build -o "$work/new" ./cmd/tftpd)
  git worktree remove --force "$work/src"
else
  go build -o "$work/new" ./cmd/tftpd
fi
mkdir -p "$work/root"
head -c 64M /dev/urandom > "$work/root/big"
tck=$(getconf CLK_TCK)
port=$((20000 + RANDOM % 20000))

measure() { # measure BIN NAME: 3 downloads, one line each
  "$1" -root "$work/root" -listen "127.0.0.1:$port" -log-level warn &
  pid=$!
  sleep 0.5
  for _ in 1 2 3; do
    a=$(awk '{print $14+$15}' "/proc/$pid/stat")
    tftp -l -m octet 127.0.0.1 "$port" -c get big "$work/got"
    b=$(awk '{print $14+$15}' "/proc/$pid/stat")
    echo "$2 $(echo "scale=2; ($b-$a)/$tck" | bc)"
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
}

for _ in $(seq "$rounds"); do
  measure "$work/old" old
  measure "$work/new" new
done | tee "$work/cpu"
for v in old new; do
  awk -v v=$v '$1==v {print $2}' "$work/cpu" | sort -n |
    awk -v v=$v '{x[NR]=$1} END {print v, "median CPU s per download:", x[int((NR+1)/2)], "of", NR}'
done
