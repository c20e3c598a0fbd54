//! Lease tokens and public keys as an agent or `corral lease verify` could
//! hand them in. First byte: what to parse; the rest: the text.
#![no_main]

use std::sync::LazyLock;

use agent_user::daemon::lease::token::{HostKey, PublicKey};
use libfuzzer_sys::fuzz_target;

/// The key the seed tokens were signed with (`fuzz/README.md`).
static KEY: LazyLock<HostKey> = LazyLock::new(|| HostKey::from_seed([7; 32]));

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match mode % 3 {
        0 => {
            if let Ok(c) = KEY.public().verify(&text, 1_800_000_000) {
                // Only what this key signed verifies: the claims are sane.
                assert!(c.nbf <= 1_800_000_000 && 1_800_000_000 < c.exp);
            }
        }
        1 => {
            let _ = KEY.public().verify_signature(&text);
        }
        _ => {
            if let Ok(k) = PublicKey::parse(&text, None) {
                let _ = k.verify(&text, 0);
                let _ = k.to_jwk();
            }
        }
    }
});
