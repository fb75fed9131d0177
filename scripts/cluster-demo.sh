#!/usr/bin/env bash
# Three tftpd cluster nodes on loopback; a 100 MiB download with tftp-hpa;
# the leader killed with SIGKILL halfway; the file arrives byte-identical.
#
#   bash scripts/cluster-demo.sh            # a free TFTP port, picked here
#   TFTP_PORT=16969 bash scripts/cluster-demo.sh
#
# Raft and cluster-HTTP ports are picked by the kernel (port 0) and read
# from each node's output. Every wait is bounded: the demo fails with a
# message when a node does not start or does not bind the TFTP port, or
# when the client dies. The nodes authenticate each other with
# certificates made by tftpd cert (mutual TLS on the raft and cluster-HTTP
# ports). Needs tftp-hpa and iproute2 (ss). Stops only what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do { kill -9 "$p" && wait "$p"; } 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
die() {
  echo "cluster-demo: $*" >&2
  for f in "$work"/n*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -5 "$f" >&2; }; done
  exit 1
}
for cmd in tftp ss sha256sum; do
  command -v "$cmd" >/dev/null || die "$cmd is not installed (apt-get install tftp-hpa iproute2 coreutils)"
done

# wait_for SECONDS WHAT COMMAND...: run COMMAND every 50 ms until it
# succeeds, or fail after SECONDS.
wait_for() {
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${secs}s waiting for $what"
    sleep 0.05
  done
}

udp_port_free() { ! ss -Hlnu "sport = :$1" | grep -q .; }
port=${TFTP_PORT:-}
if [ -z "$port" ]; then
  for _ in $(seq 100); do
    p=$((20000 + RANDOM % 40000))
    if udp_port_free "$p"; then port=$p; break; fi
  done
  [ -n "$port" ] || die "found no free UDP port"
fi
udp_port_free "$port" || die "UDP port 127.0.0.1:$port is taken by another program (set TFTP_PORT)"

echo "building tftpd (the first build with an empty Go cache takes about two minutes)"
go build -o "$work/tftpd" ./cmd/tftpd
head -c 100M /dev/urandom > "$work/big.bin"
want=$(sha256sum < "$work/big.bin")
for i in 1 2 3; do
  mkdir -p "$work/root$i"; cp "$work/big.bin" "$work/root$i/"
done
# The cluster's certificates: a CA, and one per node with its id bound in.
"$work/tftpd" cert ca -dir "$work/ca" > /dev/null
for i in 1 2 3; do
  "$work/tftpd" cert node -ca "$work/ca" -node-id "n$i" -host 127.0.0.1 -dir "$work/certs$i" > /dev/null
done

http=()
start() { # start N [JOIN]
  local i=$1
  "$work/tftpd" -cluster -cluster-tls "$work/certs$i" -node-id "n$i" -data "$work/data$i" -raft 127.0.0.1:0 \
    -cluster-http 127.0.0.1:0 -root "$work/root$i" -listen "127.0.0.1:$port" \
    ${2:+-join "$2"} > "$work/n$i.out" 2> "$work/n$i.log" &
  pids[$i]=$!
  started() {
    kill -0 "${pids[$i]}" 2>/dev/null || die "node n$i exited"
    grep -q 'status http://' "$work/n$i.out"
  }
  wait_for 20 "node n$i to start" started
  http[$i]=$(sed -n 's|.*status http://\([^/]*\)/status.*|\1|p' "$work/n$i.out")
}
start 1
start 2 "${http[1]}"
start 3 "${http[1]}"
status() { "$work/tftpd" -status "${http[$1]}" -cluster-tls "$work/certs1" 2>/dev/null; }
three_voters() { [ "$(status 2 | sed -n '/"voters"/,/]/p' | grep -c '"n[123]"')" -eq 3 ]; }
wait_for 20 "three voters" three_voters
leader=
serving() {
  leader=$(status 2 | sed -n 's/.*"leader": "n\([0-9]\)".*/\1/p')
  # -status exits 1 while the leader is unhealthy (cannot bind the port).
  [ -n "$leader" ] && status "$leader" >/dev/null
}
wait_for 20 "a leader that binds 127.0.0.1:$port" serving
echo "leader: n$leader, TFTP on 127.0.0.1:$port"

tftp -l -m octet 127.0.0.1 "$port" -c get big.bin "$work/got.bin" &
client=$!
halfway() {
  kill -0 "$client" 2>/dev/null || die "the tftp client exited before halfway"
  [ -f "$work/got.bin" ] && [ "$(stat -c %s "$work/got.bin")" -ge $((50 << 20)) ]
}
wait_for 120 "the download to reach 50 MiB" halfway
{ kill -9 "${pids[$leader]}" && wait "${pids[$leader]}"; } 2>/dev/null || true
echo "killed n$leader (SIGKILL) at $(stat -c %s "$work/got.bin") bytes"
done_or_dead() { ! kill -0 "$client" 2>/dev/null; }
wait_for 120 "the download to finish" done_or_dead
wait "$client" || die "the tftp client failed (exit $?)"
got=$(sha256sum < "$work/got.bin")
[ "$got" = "$want" ] || die "MISMATCH: the download differs from the file"
echo "download complete and byte-identical: ${got%% *}"
grep -h -e "resuming transfer" -e "found its client" "$work"/n*.log | head -2
