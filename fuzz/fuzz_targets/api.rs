//! Arbitrary bytes on either API socket, through hyper and the daemon's
//! routes (no kernel: see `agent_user::daemon::harness`). First byte: which
//! socket (even: control; odd: lease, as the identity it picks).
#![no_main]

use std::sync::LazyLock;

use agent_user::daemon::harness::Harness;
use libfuzzer_sys::fuzz_target;

static H: LazyLock<Harness> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    Harness::new(&dir, rt).expect("harness")
});

fuzz_target!(|data: &[u8]| {
    let Some((&sel, request)) = data.split_first() else {
        return;
    };
    let out = if sel % 2 == 0 {
        H.control(request)
    } else {
        let names = H.identities();
        let who = &names[(sel as usize / 2) % names.len()];
        H.lease(who, request)
    };
    // Whatever came in, an answer is HTTP/1.x (1.0 to a 1.0 request).
    assert!(out.is_empty() || out.starts_with(b"HTTP/1."), "{out:?}");
});
