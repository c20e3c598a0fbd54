//! A policy file's text through the loader, the checks and every compiler
//! (network tables with and without lease grants, `[files]` entries).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = agent_user::daemon::harness::compile_policy(text);
    }
});
