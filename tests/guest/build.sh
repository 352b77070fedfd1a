#!/usr/bin/env bash
# Builds the test guest: a Debian cloud kernel plus a tiny busybox initramfs.
#
# Output: ${MIGNET_CACHE:-$HOME/.cache/mignet}/guest/{vmlinuz,initramfs.img}
# (paths printed on stdout, one per line, as KEY=PATH).
#
# The guest's /init prints "tick N" on the serial console every second (tests
# check that the destination continues with N+1 after a migration) and reads
# from the kernel command line:
#   mignet.fill_mib=N     fill N MiB of memory with non-zero bytes
#   mignet.dirty_mib_s=R  then keep re-dirtying that memory at R MiB/s
# It prints "mignet: ready" once the fill is done.
#
# Idempotent and fast when done: a stamp records the inputs (this script, the
# memload source, the kernel package); nothing is rebuilt while they match.
# Set MIGNET_GUEST_BOOT_CHECK=1 to boot the result once under TCG as a proof.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${MIGNET_CACHE:-$HOME/.cache/mignet}"
out="$cache/guest"
mkdir -p "$out"
# Tests running in parallel may all call this on a cold cache: one builds,
# the others wait and then find it done.
exec 9>"$out/.lock"
flock 9

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"
guest_need_packages guest qemu-system-x86 busybox-static cpio gcc libc6-dev

kpkg="$(guest_kernel_package guest)"

stamp_want="$(cat "$0" "$here/memload.c" | sha256sum | cut -d' ' -f1) $kpkg"
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp_want" ] \
    && [ -s "$out/vmlinuz" ] && [ -s "$out/initramfs.img" ]; then
    echo "VMLINUZ=$out/vmlinuz"
    echo "INITRAMFS=$out/initramfs.img"
    exit 0
fi

work="$(mktemp -d /tmp/mignet-guest.XXXXXX)"
trap 'rm -rf "$work"' EXIT

# Kernel: download the .deb and extract it; installing it would touch /boot.
echo "guest: fetching $kpkg" >&2
(cd "$work" && apt-get download -qq -o APT::Sandbox::User=root "$kpkg" >/dev/null)
dpkg-deb -x "$work"/"$kpkg"_*.deb "$work/kernel"
vmlinuz="$(ls "$work"/kernel/boot/vmlinuz-* | head -n1)"
cp "$vmlinuz" "$out/vmlinuz.tmp"

# Initramfs: busybox-static, the memload helper, and /init.
root="$work/root"
mkdir -p "$root"/{bin,dev,proc,sys,tmp}
cp /bin/busybox "$root/bin/busybox"
gcc -static -O2 -o "$root/bin/memload" "$here/memload.c"

cat >"$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
fill=0
dirty=0
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        mignet.fill_mib=*) fill="${arg#mignet.fill_mib=}" ;;
        mignet.dirty_mib_s=*) dirty="${arg#mignet.dirty_mib_s=}" ;;
    esac
done
if [ "$fill" != 0 ] || [ "$dirty" != 0 ]; then
    # memload returns once the memory is filled and keeps dirtying it from a
    # forked child, so "ready" below means the memory is really there.
    /bin/memload "$fill" "$dirty"
fi
echo "mignet: ready"
n=0
while true; do
    echo "tick $n"
    n=$((n + 1))
    sleep 1
done
EOF
chmod 755 "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out/initramfs.img.tmp"

mv "$out/vmlinuz.tmp" "$out/vmlinuz"
mv "$out/initramfs.img.tmp" "$out/initramfs.img"
echo "$stamp_want" >"$out/stamp"

if [ "${MIGNET_GUEST_BOOT_CHECK:-0}" = 1 ]; then
    log="$work/serial.log"
    timeout 60 qemu-system-x86_64 -accel tcg -machine q35 -cpu qemu64 -m 256 -nodefaults \
        -display none -no-reboot -serial "file:$log" \
        -kernel "$out/vmlinuz" -initrd "$out/initramfs.img" \
        -append "console=ttyS0 quiet panic=-1" &
    qpid=$!
    for _ in $(seq 1 300); do
        grep -q "tick 2" "$log" 2>/dev/null && break
        sleep 0.2
    done
    kill "$qpid" 2>/dev/null || true
    wait "$qpid" 2>/dev/null || true
    if ! grep -q "tick 2" "$log"; then
        echo "guest: boot check failed; serial log:" >&2
        cat "$log" >&2
        exit 1
    fi
    echo "guest: boot check ok" >&2
fi

echo "VMLINUZ=$out/vmlinuz"
echo "INITRAMFS=$out/initramfs.img"
