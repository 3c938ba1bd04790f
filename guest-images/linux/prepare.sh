#!/usr/bin/env bash
# Prepares the stock Linux test guests: QEMU, a Debian 6.1 kernel (unpacked, never installed on
# the host), and an initramfs with busybox, the virtio/vsock modules, /init and vsock-probe.
#
# Output: ${CARGO_TARGET_DIR:-<repo>/target}/linux-guest/{vmlinuz,initramfs.cpio.gz,stamp}.
# Idempotent and quiet when everything is up to date.
# Exit codes: 0 ready; 3 something is missing and cannot be installed here (the message says
# what to install); 1 any other failure.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
out=$target/linux-guest

# Modules, in load order (each needs only those before it). vsock_loopback (CID 1) lets one
# guest check the probe on its own; it is optional.
readonly MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
    vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport vsock_loopback)
readonly OPTIONAL_MODULES=" vsock_loopback "

say() { echo "prepare.sh: $*" >&2; }
die() { say "$*"; exit 1; }

# Prints what to install and exits 3: this machine cannot do it itself.
cannot_install() {
    say "cannot install $1 here: $2"
    say "as root on Debian bookworm, this script installs everything itself; otherwise install:"
    say "  apt-get update && apt-get install -y --no-install-recommends qemu-system-x86 busybox-static"
    say "  a Rust toolchain with cargo (rustup) for the probe"
    say "  and unpack a kernel into $out/kernel: apt-get download linux-image-6.1.0-<N>-amd64,"
    say "  dpkg-deb -x <deb> $out/kernel, echo 6.1.0-<N>-amd64 >$out/kernel-version"
    exit 3
}

