#!/usr/bin/env bash
# One entry point: build/reuse the binaries, start the bed, run the smoke
# test, run a command with the bed's env exported, tear down (also on failure
# or Ctrl-C). Exit status is the command's.
#
#   tests/k8s/run.sh                                # smoke test only
#   tests/k8s/run.sh cargo test -p mignet --test k8s
#   MIGNET_K8S_KEEP=1 tests/k8s/run.sh bash         # keep the bed for debugging
set -euo pipefail
K8S_SCRIPT=run
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

env_file=$("$HERE/up.sh")
# shellcheck disable=SC1090
source "$env_file"
teardown() {
    if [[ ${MIGNET_K8S_KEEP:-0} == 1 ]]; then
        log "MIGNET_K8S_KEEP=1: bed left running; source $env_file; stop with tests/k8s/down.sh $MIGNET_K8S_STATE"
    else
        "$HERE/down.sh" "$MIGNET_K8S_STATE"
    fi
}
trap teardown EXIT
trap 'exit 130' INT TERM

"$HERE/smoke.sh"
if (($# > 0)); then
    log "running: $*"
    "$@"
fi
