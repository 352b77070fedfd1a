#!/usr/bin/env bash
# Prints what the disk test guest (build-disk.sh) left on its disk image:
#   MARKER=<uuid>            the guest's persistent marker
#   TICKS=<uuid> <N>         the last line the guest appended to its tick log
#                            (empty if it never ticked)
# Usage: tests/guest/disk-marker.sh IMAGE
#
# Reads the FAT filesystem with mtools, so nothing is mounted and no loop
# device is needed. The image may belong to a running VM: the guest syncs
# after every write, so a read between two ticks sees a consistent state
# (at worst the previous tick's). Exits 1 if the image has no marker (never
# booted, or not a disk guest image).
set -euo pipefail
if [ "$#" -ne 1 ] || [ ! -f "$1" ]; then
    echo "usage: $0 IMAGE" >&2
    exit 2
fi
command -v mtype >/dev/null || { echo "disk-marker: mtools missing (build-disk.sh installs it)" >&2; exit 1; }
# The image is an unpartitioned FAT filesystem whose geometry mtools would
# otherwise reject as neither a floppy nor a partition.
export MTOOLS_SKIP_CHECK=1
# mtype -i opens the image read-only: safe next to a QEMU that has it open.
marker="$(mtype -i "$1" ::mignet/marker 2>/dev/null | tr -d '\r\n')" || marker=""
if [ -z "$marker" ]; then
    echo "disk-marker: no mignet/marker in $1" >&2
    exit 1
fi
ticks="$(mtype -i "$1" ::mignet/ticks 2>/dev/null | tail -n1)" || ticks=""
echo "MARKER=$marker"
echo "TICKS=$ticks"
