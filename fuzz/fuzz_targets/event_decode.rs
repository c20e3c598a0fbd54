//! Arbitrary ring-buffer records through the decoder and the daemon's
//! enrichment (identities from `policies/`).
#![no_main]

use std::sync::LazyLock;

use agent_user::daemon::harness::Harness;
use libfuzzer_sys::fuzz_target;

static H: LazyLock<Harness> = LazyLock::new(corral_fuzz_harness);

fn corral_fuzz_harness() -> Harness {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    Harness::new(&dir, rt).expect("harness")
}

fuzz_target!(|data: &[u8]| {
    let _ = H.event(data);
});
