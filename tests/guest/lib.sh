# shellcheck shell=bash
# Shared by tests/guest/build.sh and build-disk.sh (sourced; bash).

# Install the Debian packages named that are missing (one apt run).
# LABEL prefixes the progress line on stderr.
guest_need_packages() { # guest_need_packages LABEL PACKAGE...
    local label=$1 p need=()
    shift
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
    done
    if [ "${#need[@]}" -gt 0 ]; then
        echo "$label: installing ${need[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
}

# The versioned kernel package the cloud meta-package currently depends on,
# on stdout. Resolving it (rather than hard-coding an ABI number) keeps the
# guests building as Debian moves on; apt-cache needs package lists, so they
# are updated once if missing. Both guests take their kernel from this .deb.
guest_kernel_package() { # guest_kernel_package LABEL
    local kpkg
    kpkg="$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
        | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
    if [ -z "$kpkg" ]; then
        apt-get update -qq
        kpkg="$(apt-cache depends linux-image-cloud-amd64 \
            | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
    fi
    [ -n "$kpkg" ] || { echo "$1: cannot resolve linux-image-cloud-amd64" >&2; return 1; }
    echo "$kpkg"
}
