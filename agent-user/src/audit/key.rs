//! The audit checkpoint key: Ed25519, the daemon's own (not the lease
//! signing key, so either can be rotated alone). The private half stays in
//! the audit dir (0600); the public half (`checkpoint-key.pub.pem`) is
//! meant to be copied off the host, where `corral audit verify --pubkey`
//! uses it: a key read from the same directory as the log only proves the
//! log was not changed by someone without that key.

use std::{
    fs,
    path::{Path, PathBuf},
};

use ed25519_dalek::{
    Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey,
    pkcs8::{
        DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _,
    },
};

pub const KEY_FILE: &str = "checkpoint-key.pem";
pub const PUB_FILE: &str = "checkpoint-key.pub.pem";

pub struct AuditKey(SigningKey);

impl AuditKey {
    /// Loads the key in `dir`, or makes and saves a new one.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<AuditKey> {
        let path = dir.join(KEY_FILE);
        if path.exists() {
            let pem = fs::read_to_string(&path)?;
            let k = SigningKey::from_pkcs8_pem(&pem)
                .map_err(|e| anyhow::anyhow!("{}: not an Ed25519 key: {e}", path.display()))?;
            return Ok(AuditKey(k));
        }
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("random: {e}"))?;
        let k = SigningKey::from_bytes(&seed);
        let pem = k
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|e| anyhow::anyhow!("encoding the audit key: {e}"))?;
        let save = |p: &Path, bytes: &[u8], mode| {
            crate::fsutil::write_atomic(p, bytes, mode)
                .map_err(|(p, e)| anyhow::anyhow!("writing {}: {e}", p.display()))
        };
        save(&path, pem.as_bytes(), 0o600)?;
        save(
            &dir.join(PUB_FILE),
            public_pem(&k.verifying_key())?.as_bytes(),
            0o644,
        )?;
        Ok(AuditKey(k))
    }

    pub fn sign(&self, msg: &[u8]) -> String {
        super::hex(&self.0.sign(msg).to_bytes())
    }

    pub fn public(&self) -> VerifyingKey {
        self.0.verifying_key()
    }
}

pub fn public_pem(k: &VerifyingKey) -> anyhow::Result<String> {
    k.to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding the audit public key: {e}"))
}

pub fn load_public(path: &Path) -> anyhow::Result<VerifyingKey> {
    let pem =
        fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    VerifyingKey::from_public_key_pem(&pem)
        .map_err(|e| anyhow::anyhow!("{}: not an Ed25519 public key: {e}", path.display()))
}

pub fn default_public(dir: &Path) -> PathBuf {
    dir.join(PUB_FILE)
}

pub fn verify(k: &VerifyingKey, msg: &[u8], sig_hex: &str) -> bool {
    let Some(bytes) = unhex(sig_hex) else {
        return false;
    };
    let Ok(arr) = <[u8; 64]>::try_from(bytes.as_slice()) else {
        return false;
    };
    k.verify(msg, &Signature::from_bytes(&arr)).is_ok()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
