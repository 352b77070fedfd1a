#!/usr/bin/env bash
# The README's first command: prepare the machine (Debian packages, guest
# kernel + initramfs), build mignet in release mode, and run the narrated lab
# demo. Everything the demo creates lives in namespaces it owns and is removed
# at the end (`mignet lab down` also cleans up after a crash).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

if [ "$(id -u)" != 0 ]; then
    echo "tests/lab-demo.sh: must run as root (network namespaces, QEMU); try: sudo tests/lab-demo.sh" >&2
    exit 1
fi

bash "$here/setup.sh" --lab
cargo build --release --locked -p mignet -p mignet-cni
# The narration is the demo's output; the agents' and controller's INFO logs
# would interleave with its progress bar. RUST_LOG=info brings them back.
export RUST_LOG="${RUST_LOG:-warn}"
exec "$root/target/release/mignet" lab demo "$@"
