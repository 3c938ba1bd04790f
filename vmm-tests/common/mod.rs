//! What every KVM test binary shares.

/// Whether KVM tests can run here. Without a usable `/dev/kvm` a test prints "skipping" and
/// passes, unless `CI=true` or `VMQ_REQUIRE_KVM=1`, where this panics.
pub fn require_kvm() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            let required = std::env::var("CI").is_ok_and(|v| v == "true")
                || std::env::var("VMQ_REQUIRE_KVM").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "/dev/kvm is required (CI=true or VMQ_REQUIRE_KVM=1) but cannot be opened: {e}; \
                 check that it exists and that this user can read and write it"
            );
            eprintln!("skipping: /dev/kvm not available ({e})");
            false
        }
    }
}
