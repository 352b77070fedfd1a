#!/usr/bin/env bash
# Build (or take from the cache) cnitool, the reference CNI runtime client,
# from the Go module proxy. Prints the binary's path as the only stdout line.
#
#   CNITOOL=$(tests/tools/build-cnitool.sh)
#   NETCONFPATH=dir CNI_PATH=/usr/lib/cni "$CNITOOL" add <net> /var/run/netns/<ns>
#
# cni v1.3.0 speaks spec versions up to 1.1.0 (STATUS, GC, cniVersions) and
# its go.mod has no replace directives, so plain `go install mod@version`
# works without a wrapper module.
set -euo pipefail

CNI_VERSION=v1.3.0
CACHE=${MIGNET_CACHE:-$HOME/.cache/mignet}
ROOT=$CACHE/cnitool/$CNI_VERSION
OUT=$ROOT/bin/cnitool

TOOL=cnitool
# shellcheck source=tests/tools/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# cnitool without arguments prints usage and exits 1; its "cnitool add" line
# is the evidence the binary runs at all.
runs() {
    local out
    out=$("$1" 2>&1 || true)
    grep -q 'cnitool add' <<<"$out"
}
ready() { [[ -x $OUT ]] && runs "$OUT"; }

use_cached_or_lock ready "$OUT"
go_env

log "cold build: cnitool $CNI_VERSION with $("$GO" version)"
rm -rf "$ROOT/bin.new"
mkdir -p "$ROOT/bin.new"
GOBIN=$ROOT/bin.new "$GO" install -ldflags "-s -w" \
    "github.com/containernetworking/cni/cnitool@$CNI_VERSION"
runs "$ROOT/bin.new/cnitool" || die "built cnitool does not print its usage (cnitool add ...)"
rm -rf "${ROOT:?}/bin"
mv "$ROOT/bin.new" "$ROOT/bin"
log "cold build done in $(elapsed)s"
echo "$OUT"
