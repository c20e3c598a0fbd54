//! The host signing key and lease tokens.
//!
//! A token is a JWT (RFC 7519) in compact JWS form (RFC 7515) signed with
//! the host's Ed25519 key (`alg: EdDSA`, RFC 8037), so any JWT library or API
//! gateway verifies it offline with the public key alone; the key is
//! published as SPKI PEM and as a JWK (`kid` = its RFC 7638 thumbprint).
//! Ed25519 signatures are deterministic: the same lease always yields the
//! same token, so tokens are never stored, only re-signed.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use ed25519_dalek::{
    Signature, Signer as _, SigningKey, VerifyingKey,
    pkcs8::{
        DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _,
        spki::der::pem::LineEnding,
    },
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not an Ed25519 PKCS#8 PEM private key: {why}")]
    Parse { path: String, why: String },
    #[error("{path} is readable by others (mode {mode:o}); it must be 0600")]
    Mode { path: String, mode: u32 },
    #[error("no randomness for a new key: {0}")]
    Random(String),
}

/// Why a token is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("not a compact JWS (header.payload.signature): {0}")]
    Malformed(String),
    #[error("algorithm `{0}` is not accepted (only EdDSA)")]
    Alg(String),
    #[error("signed by another key (kid {token}, this key is {key})")]
    OtherKey { token: String, key: String },
    #[error("bad signature")]
    Signature,
    #[error("expired at {exp} (now {now})")]
    Expired { exp: u64, now: u64 },
    #[error("not valid before {nbf} (now {now})")]
    NotYet { nbf: u64, now: u64 },
}

/// What a lease token says. Times are seconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// `corral@<host>`.
    pub iss: String,
    /// The identity the lease belongs to.
    pub sub: String,
    /// The lease id.
    pub jti: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub host: String,
    pub identity: String,
    pub cgroup_id: u64,
    pub scopes: Vec<String>,
}

pub struct HostKey {
    key: SigningKey,
    public: PublicKey,
}

impl HostKey {
    /// A fresh random key.
    pub fn generate() -> Result<HostKey, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(HostKey::from_signing(SigningKey::from_bytes(&seed)))
    }

    /// A key from a fixed seed: the fuzz targets sign their seed tokens
    /// with it (never a daemon's key).
    #[doc(hidden)]
    pub fn from_seed(seed: [u8; 32]) -> HostKey {
        HostKey::from_signing(SigningKey::from_bytes(&seed))
    }

    fn from_signing(key: SigningKey) -> HostKey {
        let public = PublicKey::new(key.verifying_key());
        HostKey { key, public }
    }

    /// Reads a key written by [`HostKey::save`]; refuses one others can read.
    pub fn load(path: &Path) -> Result<HostKey, KeyError> {
        let p = path.display().to_string();
        let io = |source| KeyError::Io {
            path: p.clone(),
            source,
        };
        let mode = fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Mode { path: p, mode });
        }
        let pem = fs::read_to_string(path).map_err(io)?;
        let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| KeyError::Parse {
            path: p.clone(),
            why: e.to_string(),
        })?;
        Ok(HostKey::from_signing(key))
    }

    /// Writes the key (PKCS#8 PEM, mode 0600, never over an existing file)
    /// and its public half beside it (`.pub.pem`, 0644).
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let p = path.display().to_string();
        let io = |source| KeyError::Io {
            path: p.clone(),
            source,
        };
        let pem = self
            .key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::Parse {
                path: p.clone(),
                why: e.to_string(),
            })?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        f.write_all(pem.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        let pub_path = path.with_extension("pub.pem");
        fs::write(&pub_path, self.public.to_pem()).map_err(|source| KeyError::Io {
            path: pub_path.display().to_string(),
            source,
        })?;
        Ok(())
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let header = json!({ "alg": "EdDSA", "typ": "JWT", "kid": self.public.kid });
        let h = B64.encode(serde_json::to_vec(&header).expect("json"));
        let c = B64.encode(serde_json::to_vec(claims).expect("json"));
        let input = format!("{h}.{c}");
        let sig = self.key.sign(input.as_bytes());
        format!("{input}.{}", B64.encode(sig.to_bytes()))
    }
}

#[derive(Clone)]
pub struct PublicKey {
    key: VerifyingKey,
    /// RFC 7638 JWK thumbprint (SHA-256, base64url).
    pub kid: String,
}

impl PublicKey {
    fn new(key: VerifyingKey) -> PublicKey {
        let x = B64.encode(key.as_bytes());
        // Members in lexicographic order, no spaces (RFC 7638 §3).
        let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        let kid = B64.encode(Sha256::digest(canonical.as_bytes()));
        PublicKey { key, kid }
    }

    /// SPKI PEM (`-----BEGIN PUBLIC KEY-----`), what most gateways take.
    pub fn to_pem(&self) -> String {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .expect("an Ed25519 key always encodes")
    }

    /// The key as a JWK (RFC 8037 OKP).
    pub fn to_jwk(&self) -> Value {
        json!({
            "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
            "kid": self.kid, "x": B64.encode(self.key.as_bytes()),
        })
    }