can_apt() {
    [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1
}

apt_updated=0
apt_update() {
    if [[ $apt_updated -eq 0 ]]; then
        if ! apt-get update -qq >"$out/apt-update.log" 2>&1; then
            cannot_install "packages" "apt-get update failed (no network?); see $out/apt-update.log"
        fi
        apt_updated=1
    fi
}

busybox_static() {
    local bb
    for bb in /bin/busybox /usr/bin/busybox; do
        # ldd exits 1 for a static binary, so look at its words, not its status.
        if [[ -x $bb && $(LC_ALL=C ldd "$bb" 2>&1 || true) == *"not a dynamic executable"* ]]; then
            echo "$bb"
            return 0
        fi
    done
    return 1
}

mkdir -p "$out"

# 1. Host packages.
missing=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || missing+=(qemu-system-x86)
busybox_static >/dev/null || missing+=(busybox-static)
if [[ ${#missing[@]} -gt 0 ]]; then
    can_apt || cannot_install "${missing[*]}" "not root or no apt-get"
    apt_update
    say "installing ${missing[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >"$out/apt-install.log" 2>&1; then
        cannot_install "${missing[*]}" "apt-get install failed; see $out/apt-install.log"
    fi
fi
busybox=$(busybox_static) || die "busybox-static is installed but no static busybox was found"

# 2. The kernel: the newest Debian 6.1 image, unpacked once into $out/kernel.
kver=""
[[ -f $out/kernel-version ]] && kver=$(cat "$out/kernel-version")
if [[ -z $kver || ! -f $out/kernel/boot/vmlinuz-$kver ]]; then
    can_apt || cannot_install "a Debian 6.1 kernel image" "not root or no apt-get"
    command -v dpkg-deb >/dev/null 2>&1 || cannot_install "a Debian 6.1 kernel image" "no dpkg-deb"
    candidates() {
        apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' 2>/dev/null |
            awk '{print $1}' | sort -rV
    }
    list=$(candidates)
    if [[ -z $list ]]; then
        apt_update
        list=$(candidates)
    fi
    [[ -n $list ]] || cannot_install "a Debian 6.1 kernel image" \
        "apt knows no linux-image-6.1.0-*-amd64 (not a Debian bookworm apt source?)"
    rm -rf "$out/debs" "$out/kernel"
    mkdir -p "$out/debs"
    pkg=""
    # The index may list images whose files are gone from the mirror: take the newest that downloads.
    for p in $list; do
        if (cd "$out/debs" && apt-get download -qq "$p" >"$out/apt-download.log" 2>&1); then
            pkg=$p
            break
        fi
    done
    [[ -n $pkg ]] || cannot_install "a Debian 6.1 kernel image" \
        "apt-get download failed for every candidate; see $out/apt-download.log"
    say "unpacking $pkg"
    dpkg-deb -x "$out/debs/${pkg}"_*.deb "$out/kernel"
    kver=${pkg#linux-image-}
    [[ -f $out/kernel/boot/vmlinuz-$kver ]] || die "$pkg has no boot/vmlinuz-$kver"
    echo "$kver" >"$out/kernel-version"
    rm -rf "$out/debs"
fi
cp -u "$out/kernel/boot/vmlinuz-$kver" "$out/vmlinuz"

# 3. The probe, static (glibc with crt-static: no musl toolchain needed).
command -v cargo >/dev/null 2>&1 || cannot_install "cargo" "no Rust toolchain on PATH (rustup)"
probe_dir=$here/vsock-probe
RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release --locked \
    --manifest-path "$probe_dir/Cargo.toml" --target x86_64-unknown-linux-gnu \
    --target-dir "$out/probe-build" || die "building vsock-probe failed"
probe=$out/probe-build/x86_64-unknown-linux-gnu/release/vsock-probe

# 4. The initramfs, rebuilt only when one of its inputs changed.
stamp=$(cat "$here/prepare.sh" "$here/init" "$probe" "$busybox" | sha256sum | cut -d' ' -f1)
stamp="$stamp kernel=$kver"
if [[ -f $out/stamp && $(cat "$out/stamp") == "$stamp" && -f $out/initramfs.cpio.gz ]]; then
    exit 0
fi

moddir=$out/kernel/lib/modules/$kver
config=$out/kernel/boot/config-$kver
[[ -f $config ]] || die "no kernel config at $config"
root=$out/initramfs-root
rm -rf "$root"
mkdir -p "$root"/{bin,dev,proc,sys,tmp,etc,lib/modules}
order=()
for m in "${MODULES[@]}"; do
    # modules.builtin lists built-in ones as kernel/.../name.ko; module file names may use - for _.
    pattern="/${m}.ko\$|/${m//_/-}.ko\$"
    if grep -Eq "$pattern" "$moddir/modules.builtin" 2>/dev/null; then
        continue
    fi
    f=$(find "$moddir/kernel" -regextype posix-extended -regex \
        ".*/(${m}|${m//_/-})\.ko(\.xz|\.zst|\.gz)?" | head -n1)
    if [[ -z $f ]]; then
        [[ $OPTIONAL_MODULES == *" $m "* ]] && continue
        die "module $m is neither built into $kver nor in $moddir (see $config)"
    fi
    # busybox insmod reads plain .ko only: decompress on the host.
    case $f in
        *.ko.xz) xz -dc "$f" >"$root/lib/modules/$m.ko" ;;
        *.ko.zst) zstd -qdc "$f" >"$root/lib/modules/$m.ko" ;;
        *.ko.gz) gzip -dc "$f" >"$root/lib/modules/$m.ko" ;;
        *) cp "$f" "$root/lib/modules/$m.ko" ;;
    esac
    order+=("$m")
done
printf '%s\n' "${order[@]}" >"$root/etc/modules.order"

cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [[ $applet == busybox ]] || ln -s busybox "$root/bin/$applet"
done
install -m 0755 "$here/init" "$root/init"
install -m 0755 "$probe" "$root/bin/vsock-probe"

tmp=$out/initramfs.cpio.gz.tmp
# busybox cpio can write newc archives; the cpio package need not be installed.
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | "$busybox" cpio -o -H newc 2>/dev/null) |
    gzip -9n >"$tmp" || die "building the initramfs failed"
mv "$tmp" "$out/initramfs.cpio.gz"
echo "$stamp" >"$out/stamp"
say "ready: $out/vmlinuz ($kver), $out/initramfs.cpio.gz (modules: ${order[*]})"
