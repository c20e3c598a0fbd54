//! Launch tokens: how a Landlock domain is bound to its identity. The
//! launcher names its child with a token before `landlock_restrict_self`,
//! and the domain's first audit record carries that name. 15 characters
//! (a task name's length): the identity, a nonce, and a MAC under a key
//! only the daemon reads, so an agent cannot make its own domains pass
//! for another identity's.

use sha2::{Digest as _, Sha256};

const B62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

pub struct Tokens {
    key: [u8; 32],
}

impl Tokens {
    pub fn new(key: [u8; 32]) -> Tokens {
        Tokens { key }
    }

    pub fn issue(&self, identity: u32) -> String {
        let mut nonce = [0u8; 4];
        let _ = getrandom::fill(&mut nonce);
        let nonce = u32::from_ne_bytes(nonce) % 62u32.pow(3);
        format!(
            "{}{}{}",
            b62(identity.into(), 4),
            b62(nonce.into(), 3),
            self.mac(identity, nonce)
        )
    }

    /// The identity a token was issued for.
    pub fn verify(&self, comm: &str) -> Option<u32> {
        if comm.len() != 15 || !comm.is_ascii() {
            return None;
        }
        let id = un62(&comm[..4])? as u32;
        let nonce = un62(&comm[4..7])? as u32;
        (self.mac(id, nonce) == comm[7..]).then_some(id)
    }

    fn mac(&self, identity: u32, nonce: u32) -> String {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update(identity.to_le_bytes());
        h.update(nonce.to_le_bytes());
        let d = h.finalize();
        b62(u64::from_le_bytes(d[..8].try_into().unwrap()), 8)
    }
}

fn b62(mut v: u64, width: usize) -> String {
    let mut out = vec![b'0'; width];
    for c in out.iter_mut().rev() {
        *c = B62[(v % 62) as usize];
        v /= 62;
    }
    String::from_utf8(out).unwrap()
}

fn un62(s: &str) -> Option<u64> {
    s.bytes().try_fold(0u64, |a, c| {
        let d = B62.iter().position(|&b| b == c)? as u64;
        Some(a * 62 + d)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_identity_and_cannot_be_bent() {
        let s = Tokens::new([7; 32]);
        let t = s.issue(4242);
        assert_eq!(t.len(), 15);
        assert_eq!(s.verify(&t), Some(4242));
        let mut forged = t.clone().into_bytes();
        forged[3] = if forged[3] == b'1' { b'2' } else { b'1' };
        assert_eq!(s.verify(std::str::from_utf8(&forged).unwrap()), None);
        assert_eq!(Tokens::new([8; 32]).verify(&t), None);
        assert_eq!(s.verify("python3"), None);
    }

    #[test]
    fn base62_round_trips() {
        for v in [0u64, 1, 61, 62, 238_327, 14_776_335] {
            assert_eq!(un62(&b62(v, 4)), Some(v));
        }
    }
}
