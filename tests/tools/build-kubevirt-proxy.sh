#!/usr/bin/env bash
# Build (or take from the cache) KubeVirt's own live-migration proxy as a
# standalone program, for the side-by-side benchmark of issue 16
# (manager/dataplane/benches/migration_cpu.rs). Prints the binary's path as
# the only stdout line.
#
#   KVP=$(tests/tools/build-kubevirt-proxy.sh)
#   "$KVP" source --unix PATH --target HOST:PORT --ca CA.pem --cert CERT.pem --key KEY.pem
#   "$KVP" target --bind IP --port PORT --unix PATH --ca CA.pem --cert CERT.pem --key KEY.pem
#
# The program is tests/tools/kubevirt-proxy/main.go; it uses the package
# kubevirt.io/kubevirt/pkg/virt-handler/migration-proxy as a library.
# kubevirt's go.mod replaces kubevirt.io/api and kubevirt.io/client-go with
# relative paths into its own tree (staging/), which a module outside that
# tree cannot follow. So we write a throwaway wrapper module that requires
# kubevirt, api and client-go at the same version (all three are published),
# copies every other replace line from the go.mod the proxy serves (k8s.io/*
# pins, kube-openapi, openshift, ...), and builds main.go in it.
#
# The cached binary is rebuilt when main.go changes (its sha256 is stored
# next to the binary).
set -euo pipefail

KV_VERSION=${KV_VERSION:-v1.9.0}
KV_MOD=kubevirt.io/kubevirt
CACHE=${MIGNET_CACHE:-$HOME/.cache/mignet}
ROOT=$CACHE/kubevirt-proxy/$KV_VERSION
OUT=$ROOT/bin/kubevirt-proxy
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MAIN=$HERE/kubevirt-proxy/main.go

TOOL=kubevirt-proxy
# shellcheck source=tests/tools/lib.sh
source "$HERE/lib.sh"

[[ -f $MAIN ]] || die "missing $MAIN"
main_sum=$(sha256sum "$MAIN" | cut -d' ' -f1)

# The program prints its usage on `help` and exits 0.
runs() { "$1" help 2>/dev/null | grep -q 'kubevirt-proxy source --unix'; }
ready() { [[ -x $OUT ]] && [[ $(cat "$ROOT/bin/main.go.sha256" 2>/dev/null) == "$main_sum" ]] && runs "$OUT"; }

use_cached_or_lock ready "$OUT"
go_env

log "cold build: $KV_MOD $KV_VERSION migration-proxy with $("$GO" version)"
go_mod_download "$KV_MOD" "$KV_VERSION"
[[ -d $srcdir/pkg/virt-handler/migration-proxy ]] || die "$KV_MOD $KV_VERSION has no pkg/virt-handler/migration-proxy"

SRC=$ROOT/src/wrapper
rm -rf "$SRC"
mkdir -p "$SRC"
{
    echo "module mignet.test/kubevirt-proxy"
    echo
    echo "$goline"
    echo
    echo "require ("
    echo "	$KV_MOD $KV_VERSION"
    echo "	kubevirt.io/api $KV_VERSION"
    echo "	kubevirt.io/client-go $KV_VERSION"
    echo ")"
    echo
    # Single-line `replace a => b v` directives and `replace ( ... )` blocks,
    # except those whose right side is a local path (./ or ../).
    awk '
        function keep(line,   rhs) {
            rhs = line
            sub(/^.*=>[[:space:]]*/, "", rhs)
            return rhs !~ /^\.\.?\//
        }
        /^replace[[:space:]]*\(/ { inblk = 1; next }
        inblk && /^\)/ { inblk = 0; next }
        inblk && /=>/ { sub(/^[[:space:]]+/, ""); if (keep($0)) print "replace " $0; next }
        /^replace[[:space:]].*=>/ { if (keep($0)) print; next }
    ' "$gomod"
} >"$SRC/go.mod"
cp "$MAIN" "$SRC/main.go"
log "wrapper go.mod: $(grep -c '^replace' "$SRC/go.mod") replace line(s)"
if grep -q '^replace .*=>[[:space:]]*\.' "$SRC/go.mod"; then die "a local-path replace slipped into $SRC/go.mod"; fi

rm -rf "$ROOT/bin.new"
mkdir -p "$ROOT/bin.new"
(
    cd "$SRC"
    GOFLAGS=-mod=mod "$GO" mod tidy >&2
    GOFLAGS=-mod=mod "$GO" build -trimpath -ldflags "-s -w" -o "$ROOT/bin.new/kubevirt-proxy" .
) || die "go build of the kubevirt-proxy wrapper failed (wrapper in $SRC)"
runs "$ROOT/bin.new/kubevirt-proxy" || die "built kubevirt-proxy does not print its usage"
echo "$main_sum" >"$ROOT/bin.new/main.go.sha256"

rm -rf "${ROOT:?}/bin"
mv "$ROOT/bin.new" "$ROOT/bin"
log "cold build done in $(elapsed)s"
echo "$OUT"
