//! Builds the bare-metal guest images in `guest-images/` (a separate cargo workspace) and copies
//! each ELF to `$OUT_DIR/<name>.elf`, where `vmm::images` includes it.
//!
//! Only with the `std` feature: guest images depend on this crate without it, which also stops
//! the recursion.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Guest binaries to build and embed.
const IMAGES: &[&str] = &["hello", "client", "worker", "peer", "evil"];

/// Variables of the outer build that must not leak into the nested cargo: flags, wrappers
/// (clippy's driver), the target directory and the target.
const CLEARED_VARS: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_PKG_NAME",
    "CARGO_CRATE_NAME",
    "CARGO_PROFILE_RELEASE_DEBUG",
    "CARGO_PROFILE_RELEASE_CODEGEN_UNITS",
    "CARGO_PROFILE_RELEASE_LTO",
    "CARGO_PROFILE_RELEASE_OPT_LEVEL",
    "CARGO_PROFILE_RELEASE_PANIC",
    "RUSTDOCFLAGS",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "CARGO_INCREMENTAL",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for dir in [
        "guest-images",
        "src/wire",
        "src/virtio",
        "src/abi",
        "src/traffic",
    ] {
        println!("cargo:rerun-if-changed={dir}");
    }
    if env::var_os("CARGO_FEATURE_STD").is_none() {
        return;
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets it"));
    let guests = manifest_dir.join("guest-images");
    let target_dir = out_dir.join("guest-target");
    let script = guests.join("link.ld");

    let flags = [
        "-C".to_string(),
        "relocation-model=static".to_string(),
        "-C".to_string(),
        "panic=abort".to_string(),
        "-C".to_string(),
        "link-arg=-nostartfiles".to_string(),
        "-C".to_string(),
        "link-arg=-nodefaultlibs".to_string(),
        "-C".to_string(),
        "link-arg=-static".to_string(),
        "-C".to_string(),
        "link-arg=-no-pie".to_string(),
        "-C".to_string(),
        format!("link-arg=-T{}", script.display()),
        "-C".to_string(),
        "link-arg=-Wl,--build-id=none".to_string(),
    ];

    let host = env::var("HOST").expect("cargo sets it");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    for v in CLEARED_VARS {
        cmd.env_remove(v);
    }
    // Feature and cfg variables of this build script mean nothing to the nested build.
    for (k, _) in env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_FEATURE_") || k.starts_with("CARGO_CFG_") {
            cmd.env_remove(&*k);
        }
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
        .arg("build")
        .arg("--release")
        .arg("--locked")
        .arg("--manifest-path")
        .arg(guests.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .arg("--bins")
        // An explicit target keeps the bare-metal flags away from build scripts.
        .arg("--target")
        .arg(&host);
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build guest-images: {e}"));
    if !status.success() {
        panic!("building guest-images failed ({status}); see the cargo output above");
    }
    for name in IMAGES {
        let built = target_dir.join(&host).join("release").join(name);
        copy(&built, &out_dir.join(format!("{name}.elf")));
    }
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| {
        panic!(
            "cannot copy guest image {} to {}: {e}",
            from.display(),
            to.display()
        )
    });
}
