//! The writer thread of the audit log (`super` has the why). Lines are
//! buffered in memory and written in whole: when a write fails (a full
//! disk), the buffered records are dropped, the segment is cut back to its
//! last complete line and the chain head rewinds to it, so what is on disk
//! always verifies. The writer then stops writing, counts what it could not
//! write, says so once on the event stream, retries every flush interval,
//! and once writing works again its first record is a `loss` record naming
//! how many records are missing and why: a gap in the log is never silent.

use std::{
    fs::{self, File, OpenOptions},
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{error, info, warn};

use super::{AuditArgs, AuditStats, Failing};
use crate::{
    audit::{
        self, GENESIS, Record, RecordOut, checkpoint_message, hash_line, key::AuditKey,
        segment_name,
    },
    clock::now_rfc3339,
    daemon::events::{Ready, drain_ready},
    event::Event,
};

const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Written out before the interval when this much is buffered.
const BUF_MAX: usize = 64 * 1024;
/// Free space a failing log waits for before it writes again: a full
/// filesystem often still takes a short line into a partly used block,
/// and flapping between failing and recovered would say nothing.
/// Twice the buffer: cutting back a failed write frees at most about one.
const RECOVER_MIN_FREE: u64 = 2 * BUF_MAX as u64;
const STATE_FILE: &str = "state.json";

/// The end of the chain: its next seq, the last record's hash and type,
/// and the current segment's length with it.
#[derive(Clone)]
struct Head {
    seq: u64,
    hash: String,
    kind: String,
    len: u64,
}

pub(super) struct Writer {
    dir: PathBuf,
    args: AuditArgs,
    stats: Arc<AuditStats>,
    key: AuditKey,
    /// Where the writer's own notices (failing, recovered) go.
    hub: broadcast::Sender<Arc<Event>>,
    seg: u64,
    file: File,
    seg_opened: Instant,
    /// Complete lines not yet written.
    buf: Vec<u8>,
    /// The chain with the buffered lines.
    head: Head,
    /// The chain as written to the file.
    written: Head,
    failing: Option<Failing>,
}

impl Writer {
    pub(super) fn open(
        dir: PathBuf,
        args: AuditArgs,
        stats: Arc<AuditStats>,
        hub: broadcast::Sender<Arc<Event>>,
    ) -> anyhow::Result<Writer> {
        let key = AuditKey::load_or_create(&dir)?;
        let segs = audit::segments(&dir)?;
        let seg = segs.last().map_or(0, |(n, _)| *n);
        let (tail, cut) = newest_record(&segs)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(segment_name(seg)))?;
        let len = file.metadata()?.len();
        stats
            .segments
            .store(segs.len().max(1) as u64, Ordering::Relaxed);
        let head = match &tail {
            Some((rec, hash)) => Head {
                seq: rec.seq + 1,
                hash: hash.clone(),
                kind: rec.kind.clone(),
                len,
            },
            None => Head {
                seq: 0,
                hash: GENESIS.to_string(),
                kind: String::new(),
                len,
            },
        };
        let mut w = Writer {
            dir,
            args,
            stats,
            key,
            hub,
            seg,
            file,
            seg_opened: Instant::now(),
            buf: Vec::new(),
            written: head.clone(),
            head,
            failing: None,
        };
        let previous: Value = fs::read(w.dir.join(STATE_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let run = match &tail {
            None => "none",
            Some(_) if w.head.kind == "checkpoint" => "clean",
            Some(_) => "unclean",
        };
        w.append(
            "start",
            json!({
                "pid": std::process::id(),
                "version": env!("CARGO_PKG_VERSION"),
                "previous_checkpoint": previous["checkpoint"],
                "previous_run": run,
                "partial_line_dropped_bytes": cut,
            }),
        );
        // A full disk at start-up does not keep the daemon from enforcing:
        // the writer starts out failing instead.
        w.flush();
        Ok(w)
    }

    pub(super) async fn run(
        &mut self,
        mut events: broadcast::Receiver<Arc<Event>>,
        mut stop: mpsc::Receiver<oneshot::Sender<()>>,
    ) {
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        let mut checkpoint = tokio::time::interval(self.args.audit_checkpoint_every);
        checkpoint.tick().await;
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(ev) => self.events(&ev, &mut events),
                    Err(broadcast::error::RecvError::Lagged(n)) => self.lagged(n),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = flush.tick() => {
                    if self.failing.is_some() {
                        self.recover();
                    } else {
                        self.flush();
                    }
                }
                _ = checkpoint.tick() => self.checkpoint(),
                done = stop.recv() => {
                    // What the hub already holds goes in before the seal.
                    self.drain(&mut events, usize::MAX);
                    self.recover();
                    self.checkpoint();
                    info!(seq = self.head.seq, "audit log sealed with a checkpoint");
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
            }
        }
    }

    /// `first` and whatever else the hub already holds (up to a batch):
    /// one wake-up and one clock read per batch, not per event.
    fn events(&mut self, first: &Event, rx: &mut broadcast::Receiver<Arc<Event>>) {
        const BATCH: usize = 4096;
        let time = now_rfc3339();
        self.write_event(first, &time);
        self.drain_at(rx, BATCH - 1, &time);
    }

    fn drain(&mut self, rx: &mut broadcast::Receiver<Arc<Event>>, max: usize) {
        self.drain_at(rx, max, &now_rfc3339());
    }

    fn drain_at(&mut self, rx: &mut broadcast::Receiver<Arc<Event>>, max: usize, time: &str) {
        drain_ready(rx, max, |r| match r {
            Ready::Event(ev) => self.write_event(&ev, time),
            Ready::Missed(n) => self.lagged(n),
        });
    }

    fn write_event(&mut self, ev: &Event, time: &str) {
        if self.failing.is_some() {
            self.skip(1);
            return;
        }
        self.append_with(time, "event", ev);
        self.after_append();
    }

    fn lagged(&mut self, n: u64) {
        warn!(lost = n, "audit log fell behind the event stream");
        if self.failing.is_some() {
            // Part of the gap the recovery's `loss` record declares.
            self.skip(n);
            return;
        }
        self.stats.lost.fetch_add(n, Ordering::Relaxed);
        self.write(
            "loss",
            json!({ "count": n, "source": "audit writer behind the event hub" }),
        );
    }

    /// One record, unless writing is failing: then it is only counted (the
    /// `loss` record written on recovery declares it).
    fn write(&mut self, kind: &str, body: Value) {
        if self.failing.is_some() {
            self.skip(1);
            return;
        }
        self.append(kind, body);
        self.after_append();
    }

    fn after_append(&mut self) {
        if self.buf.len() >= BUF_MAX {
            self.flush();
        }
        if self.failing.is_none()
            && (self.head.len >= self.args.audit_segment_bytes
                || self.seg_opened.elapsed() >= self.args.audit_segment_age)
            && let Err(e) = self.rotate()
        {
            self.note("rotating", &e);
        }
    }

    /// Counts `n` records the failing writer does not write.
    fn skip(&mut self, n: u64) {
        let Some(f) = &mut self.failing else {
            return;
        };
        f.not_written += n;
        self.stats.lost.fetch_add(n, Ordering::Relaxed);
        self.stats.not_written.fetch_add(n, Ordering::Relaxed);
        if let Some(s) = self.stats.failing.lock().expect("audit stats").as_mut() {
            s.not_written = f.not_written;
        }
    }

    /// Chains a record onto the buffer.
    fn append(&mut self, kind: &str, body: Value) {
        self.append_with(&now_rfc3339(), kind, &body);
    }

    /// Serialises straight into the write buffer and hashes the bytes
    /// there: no per-record allocation beyond the hash's hex.
    fn append_with<B: serde::Serialize>(&mut self, time: &str, kind: &str, body: &B) {
        let start = self.buf.len();
        let rec = RecordOut {
            seq: self.head.seq,
            time,
            kind,
            prev: &self.head.hash,
            body,
        };
        if serde_json::to_writer(&mut self.buf, &rec).is_err() {
            self.buf.truncate(start);
            return;
        }
        self.head.hash = hash_line(&self.buf[start..]);
        self.buf.push(b'\n');
        if self.head.kind != kind {
            kind.clone_into(&mut self.head.kind);
        }
        self.head.seq += 1;
        self.head.len += (self.buf.len() - start) as u64;
    }

    /// Writes the buffer. On failure the buffered records are dropped and
    /// the segment cut back to the last line written whole (a full disk
    /// may take part of a write), so the file still verifies; the writer
    /// is failing from then on. Returns whether everything is written.
    fn flush(&mut self) -> bool {
        if self.buf.is_empty() {
            return true;
        }
        match self.file.write_all(&self.buf) {
            Ok(()) => {
                let n = self.head.seq - self.written.seq;
                self.stats.records.fetch_add(n, Ordering::Relaxed);
                let bytes = self.buf.len() as u64;
                self.stats.bytes.fetch_add(bytes, Ordering::Relaxed);
                self.buf.clear();
                self.written = self.head.clone();
                true
            }
            Err(e) => {
                let dropped = self.head.seq - self.written.seq;
                self.buf.clear();
                self.head = self.written.clone();
                if let Err(t) = self.file.set_len(self.written.len) {
                    // Retried before the next write (`recover`).
                    self.note("cutting back a partial write to", &t);
                }
                self.start_failing(&e, dropped);
                false
            }
        }
    }

    fn start_failing(&mut self, e: &std::io::Error, dropped: u64) {
        self.note("writing", e);
        if self.failing.is_some() {
            // The retry's own `loss` record: already accounted for.
            return;
        }
        let why = io_text(e);
        error!(
            dropped,
            "the audit log cannot be written ({why}); enforcement goes on, records are counted \
             until writing works again"
        );
        self.stats.lost.fetch_add(dropped, Ordering::Relaxed);
        self.stats.not_written.fetch_add(dropped, Ordering::Relaxed);
        let f = Failing {
            since: now_rfc3339(),
            error: why,
            not_written: dropped,
        };
        self.notify(
            json!({ "action": "write-failing", "error": f.error, "since": f.since,
            "not_written": dropped, "dir": self.dir }),
        );
        *self.stats.failing.lock().expect("audit stats") = Some(f.clone());
        self.failing = Some(f);
    }

    /// While failing: once there is room again, the `loss` record for what
    /// was not written goes first; then the writer is back.
    fn recover(&mut self) {
        let Some(f) = self.failing.clone() else {
            return;
        };
        if free_bytes(&self.dir).is_some_and(|b| b < RECOVER_MIN_FREE) {
            return;
        }
        if let Err(e) = self.file.set_len(self.written.len) {
            self.note("cutting back a partial write to", &e);
            return;
        }
        let until = now_rfc3339();
        self.append(
            "loss",
            json!({ "count": f.not_written, "source": "audit log write failed",
                "error": f.error, "since": f.since, "until": until }),
        );
        if !self.flush() {
            return;
        }
        self.failing = None;
        *self.stats.failing.lock().expect("audit stats") = None;
        info!(
            not_written = f.not_written,
            "the audit log is written again; a loss record declares the gap"
        );
        self.notify(
            json!({ "action": "write-recovered", "error": f.error, "since": f.since,
            "until": until, "not_written": f.not_written, "dir": self.dir }),
        );
    }

    /// An `audit` event on the stream (and so, when it can be, in the log).
    fn notify(&self, detail: Value) {
        let mut ev = Event::notice(crate::event::EventKind::Audit, now_rfc3339());
        ev.audit = Some(detail);
        let _ = self.hub.send(Arc::new(ev));
    }

    /// Counts an error for `corral status`; logs the first of a series.
    fn note(&self, what: &str, e: &dyn std::fmt::Display) {
        let n = self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        let msg = format!("{what} the audit log: {e}");
        if n.is_multiple_of(1000) {
            warn!("{msg}");
        }
        *self.stats.last_error.lock().expect("audit stats") = Some(msg);
    }

    fn checkpoint(&mut self) {
        if self.failing.is_some() {
            return;
        }
        let sig = self
            .key
            .sign(&checkpoint_message(self.head.seq, &self.head.hash));
        let at = (self.head.seq, self.head.hash.clone());
        self.append("checkpoint", json!({ "sig": sig, "alg": "Ed25519" }));
        if !self.flush() {
            return;
        }
        if let Err(e) = self.file.sync_data() {
            self.note("syncing", &e);
            return;
        }
        self.stats
            .last_checkpoint_seq
            .store(at.0, Ordering::Relaxed);
        let state = json!({ "checkpoint": { "seq": at.0, "prev": at.1 } });
        let saved = crate::fsutil::write_atomic(
            &self.dir.join(STATE_FILE),
            state.to_string().as_bytes(),
            0o600,
        );
        if let Err((_, e)) = saved {
            self.note("saving the checkpoint state of", &e);
        }
    }

    /// Next segment; then retention, recorded before the file goes.
    fn rotate(&mut self) -> std::io::Result<()> {
        if !self.flush() {
            return Ok(());
        }
        self.file.sync_data()?;
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(segment_name(self.seg + 1)))?;
        self.seg += 1;
        self.file = f;
        self.head.len = 0;
        self.written.len = 0;
        self.seg_opened = Instant::now();
        let segs = audit::segments(&self.dir)?;
        self.stats
            .segments
            .store(segs.len() as u64, Ordering::Relaxed);
        let excess = segs
            .len()
            .saturating_sub(self.args.audit_retain_segments.max(2));
        for (_, path) in segs.iter().take(excess) {
            let (tail, _) = last_record(path)?;
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            if let Some((rec, hash)) = tail {
                self.append(
                    "pruned",
                    json!({ "segment": name, "last_seq": rec.seq, "last_hash": hash }),
                );
            }
            // Only once the log says so does the segment go.
            if !self.flush() {
                return Ok(());
            }
            fs::remove_file(path)?;
        }
        self.stats
            .segments
            .store((segs.len() - excess) as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// An I/O error as people read it: "No space left on device", without
/// the "(os error 28)".
fn io_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Bytes root may still write on the filesystem of `dir`.
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    Some((s.blocks_free() as u64).saturating_mul(s.fragment_size() as u64))
}

/// A record and the hash of its line.
type Tail = Option<(Record, String)>;

/// The newest record, even when the newest segment is still empty, and the
/// bytes of partial lines cut off on the way.
fn newest_record(segs: &[(u64, PathBuf)]) -> std::io::Result<(Tail, u64)> {
    let mut cut = 0;
    for (_, path) in segs.iter().rev() {
        let (t, c) = last_record(path)?;
        cut += c;
        if t.is_some() {
            return Ok((t, cut));
        }
    }
    Ok((None, cut))
}

/// The last complete record of a segment and its hash; a partial last
/// line (a crash mid-write) is cut off, and its length returned.
fn last_record(path: &std::path::Path) -> std::io::Result<(Tail, u64)> {
    let mut f = OpenOptions::new().read(true).write(true).open(path)?;
    let mut text = Vec::new();
    f.read_to_end(&mut text)?;
    let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let cut = (text.len() - keep) as u64;
    if cut > 0 {
        f.set_len(keep as u64)?;
        f.seek(SeekFrom::End(0))?;
    }
    let body = &text[..keep];
    let last = body
        .strip_suffix(b"\n")
        .unwrap_or(body)
        .rsplit(|&b| b == b'\n')
        .next()
        .filter(|l| !l.is_empty());
    let tail = last.and_then(|l| {
        serde_json::from_slice::<Record>(l)
            .ok()
            .map(|r| (r, hash_line(l)))
    });
    Ok((tail, cut))
}

#[cfg(test)]
mod speed {
    use super::*;

    /// The writer's own cost per record, on one core with nothing else
    /// running; `cargo xtask bench connect` runs it and prints the number
    /// beside the sustained rates. Asserts only that every record was
    /// written.
    #[test]
    #[ignore = "measurement: prints ns per record"]
    fn audit_writer_cost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (hub, _rx) = broadcast::channel(16);
        let stats = Arc::new(AuditStats::default());
        let mut w =
            Writer::open(dir.path().into(), AuditArgs::default(), stats, hub).expect("open");
        let ev: Event = serde_json::from_str(
            r#"{"schema":1,"time":"2026-12-05T21:50:01.123456789Z","kind":"net","identity":"flood",
            "identity_id":3,"verdict":"deny","mode":"enforce","reason":"no-rule","pid":4242,
            "tgid":4242,"ppid":4200,"comm":"corral-bench","exe":"/work/main/target/release/corral-bench",
            "cgroup":"corral/flood","cgroup_id":12345,"net":{"op":"connect","family":"inet",
            "protocol":"udp","type":"dgram","addr":"127.0.0.1","port":9999},"leases":[]}"#,
        )
        .expect("event");
        const N: u64 = 500_000;
        let seq0 = w.head.seq;
        let t = Instant::now();
        let time = now_rfc3339();
        for _ in 0..N {
            w.write_event(&ev, &time);
        }
        w.flush();
        let ns = t.elapsed().as_nanos() as f64 / N as f64;
        println!(
            "audit writer: {ns:.0} ns per record, {:.0} records/s",
            1e9 / ns
        );
        assert_eq!(w.head.seq - seq0, N);
    }
}
