#!/usr/bin/env bash
# Builds the disk test guest: a 64 MiB raw disk image that boots on its own
# (SeaBIOS -> syslinux -> Debian cloud kernel + busybox initramfs), no -kernel.
#
# Output: ${MIGNET_CACHE:-$HOME/.cache/mignet}/guest/disk.img, printed on
# stdout as DISK_IMAGE=PATH (the only stdout line; progress goes to stderr).
#
# Boot it with, e.g.:
#   cp --sparse=always "$DISK_IMAGE" my.img      # the guest writes to its disk
#   qemu-system-x86_64 -accel tcg -machine q35 -m 512 -nodefaults \
#       -display none -serial file:LOG -drive file=my.img,format=raw,if=virtio
# Always boot a copy: the cached image is the pristine template and the stamp
# below only checks inputs, not whether someone has written into it.
#
# Layout: the whole disk is one FAT filesystem (a "superfloppy", no partition
# table) carrying syslinux, vmlinuz, initrd.img and, once booted, mignet/.
# Unpartitioned because mtools, syslinux and the guest then all address the
# same filesystem at offset 0: no loop devices, no mounting on the host.
#
# The guest's /init prints, on ttyS0, like the RAM-only guest (build.sh):
#   memload: filled 256 MiB  the memory workload of tests/guest/memload.c
#                            (mignet.fill_mib=256 on the fixed command line),
#                            so a migration moves real bytes
#   mignet: ready            once the disk and the memory are set up
#   tick N                   every second
# and, for the disk workload (it mounts /dev/vda read-write at /data):
#   disk: new marker=UUID    at a boot that found no /data/mignet/marker
#   disk: marker=UUID tick=N every second, after appending "UUID N" to
#                            /data/mignet/ticks, sync, drop_caches and reading
#                            the marker back from the disk
#   disk: error WHAT         when mounting, writing or reading fails
# (serial lines end in \r\n, as the console's tty writes them). The tick
# log is trimmed to its last 1000 lines whenever it passes 1 MiB.
# The marker is written only when absent, so it survives reboots of the VM
# and live migrations that keep the same image file.
#
# Reading the disk from the host, without mounting (the VM stopped, or at
# least between its syncs):
#   MTOOLS_SKIP_CHECK=1 mtype -i disk.img ::mignet/marker
#   MTOOLS_SKIP_CHECK=1 mtype -i disk.img ::mignet/ticks | tail -n1
# or tests/guest/disk-marker.sh IMAGE, which prints MARKER=... and TICKS=...
#
# Idempotent and fast when done: a stamp records the inputs (this script, the
# kernel package, busybox and syslinux versions); nothing is rebuilt while
# they match. Set MIGNET_GUEST_BOOT_CHECK=1 to boot a copy of the result
# twice under TCG and check that the marker persists across the reboot.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${MIGNET_CACHE:-$HOME/.cache/mignet}"
out="$cache/guest"
mkdir -p "$out"
# Tests running in parallel may all call this on a cold cache: one builds,
# the others wait and then find it done. A lock of its own, so that a test
# holding build.sh's lock does not serialise with this one needlessly.
exec 9>"$out/.disk.lock"
flock 9

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"
guest_need_packages disk qemu-system-x86 busybox-static cpio dosfstools mtools syslinux \
    syslinux-common gcc libc6-dev
# mtools refuses filesystems whose geometry does not look like a floppy's or
# a partition's unless told to skip that check; ours is a plain image file.
export MTOOLS_SKIP_CHECK=1

# Same resolution as build.sh: the meta-package names the current versioned
# kernel package. The kernel is taken from that .deb here too (not from
# build.sh's output) because the modules copied below must come from the
# very same build as the kernel that loads them.
kpkg="$(guest_kernel_package disk)"

versions="$(dpkg-query -W -f='${Package}=${Version} ' busybox-static syslinux syslinux-common)"
stamp_want="$(cat "$0" "$here/lib.sh" "$here/memload.c" | sha256sum | cut -d' ' -f1) $kpkg $versions"
if [ -f "$out/disk.stamp" ] && [ "$(cat "$out/disk.stamp")" = "$stamp_want" ] \
    && [ -s "$out/disk.img" ] && [ "${MIGNET_GUEST_BOOT_CHECK:-0}" != 1 ]; then
    echo "DISK_IMAGE=$out/disk.img"
    exit 0
fi

