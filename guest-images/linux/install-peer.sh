#!/usr/bin/env bash
# Installs the peer vhost-user vsock backend (rust-vmm's vhost-device-vsock) that the Linux-guest
# tests and the bench compare vmq against, into ${CARGO_TARGET_DIR:-<repo>/target}/peers/bin.
# Idempotent and quiet when the pinned version is already there. Nothing of it is committed.
set -euo pipefail

# 0.3.0 is the newest release and builds with the project's toolchain (--locked keeps its own
# dependency versions).
readonly VERSION=0.3.0
readonly CRATE=vhost-device-vsock

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
root=$target/peers
bin=$root/bin/$CRATE
stamp=$root/.$CRATE-$VERSION

if [[ -x $bin && -e $stamp ]]; then
    exit 0
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "install-peer.sh: cargo is not on PATH; install a Rust toolchain (rustup) first" >&2
    exit 3
fi
mkdir -p "$root"
echo "install-peer.sh: building $CRATE $VERSION into $root (takes a few minutes)" >&2
# nice: it is a long build on shared cores.
nice -n 10 cargo install "$CRATE" --version "=$VERSION" --locked --root "$root" --force
touch "$stamp"
echo "install-peer.sh: $bin ready" >&2
