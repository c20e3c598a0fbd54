//! The audit log's format, shared by the daemon (which writes it) and the
//! CLI (which verifies and queries it offline).
//!
//! `<state-dir>/audit/audit-NNNNNNNN.jsonl`: one JSON record per line,
//! `{"seq", "time", "type", "prev", "body"}`. `prev` is the SHA-256 of the
//! previous line's bytes (the first record of a segment chains to the last
//! of the one before; the very first to 64 zeros), so an edited, deleted,
//! reordered or inserted line breaks the chain at the next one. Types:
//! - `event`: a judged event, lease or anomaly record, policy reload,
//!   operator action or loss record, as on the event stream (`body`);
//! - `checkpoint`: signs `seq` and `prev` with the daemon's audit key
//!   (Ed25519), at intervals and at shutdown;
//! - `start`: a daemon started; names the last checkpoint the previous one
//!   wrote (`previous_checkpoint`), so records removed from the end while
//!   no daemon ran are detected;
//! - `pruned`: retention removed a segment; names its last seq and hash,
//!   which anchor the oldest remaining segment;
//! - `loss`: records that are not in the log, counted: the writer fell
//!   behind the event hub, or could not write (a full disk; then with the
//!   error and the time span, written first once writing works again).

pub mod key;
pub mod query;
pub mod verify;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// File name prefix and suffix of segments; the number is zero-padded so
/// names sort in order.
const SEGMENT_PREFIX: &str = "audit-";
const SEGMENT_SUFFIX: &str = ".jsonl";

/// A record as the writer serialises it: the same fields, in the same
/// order, as `Record`, with the body serialised straight from its own type
/// (an event is not first turned into a `Value`: the writer must keep up
/// with the ring buffer).
#[derive(Serialize)]
pub struct RecordOut<'a, B: Serialize> {
    pub seq: u64,
    pub time: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub prev: &'a str,
    pub body: &'a B,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub seq: u64,
    pub time: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub prev: String,
    pub body: Value,
}

pub fn hash_line(line: &[u8]) -> String {
    hex(&Sha256::digest(line))
}

/// Lower-case hex; once per record on the writer's hot path, so no
/// `format!` per byte.
pub fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(DIGITS[usize::from(x >> 4)] as char);
        s.push(DIGITS[usize::from(x & 0xf)] as char);
    }
    s
}

/// What a checkpoint signs.
pub fn checkpoint_message(seq: u64, prev: &str) -> Vec<u8> {
    format!("corral-audit-checkpoint\0{seq}\0{prev}").into_bytes()
}

pub fn segment_name(n: u64) -> String {
    format!("{SEGMENT_PREFIX}{n:08}{SEGMENT_SUFFIX}")
}

/// The segments in `dir`, oldest first, with their numbers.
pub fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_prefix(SEGMENT_PREFIX)
            .and_then(|r| r.strip_suffix(SEGMENT_SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push((n, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The directory of the audit log under a state dir.
pub fn dir_of(state_dir: &Path) -> PathBuf {
    state_dir.join("audit")
}
