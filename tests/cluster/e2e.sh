#!/usr/bin/env bash
# Every cluster end-to-end suite, in order, on one bed (tests/run.sh runs
# this): the network story first (it deploys mignet on the seed's network),
# then the seed's VM on it, then kubectl drain, then the seed's last steps (10.7.1 restart and
# NodeMaintenance). One bed for all saves a bring-up and a deploy
# per suite; each suite prints its own "N passed, M failed" line, and the
# first failing suite stops the run.
#
#   tests/cluster/run.sh bash tests/cluster/e2e.sh
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${MIGNET_CLUSTER_STATE:?run inside the bed: tests/cluster/run.sh bash $0}"
for suite in e2e-network e2e-vm e2e-drain e2e-maintenance; do
    t=$SECONDS
    bash "$HERE/$suite.sh" || {
        echo "e2e: $suite FAILED after $((SECONDS - t))s" >&2
        exit 1
    }
    echo "e2e: $suite passed in $((SECONDS - t))s"
done
