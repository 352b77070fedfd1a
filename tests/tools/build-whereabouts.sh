#!/usr/bin/env bash
# Build (or take from the cache) the whereabouts IPAM plugin from the Go
# module proxy, for the side-by-side benchmark (cargo bench -p mignet-cni
# --bench ipam_k8s). Prints the binary's path as the only stdout line; the
# CRDs of the same version are next to it in $ROOT/crds/.
#
#   WA=$(tests/tools/build-whereabouts.sh)
#
# whereabouts' go.mod has a `replace` directive (gogo/protobuf), which Go
# ignores in a dependency, so `go install mod@version` refuses it. We write a
# throwaway wrapper module that requires whereabouts, copies every replace
# line from the go.mod the proxy serves, and builds its ./cmd package (the
# CNI binary's main package).
set -euo pipefail

WA_VERSION=${WA_VERSION:-v0.9.2}
WA_MOD=github.com/k8snetworkplumbingwg/whereabouts
CACHE=${MIGNET_CACHE:-$HOME/.cache/mignet}
ROOT=$CACHE/whereabouts/$WA_VERSION
OUT=$ROOT/bin/whereabouts

TOOL=whereabouts
# shellcheck source=tests/tools/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# A CNI plugin answers VERSION with a JSON list of supported versions.
runs() {
    local out
    out=$(CNI_COMMAND=VERSION "$1" </dev/null 2>&1 || true)
    grep -q 'supportedVersions' <<<"$out"
}
ready() { [[ -x $OUT ]] && runs "$OUT" && [[ -f $ROOT/crds/whereabouts.cni.cncf.io_ippools.yaml ]]; }

use_cached_or_lock ready "$OUT"
go_env

log "cold build: whereabouts $WA_VERSION with $("$GO" version)"
go_mod_download "$WA_MOD" "$WA_VERSION"

SRC=$ROOT/src/wrapper
rm -rf "$SRC"
mkdir -p "$SRC"
{
    echo "module mignet.test/whereabouts-wrapper"
    echo
    echo "$goline"
    echo
    echo "require $WA_MOD $WA_VERSION"
    echo
    # Single-line `replace a => b v` directives and `replace ( ... )` blocks.
    awk '
        /^replace[[:space:]]*\(/ { inblk = 1; next }
        inblk && /^\)/ { inblk = 0; next }
        inblk && /=>/ { sub(/^[[:space:]]+/, ""); print "replace " $0; next }
        /^replace[[:space:]].*=>/ { print; next }
    ' "$gomod"
} >"$SRC/go.mod"
cat >"$SRC/tools.go" <<EOF
//go:build tools

package wrapper

import _ "$WA_MOD/cmd"
EOF
log "wrapper go.mod: $(grep -c '^replace' "$SRC/go.mod") replace line(s)"

rm -rf "$ROOT/bin.new"
mkdir -p "$ROOT/bin.new"
(
    cd "$SRC"
    GOFLAGS=-mod=mod "$GO" mod tidy -e >/dev/null 2>&1 || true
    GOFLAGS=-mod=mod "$GO" build -ldflags "-s -w" -o "$ROOT/bin.new/whereabouts" "$WA_MOD/cmd"
) || die "go build of $WA_MOD/cmd failed"
runs "$ROOT/bin.new/whereabouts" || die "built whereabouts does not answer CNI VERSION"

rm -rf "$ROOT/crds"
mkdir -p "$ROOT/crds"
cp "$srcdir"/doc/crds/whereabouts.cni.cncf.io_*.yaml "$ROOT/crds/"
chmod u+w "$ROOT/crds/"*

rm -rf "${ROOT:?}/bin"
mv "$ROOT/bin.new" "$ROOT/bin"
log "cold build done in $(elapsed)s"
echo "$OUT"
