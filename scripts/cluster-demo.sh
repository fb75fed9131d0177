#!/usr/bin/env bash
# Three tftpd cluster nodes on loopback; a 100 MiB download with tftp-hpa;
# the leader killed with SIGKILL halfway; the file arrives byte-identical.
# The nodes authenticate each other with certificates made by tftpd cert.
# Needs tftp-hpa (apt-get install tftp-hpa). Stops only what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

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
start() { # start N [JOIN]
  local i=$1
  "$work/tftpd" -cluster -cluster-tls "$work/certs$i" -node-id "n$i" -data "$work/data$i" -raft "127.0.0.1:1700$i" \
    -cluster-http "127.0.0.1:1800$i" -root "$work/root$i" -listen 127.0.0.1:16969 \
    ${2:+-join "$2"} > "$work/n$i.log" 2>&1 &
  pids[$i]=$!
}
start 1; sleep 1.5
start 2 127.0.0.1:18001; start 3 127.0.0.1:18001; sleep 2
leader=$("$work/tftpd" -status 127.0.0.1:18002 -cluster-tls "$work/certs1" | sed -n 's/.*"leader": "n\([0-9]\)".*/\1/p')
echo "leader: n$leader"

tftp -l -m octet 127.0.0.1 16969 -c get big.bin "$work/got.bin" &
client=$!
until [ -f "$work/got.bin" ] && [ "$(stat -c %s "$work/got.bin")" -ge $((50 << 20)) ]; do sleep 0.01; done
kill -9 "${pids[$leader]}"
echo "killed n$leader (SIGKILL) at $(stat -c %s "$work/got.bin") bytes"
wait "$client"
got=$(sha256sum < "$work/got.bin")
[ "$got" = "$want" ] && echo "download complete and byte-identical: ${got%% *}" || { echo "MISMATCH"; exit 1; }
grep -h -e "resuming transfer" -e "found its client" "$work"/n*.log | head -2
