#!/usr/bin/env bash
# The README's test command: prepare what the tests need, then run them.
#
#   bash scripts/test.sh            # every test, under the race detector
#   bash scripts/test.sh ./tftp/... # only these packages (go test's arguments)
#
# Needs: Linux, Go at least the version go.mod names, and root (the
# network-namespace and nftables tests create their own namespaces; the
# privilege-drop test starts tftpd as root). Missing Debian packages are
# installed with apt-get when this runs as root; otherwise it stops before
# testing and prints the exact command to run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin:/usr/sbin:/sbin"

fail() { echo "scripts/test.sh: $*" >&2; exit 1; }

[ "$(uname -s)" = Linux ] || fail "the tests need Linux (epoll, network namespaces); this is $(uname -s)"
command -v go >/dev/null || fail "go is not on PATH; install Go $(sed -n 's/^go //p' go.mod) or newer from https://go.dev/dl/"
want=$(sed -n 's/^go //p' go.mod)
have=$(go env GOVERSION | sed 's/^go//')
if [ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | head -1)" != "$want" ]; then
  fail "go.mod needs Go $want; this is Go $have"
fi

# Each command the tests run, and the Debian package that has it.
needs=(
  "tftp:tftp-hpa"          # tftp-hpa client: interoperability and failover tests
  "atftp:atftp"            # atftp client: interoperability tests
  "curl:curl"              # curl's tftp:// client
  "nft:nftables"           # partition and attack tests: counters and drops in a namespace
  "ip:iproute2"            # namespaces, veth, addresses
  "unshare:util-linux"     # a private network namespace per test
  "prlimit:util-linux"     # descriptor-limit tests
  "systemd-analyze:systemd" # the unit file in contrib/systemd parses
)
missing=()
for n in "${needs[@]}"; do
  cmd=${n%%:*} pkg=${n#*:}
  command -v "$cmd" >/dev/null || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  # One package may provide several commands.
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" ca-certificates | sort -u)
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "scripts/test.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    fail "missing packages; run first: sudo apt-get install -y --no-install-recommends ${missing[*]}"
  fi
fi
[ "$(id -u)" = 0 ] || fail "the namespace tests need root: run sudo bash scripts/test.sh (CI runs as root)"

go vet ./...
# staticcheck at a fixed version, from the Go module proxy (not in go.mod:
# it is a tool, not a dependency of the library).
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...
if [ "$#" -eq 0 ]; then set -- ./...; fi
go test -race -count=1 -timeout 20m "$@"
