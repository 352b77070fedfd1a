#!/usr/bin/env bash
# build + up + CMD with the bed's env exported + down (also on failure or
# Ctrl-C). Without CMD: bring the bed up, print its status, take it down.
#
#   tests/cluster/run.sh kubectl get nodes -o wide
#   tests/cluster/run.sh bash tests/cluster/e2e-network.sh
set -euo pipefail
CLUSTER_SCRIPT=run
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

state=$(mktemp -d /tmp/mignet-cluster.XXXXXX)
teardown() { "$HERE/down.sh" "$state" || log "teardown of $state reported problems"; }
trap teardown EXIT
trap 'exit 130' INT TERM
env_file=$("$HERE/up.sh" "$state")
# shellcheck disable=SC1090
source "$env_file"
PATH=$MIGNET_K8S_BIN:$PATH
if (($# == 0)); then
    "$HERE/status.sh"
else
    "$@"
fi
