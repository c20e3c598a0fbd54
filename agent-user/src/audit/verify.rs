//! `corral audit verify`: checks the chain and the checkpoint signatures of
//! an audit directory offline, and names the first bad record.

use std::{collections::HashMap, path::Path};

use ed25519_dalek::VerifyingKey;
use serde::Serialize;

use super::{GENESIS, Record, checkpoint_message, hash_line, key, segments};

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub segments: usize,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub checkpoints: u64,
    pub starts: u64,
    /// Starts after a run that ended without a checkpoint (a crash, or
    /// SIGKILL): what it wrote after its last checkpoint is unsigned.
    pub unclean_starts: u64,
    pub pruned_segments: u64,
    /// Records the daemon could not put in the log, as its `loss` records
    /// declare them (the writer fell behind, or the disk was full): the
    /// chain is whole, the history has these gaps.
    pub lost_records: u64,
    /// One line per `loss` record: where, how many, why.
    pub losses: Vec<String>,
    /// Records after the last checkpoint: the live tail of a running
    /// daemon, or what a crash left.
    pub unsigned_tail: u64,
    /// The first problem found, `segment:line (seq N): why`.
    pub error: Option<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// Where a record sits, for messages.
struct At<'a> {
    file: &'a str,
    line: usize,
    seq: u64,
}

impl std::fmt::Display for At<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{} (seq {})", self.file, self.line, self.seq)
    }
}

pub fn verify(dir: &Path, public: &VerifyingKey) -> std::io::Result<Report> {
    let mut r = Report::default();
    let segs = segments(dir)?;
    r.segments = segs.len();
    let mut last: Option<(u64, String)> = None;
    // Where the last good record sits: an edit shows up as the next
    // record's broken link, so the message names both.
    let mut last_at = String::new();
    // The oldest record's predecessor, when retention removed it.
    let mut anchor: Option<(u64, String)> = None;
    let mut checkpoints: HashMap<u64, String> = HashMap::new();
    let mut since_checkpoint = 0u64;
    for (_, path) in &segs {
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read(path)?;
        for (i, line) in text.split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let rec: Record = match serde_json::from_slice(line) {
                Ok(rec) => rec,
                Err(e) => {
                    r.error = Some(format!("{file}:{}: not an audit record: {e}", i + 1));
                    return Ok(r);
                }
            };
            let at = At {
                file: &file,
                line: i + 1,
                seq: rec.seq,
            };
            if let Err(why) = check_link(&rec, last.as_ref(), &mut anchor) {
                r.error = Some(format!("{at}: {why} (the record before: {last_at})"));
                return Ok(r);
            }
            if let Err(why) = check_kind(&rec, public, &checkpoints, r.first_seq) {
                r.error = Some(format!("{at}: {why}"));
                return Ok(r);
            }
            if count(&mut r, &rec, &at) {
                checkpoints.insert(rec.seq, rec.prev.clone());
                since_checkpoint = 0;
            } else {
                since_checkpoint += 1;
            }
            if let Some((seq, hash)) = &anchor
                && rec.kind == "pruned"
                && rec.body["last_seq"].as_u64() == Some(*seq)
                && rec.body["last_hash"].as_str() == Some(hash.as_str())
            {
                anchor = None;
            }
            r.first_seq.get_or_insert(rec.seq);
            r.last_seq = Some(rec.seq);
            r.records += 1;
            last = Some((rec.seq, hash_line(line)));
            last_at = format!("{file}:{}", i + 1);
        }
    }
    if let Some((seq, _)) = anchor {
        r.error = Some(format!(
            "the oldest record (seq {}) chains to seq {seq}, which is not in the log and no \
             `pruned` record accounts for it: a segment was removed",
            seq + 1
        ));
    }
    r.unsigned_tail = since_checkpoint;
    Ok(r)
}

/// Counts `rec` in the report by its kind; `true` for a checkpoint.
fn count(r: &mut Report, rec: &Record, at: &At<'_>) -> bool {
    match rec.kind.as_str() {
        "checkpoint" => {
            r.checkpoints += 1;
            return true;
        }
        "start" => {
            r.starts += 1;
            if rec.body["previous_run"] == "unclean" {
                r.unclean_starts += 1;
            }
        }
        "pruned" => r.pruned_segments += 1,
        "loss" => {
            r.lost_records += rec.body["count"].as_u64().unwrap_or(0);
            r.losses.push(loss_line(at, rec));
        }
        _ => {}
    }
    false
}

fn loss_line(at: &At<'_>, rec: &Record) -> String {
    let b = &rec.body;
    let mut s = format!(
        "{at}: {} records not written ({})",
        b["count"],
        b["source"].as_str().unwrap_or("?")
    );
    if let Some(e) = b["error"].as_str() {
        s.push_str(&format!(": {e}"));
    }
    if let (Some(from), Some(to)) = (b["since"].as_str(), b["until"].as_str()) {
        s.push_str(&format!(", from {from} to {to}"));
    }
    s
}

/// `seq` follows, `prev` is the hash of the line before.
fn check_link(
    rec: &Record,
    last: Option<&(u64, String)>,
    anchor: &mut Option<(u64, String)>,
) -> Result<(), String> {
    match last {
        None if rec.seq == 0 => (rec.prev == GENESIS)
            .then_some(())
            .ok_or_else(|| "the first record does not start the chain".to_string()),
        None => {
            // Older segments were pruned: a later `pruned` record must name
            // exactly this predecessor.
            *anchor = Some((rec.seq - 1, rec.prev.clone()));
            Ok(())
        }
        Some((seq, hash)) => {
            if rec.seq != seq + 1 {
                return Err(format!(
                    "expected seq {}: records were removed, inserted or reordered",
                    seq + 1
                ));
            }
            if rec.prev != *hash {
                return Err(
                    "does not chain to the record before it: that record was edited, or \
                     records were removed or reordered"
                        .to_string(),
                );
            }
            Ok(())
        }
    }
}

fn check_kind(
    rec: &Record,
    public: &VerifyingKey,
    checkpoints: &HashMap<u64, String>,
    first_seq: Option<u64>,
) -> Result<(), String> {
    match rec.kind.as_str() {
        "checkpoint" => {
            let sig = rec.body["sig"].as_str().unwrap_or("");
            key::verify(public, &checkpoint_message(rec.seq, &rec.prev), sig)
                .then_some(())
                .ok_or_else(|| "checkpoint signature does not verify with this key".to_string())
        }
        "start" => {
            let prev = &rec.body["previous_checkpoint"];
            let (Some(seq), Some(hash)) = (prev["seq"].as_u64(), prev["prev"].as_str()) else {
                return Ok(());
            };
            // Pruned away: nothing left to compare with.
            if first_seq.is_none_or(|f| seq < f) {
                return Ok(());
            }
            match checkpoints.get(&seq) {
                Some(h) if h == hash => Ok(()),
                _ => Err(format!(
                    "the previous daemon's last checkpoint (seq {seq}) is not in the log: \
                     records were removed from its end while no daemon ran"
                )),
            }
        }
        "event" | "pruned" | "loss" => Ok(()),
        other => Err(format!("unknown record type `{other}`")),
    }
}
