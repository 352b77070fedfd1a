# shellcheck shell=bash
# Shared by the tests/tools/build-*.sh scripts: logging, timing, the Go
# environment and the cache-then-lock dance. Source it after setting TOOL
# (the log tag) and ROOT (this tool's cache directory).
#
# Every build script prints the binary's path as its only stdout line, so
# everything here logs to stderr.

log() { printf '[tools/%s %s] %s\n' "$TOOL" "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

_tools_start=$(date +%s.%N)
elapsed() { awk -v s="$_tools_start" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1f", e-s}'; }

# use_cached_or_lock READY_FN OUT: print OUT and exit when READY_FN says the
# cached build is good; otherwise take $ROOT/build.lock (held until the
# script exits) and check again, because a parallel test may have built it
# while we waited. Returns only when this process must build.
use_cached_or_lock() {
    local ready=$1 out=$2
    if "$ready"; then
        log "warm: cached ($(elapsed)s)"
        echo "$out"
        exit 0
    fi
    mkdir -p "$ROOT"
    exec 9>"$ROOT/build.lock"
    flock 9
    if "$ready"; then
        log "warm: another process built it meanwhile ($(elapsed)s)"
        echo "$out"
        exit 0
    fi
}

# A reproducible Go environment inside our cache: the machine's toolchain
# only (no automatic toolchain download), static binaries, and the module
# and build caches under $CACHE so a warm CI machine skips the downloads.
go_env() {
    GO=${GO:-}
    if [[ -z $GO ]]; then
        if [[ -x /usr/local/go/bin/go ]]; then GO=/usr/local/go/bin/go; else GO=$(command -v go) || die "no Go toolchain"; fi
    fi
    export GOMODCACHE=${GOMODCACHE:-$CACHE/go/mod}
    # The build cache is only a compile cache (GBs for these trees) and the
    # binary is what we keep, so a cold build gets a throwaway one: the CI
    # machine's disk is shared with the Rust build.
    if [[ -z ${GOCACHE:-} ]]; then
        mkdir -p "$CACHE/go"
        GOCACHE=$(mktemp -d "$CACHE/go/build.XXXXXX")
        export GOCACHE
        trap 'rm -rf "$GOCACHE"' EXIT
    fi
    export GOTOOLCHAIN=local
    export CGO_ENABLED=0
    unset GOFLAGS
}

# go_mod_download MOD VERSION: fetch a module through the proxy and set
# gomod (the go.mod the proxy serves), srcdir (its source tree) and goline
# (its `go` directive, for a wrapper module's own go.mod).
# shellcheck disable=SC2034 # gomod, srcdir, goline are for the caller
go_mod_download() {
    local json
    json=$("$GO" mod download -json "$1@$2") || die "go mod download $1@$2 failed"
    _field() { sed -n "s/^[[:space:]]*\"$1\": \"\(.*\)\",\{0,1\}$/\1/p" <<<"$json" | head -1; }
    gomod=$(_field GoMod)
    srcdir=$(_field Dir)
    [[ -f $gomod && -d $srcdir ]] || die "module download gave no go.mod/dir: $json"
    goline=$(grep -m1 '^go ' "$gomod" || echo 'go 1.24')
}