work="$(mktemp -d /tmp/mignet-disk.XXXXXX)"
qpid=""
cleanup() {
    if [ -n "$qpid" ]; then
        kill "$qpid" 2>/dev/null || true
        wait "$qpid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

if [ -f "$out/disk.stamp" ] && [ "$(cat "$out/disk.stamp")" = "$stamp_want" ] \
    && [ -s "$out/disk.img" ]; then
    echo "disk: image up to date, only checking it" >&2
else
    # Kernel: download the .deb and extract it; installing it would touch /boot.
    echo "disk: fetching $kpkg" >&2
    (cd "$work" && apt-get download -qq -o APT::Sandbox::User=root "$kpkg" >/dev/null)
    dpkg-deb -x "$work"/"$kpkg"_*.deb "$work/kernel"
    kver="${kpkg#linux-image-}"
    mods="$work/kernel/lib/modules/$kver"
    [ -d "$mods" ] || { echo "disk: no modules for $kver in $kpkg" >&2; exit 1; }

    # The cloud kernel builds virtio, the block driver and FAT as modules.
    # Resolve what the vfat mount of /dev/vda needs from the modules' own
    # depends= fields (the .deb ships no modules.dep; depmod runs at install)
    # so the initramfs loads them in dependency order, skipping any that a
    # later kernel builds in. The mount takes two code pages: cp437 (FAT's
    # default codepage) and ascii (this config's default iocharset);
    # nls_utf8 is not needed, FAT_DEFAULT_UTF8 uses nls_base, built in.
    order=()
    declare -A seen=()
    add_module() {
        local name="$1" file dep deps
        [ -z "${seen[$name]:-}" ] || return 0
        seen[$name]=1
        # Module names use _ and - interchangeably; files keep their own.
        file="$(find "$mods/kernel" -name "$name.ko" -o -name "${name//_/-}.ko" | head -n1)"
        if [ -z "$file" ]; then
            if grep -Eq "/(${name}|${name//_/-})\.ko$" "$mods/modules.builtin"; then
                return 0
            fi
            echo "disk: module $name neither in $kpkg nor built in" >&2
            exit 1
        fi
        deps="$(grep -a -o 'depends=[^[:cntrl:]]*' "$file" | head -n1)"
        deps="${deps#depends=}"
        for dep in ${deps//,/ }; do
            add_module "$dep"
        done
        order+=("$file")
    }
    for m in virtio_pci virtio_blk vfat nls_cp437 nls_ascii; do
        add_module "$m"
    done

    root="$work/root"
    mkdir -p "$root"/{bin,dev,proc,sys,tmp,data,lib/modules}
    cp /bin/busybox "$root/bin/busybox"
    # The same memory workload as the RAM guest (tests/guest/memload.c), so a
    # migration of this VM moves real bytes, not zero pages.
    gcc -static -O2 -o "$root/bin/memload" "$here/memload.c"
    for f in "${order[@]}"; do
        cp "$f" "$root/lib/modules/"
        basename "$f" >>"$root/lib/modules/load-order"
    done
    echo "disk: modules: $(tr '\n' ' ' <"$root/lib/modules/load-order")" >&2

    cat >"$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
while read -r ko; do
    insmod "/lib/modules/$ko" || echo "disk: error insmod $ko"
done </lib/modules/load-order

# The virtio disk shows up asynchronously after its driver loads.
dev=/dev/vda
i=0
while [ ! -b "$dev" ] && [ "$i" -lt 100 ]; do
    sleep 0.1
    i=$((i + 1))
done
mounted=0
if mount -t vfat -o rw "$dev" /data; then
    mounted=1
    if [ ! -s /data/mignet/marker ]; then
        # Written aside and renamed so that a VM killed mid-write leaves
        # either no marker (a new one next boot) or a whole one.
        mkdir -p /data/mignet
        cat /proc/sys/kernel/random/uuid >/data/mignet/marker.new
        sync
        mv /data/mignet/marker.new /data/mignet/marker
        sync
        echo "disk: new marker=$(cat /data/mignet/marker)"
    fi
else
    echo "disk: error mount $dev"
fi

fill=0
dirty=0
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        mignet.fill_mib=*) fill="${arg#mignet.fill_mib=}" ;;
        mignet.dirty_mib_s=*) dirty="${arg#mignet.dirty_mib_s=}" ;;
    esac
done
if [ "$fill" != 0 ] || [ "$dirty" != 0 ]; then
    /bin/memload "$fill" "$dirty"
fi

echo "mignet: ready"
n=0
while true; do
    echo "tick $n"
    if [ "$mounted" = 1 ]; then
        marker="$(cat /data/mignet/marker 2>/dev/null)"
        # Keep the log bounded on a 64 MiB disk for guests that run for days.
        if [ "$(stat -c %s /data/mignet/ticks 2>/dev/null || echo 0)" -gt 1048576 ]; then
            tail -n 1000 /data/mignet/ticks >/data/mignet/ticks.new \
                && mv /data/mignet/ticks.new /data/mignet/ticks
        fi
        echo "$marker $n" >>/data/mignet/ticks || echo "disk: error write /data/mignet/ticks"
        sync
        # Read back from the device itself, not the page cache, so a lost
        # or stale disk shows up here rather than being papered over.
        echo 3 >/proc/sys/vm/drop_caches
        if back="$(cat /data/mignet/marker 2>/dev/null)" && [ -n "$back" ]; then
            echo "disk: marker=$back tick=$n"
        else
            echo "disk: error read /data/mignet/marker"
        fi
    else
        echo "disk: error mount $dev"
    fi
    n=$((n + 1))
    sleep 1
done
EOF
    chmod 755 "$root/init"
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd.img"

    cat >"$work/syslinux.cfg" <<'EOF'
SERIAL 0 115200
DEFAULT mignet
PROMPT 0
TIMEOUT 0
LABEL mignet
    LINUX /vmlinuz
    INITRD /initrd.img
    APPEND console=ttyS0 quiet panic=-1 mignet.fill_mib=256
EOF

    img="$work/disk.img"
    # 65536 KiB = 64 MiB; mkfs.vfat picks FAT16 for that size.
    mkfs.vfat -C -n MIGNET "$img" 65536 >/dev/null
    mcopy -i "$img" "$work"/kernel/boot/vmlinuz-"$kver" ::vmlinuz
    mcopy -i "$img" "$work/initrd.img" ::initrd.img
    mcopy -i "$img" "$work/syslinux.cfg" ::syslinux.cfg
    # syslinux (the mtools flavour) writes its boot sector and ldlinux.sys
    # into the image file directly: nothing is mounted.
    syslinux --install "$img"
    mv "$img" "$out/disk.img.tmp"
    mv "$out/disk.img.tmp" "$out/disk.img"
    echo "$stamp_want" >"$out/disk.stamp"
fi

if [ "${MIGNET_GUEST_BOOT_CHECK:-0}" = 1 ]; then
    copy="$work/check.img"
    cp --sparse=always "$out/disk.img" "$copy"

    # Boots the copy, waits for a disk tick >= 2, stops QEMU, and sets
    # booted_marker to the marker that tick read back. Not run in a $(...)
    # subshell so that the EXIT trap still sees qpid and stops QEMU if this
    # script is interrupted.
    booted_marker=""
    boot_once() {
        local log="$1" m=""
        timeout 180 qemu-system-x86_64 -accel tcg -machine q35 -cpu qemu64 -m 512 \
            -nodefaults -display none -no-reboot -serial "file:$log" \
            -drive "file=$copy,format=raw,if=virtio" 2>"$log.stderr" &
        qpid=$!
        for _ in $(seq 1 900); do
            # The log appears only once QEMU has started.
            m="$(sed -n 's/^disk: marker=\([^ ]*\) tick=\([0-9]*\).*/\1 \2/p' "$log" 2>/dev/null \
                | awk '$2 >= 2 {print $1; exit}')" || m=""
            [ -n "$m" ] && break
            kill -0 "$qpid" 2>/dev/null || break
            sleep 0.2
        done
        kill "$qpid" 2>/dev/null || true
        wait "$qpid" 2>/dev/null || true
        qpid=""
        if [ -z "$m" ]; then
            echo "disk: boot check failed, no disk tick >= 2; serial log:" >&2
            cat "$log" "$log.stderr" >&2
            exit 1
        fi
        booted_marker="$m"
    }
    t0=$SECONDS
    boot_once "$work/serial1.log"
    first="$booted_marker"
    if ! grep -q "^disk: new marker=$first" "$work/serial1.log"; then
        echo "disk: boot check failed, first boot did not create the marker; serial log:" >&2
        cat "$work/serial1.log" >&2
        exit 1
    fi
    boot_once "$work/serial2.log"
    second="$booted_marker"
    if [ "$second" != "$first" ] || grep -q "^disk: new marker=" "$work/serial2.log"; then
        echo "disk: boot check failed, marker $first did not persist (got $second); serial log:" >&2
        cat "$work/serial2.log" >&2
        exit 1
    fi
    # The host-side reader must agree with what the guest read back.
    host="$("$here/disk-marker.sh" "$copy" | sed -n 's/^MARKER=//p')"
    if [ "$host" != "$first" ]; then
        echo "disk: boot check failed, disk-marker.sh read '$host', guest $first" >&2
        exit 1
    fi
    echo "disk: boot check ok (marker $first persisted across a reboot, $((SECONDS - t0)) s)" >&2
fi

echo "DISK_IMAGE=$out/disk.img"