    /// Reads a public key given as SPKI PEM, a JWK, or a JWK set (the first
    /// Ed25519 key, or the one whose `kid` is `kid`).
    pub fn parse(text: &str, kid: Option<&str>) -> Result<PublicKey, String> {
        let t = text.trim();
        if t.starts_with("-----BEGIN") {
            return VerifyingKey::from_public_key_pem(t)
                .map(PublicKey::new)
                .map_err(|e| format!("not an Ed25519 SPKI PEM public key: {e}"));
        }
        let v: Value =
            serde_json::from_str(t).map_err(|e| format!("neither PEM nor JWK JSON: {e}"))?;
        let keys: Vec<&Value> = match v.get("keys").and_then(Value::as_array) {
            Some(ks) => ks.iter().collect(),
            None => vec![&v],
        };
        let okp = keys
            .into_iter()
            .filter(|k| k["kty"] == "OKP" && k["crv"] == "Ed25519")
            .find(|k| kid.is_none_or(|want| k["kid"] == want))
            .ok_or("no Ed25519 (OKP) key in the JWK set")?;
        let x = okp["x"].as_str().ok_or("JWK without `x`")?;
        let bytes: [u8; 32] = B64
            .decode(x)
            .map_err(|e| format!("bad JWK `x`: {e}"))?
            .try_into()
            .map_err(|_| "JWK `x` is not 32 bytes".to_string())?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey::new)
            .map_err(|e| format!("bad Ed25519 key: {e}"))
    }

    /// Checks signature, algorithm and validity period at `now` (seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, VerifyError> {
        let claims = self.verify_signature(token)?;
        if now >= claims.exp {
            return Err(VerifyError::Expired {
                exp: claims.exp,
                now,
            });
        }
        if now < claims.nbf {
            return Err(VerifyError::NotYet {
                nbf: claims.nbf,
                now,
            });
        }
        Ok(claims)
    }

    /// Checks signature and algorithm only.
    pub fn verify_signature(&self, token: &str) -> Result<Claims, VerifyError> {
        let bad = |m: &str| VerifyError::Malformed(m.to_string());
        let mut parts = token.trim().split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected three dot-separated parts"));
        };
        let header: Value = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| bad("header is not base64url JSON"))?;
        let alg = header["alg"].as_str().unwrap_or("");
        // Only EdDSA: never "none", never an HMAC keyed with this public key.
        if alg != "EdDSA" {
            return Err(VerifyError::Alg(alg.to_string()));
        }
        if let Some(kid) = header["kid"].as_str()
            && kid != self.kid
        {
            return Err(VerifyError::OtherKey {
                token: kid.to_string(),
                key: self.kid.clone(),
            });
        }
        let sig: [u8; 64] = B64
            .decode(s)
            .map_err(|_| bad("signature is not base64url"))?
            .try_into()
            .map_err(|_| bad("signature is not 64 bytes"))?;
        let input = &token.trim()[..h.len() + 1 + c.len()];
        self.key
            .verify_strict(input.as_bytes(), &Signature::from_bytes(&sig))
            .map_err(|_| VerifyError::Signature)?;
        let payload = B64.decode(c).map_err(|_| bad("payload is not base64url"))?;
        serde_json::from_slice(&payload).map_err(|e| VerifyError::Malformed(format!("claims: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            iss: "corral@h".into(),
            sub: "agent".into(),
            jti: "abc".into(),
            iat: 100,
            nbf: 100,
            exp,
            host: "h".into(),
            identity: "agent".into(),
            cgroup_id: 42,
            scopes: vec!["tickets:read".into()],
        }
    }

    #[test]
    fn sign_verify_tamper_expire() {
        let k = HostKey::generate().expect("key");
        let t = k.sign(&claims(200));
        assert_eq!(k.sign(&claims(200)), t, "deterministic");
        let pem = PublicKey::parse(&k.public().to_pem(), None).expect("pem");
        let jwk = PublicKey::parse(&k.public().to_jwk().to_string(), None).expect("jwk");
        assert_eq!(pem.kid, k.public().kid);
        assert_eq!(pem.verify(&t, 150).expect("valid"), claims(200));
        assert_eq!(jwk.verify(&t, 150).expect("valid"), claims(200));
        assert!(matches!(
            pem.verify(&t, 200),
            Err(VerifyError::Expired { .. })
        ));
        assert!(matches!(
            pem.verify(&t, 99),
            Err(VerifyError::NotYet { .. })
        ));
        // Tampered claims (a wider scope) keep the old signature: refused.
        let parts: Vec<&str> = t.split('.').collect();
        let mut c = claims(200);
        c.scopes.push("refunds:issue".into());
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(serde_json::to_vec(&c).unwrap()),
            parts[2]
        );
        assert_eq!(pem.verify(&forged, 150), Err(VerifyError::Signature));
        // alg confusion.
        let none = format!("{}.{}.", B64.encode(br#"{"alg":"none"}"#), parts[1]);
        assert_eq!(pem.verify(&none, 150), Err(VerifyError::Alg("none".into())));
        // Another host's key.
        let other = HostKey::generate().expect("key");
        assert!(matches!(
            other.public().verify(&t, 150),
            Err(VerifyError::OtherKey { .. })
        ));
    }

    #[test]
    fn key_file_roundtrip_and_mode() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("k.pem");
        let k = HostKey::generate().expect("key");
        k.save(&p).expect("save");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            HostKey::load(&p).expect("load").public().kid,
            k.public().kid
        );
        assert!(k.save(&p).is_err(), "never overwrites");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(HostKey::load(&p), Err(KeyError::Mode { .. })));
    }

    /// Prints sign and verify rates (`cargo test --release -- --nocapture`).
    #[test]
    fn sign_and_verify_rate() {
        let k = HostKey::generate().expect("key");
        let n = if cfg!(debug_assertions) { 200 } else { 20_000 };
        let start = Instant::now();
        let tokens: Vec<String> = (0..n).map(|i| k.sign(&claims(1000 + i))).collect();
        let sign = n as f64 / start.elapsed().as_secs_f64();
        let start = Instant::now();
        for t in &tokens {
            k.public().verify(t, 500).expect("valid");
        }
        let verify = n as f64 / start.elapsed().as_secs_f64();
        eprintln!("lease tokens: {sign:.0} signed/s, {verify:.0} verified/s (one core)");
    }
}
