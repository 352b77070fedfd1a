#!/usr/bin/env bash
# Is anything of a cluster bed still on this machine? Prints each leftover
# and exits 1 if there is one: a network namespace, cgroup or state
# directory of a bed, a process started from one (its command line names
# /tmp/mignet-cluster.*), or a mount of one (overlay/tmpfs sources named mgc-*
# or paths under a state directory) in any process's mount table.
set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
found=0
say() { echo "leftover: $*"; found=1; }
for f in /run/netns/mgc*; do [[ -e $f ]] && say "network namespace $(basename "$f")"; done
while read -r h; do
    for d in "$h"/mgc*; do [[ -d $d ]] && say "cgroup $d"; done
done < <(cgroup_hierarchies)
for d in /tmp/mignet-cluster.*; do [[ -e $d ]] && say "state directory $d"; done
for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    cmd=$({ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null) || continue
    [[ $cmd == *mignet-cluster.* && $pid != "$$" ]] && say "process $pid: ${cmd:0:160}"
done
# One mount table per mount namespace is enough; the root's is what is left
# once the nodes' namespaces are gone.
while read -r line; do say "mount $line"; done < <(grep -E '^mgc-|/tmp/mignet-cluster\.' /proc/self/mounts)
exit "$found"
