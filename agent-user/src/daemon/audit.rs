//! The audit log writer (format: `crate::audit`). It subscribes to the
//! event hub like any client, so every judged event, lease and anomaly
//! record, policy reload, operator action and loss record is written
//! whether or not anyone else listens, on a thread of its own: file I/O
//! never waits on, or makes wait, the kernel path. A subscriber that falls
//! behind is told how much it missed, and the log records that as a `loss`
//! record: never a silent gap.
//!
//! Durability: lines are buffered and flushed every `flush_every`; a
//! checkpoint (every `checkpoint_every` and at shutdown) is fsync'ed with
//! its segment and noted in `state.json`, so a crash loses at most the
//! unflushed tail, and the next start says whether the previous run ended
//! with a checkpoint.

use std::{
    fs::{self, File, OpenOptions},
    io::{BufWriter, Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::fs::DirBuilderExt as _,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{error, info, warn};

use super::events::now_rfc3339;
use crate::{
    audit::{self, GENESIS, Record, checkpoint_message, hash_line, key::AuditKey, segment_name},
    event::Event,
};

#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// Start a new audit segment past this size (bytes).
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub audit_segment_bytes: u64,
    /// Start a new audit segment after this long.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub audit_segment_age: Duration,
    /// Audit segments kept; older ones are removed (each removal is
    /// recorded in the log).
    #[arg(long, default_value_t = 48)]
    pub audit_retain_segments: usize,
    /// How often a signed checkpoint is written (and the log fsync'ed).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub audit_checkpoint_every: Duration,
}

impl Default for AuditArgs {
    fn default() -> AuditArgs {
        AuditArgs {
            audit_segment_bytes: 64 * 1024 * 1024,
            audit_segment_age: Duration::from_secs(3600),
            audit_retain_segments: 48,
            audit_checkpoint_every: Duration::from_secs(60),
        }
    }
}

const FLUSH_EVERY: Duration = Duration::from_secs(1);

#[derive(Default, Debug)]
pub struct AuditStats {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub lost: AtomicU64,
    pub segments: AtomicU64,
    pub last_checkpoint_seq: AtomicU64,
    pub write_errors: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

pub struct Audit {
    pub dir: PathBuf,
    pub args: AuditArgs,
    pub stats: Arc<AuditStats>,
    stop: mpsc::Sender<oneshot::Sender<()>>,
}

impl Audit {
    /// Opens the log in `state_dir/audit` (writing a `start` record) and
    /// starts the writer on its own thread.
    pub fn start(
        state_dir: &std::path::Path,
        args: AuditArgs,
        events: broadcast::Receiver<Arc<Event>>,
    ) -> anyhow::Result<Audit> {
        let dir = audit::dir_of(state_dir);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let stats = Arc::new(AuditStats::default());
        let mut w = Writer::open(dir.clone(), args.clone(), stats.clone())?;
        let (stop, stop_rx) = mpsc::channel(1);
        super::conn::spawn_isolated("corral-audit", async move {
            w.run(events, stop_rx).await;
        })?;
        Ok(Audit {
            dir,
            args,
            stats,
            stop,
        })
    }

    /// Writes the final checkpoint; waits for it (bounded).
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.stop.send(tx).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
    }

    pub fn view(&self) -> Value {
        let s = &self.stats;
        json!({
            "dir": self.dir,
            "records": s.records.load(Ordering::Relaxed),
            "bytes": s.bytes.load(Ordering::Relaxed),
            "lost": s.lost.load(Ordering::Relaxed),
            "segments": s.segments.load(Ordering::Relaxed),
            "last_checkpoint_seq": s.last_checkpoint_seq.load(Ordering::Relaxed),
            "write_errors": s.write_errors.load(Ordering::Relaxed),
            "last_error": *s.last_error.lock().expect("audit stats"),
            "segment_bytes": self.args.audit_segment_bytes,
            "segment_age_s": self.args.audit_segment_age.as_secs(),
            "retain_segments": self.args.audit_retain_segments,
            "checkpoint_every_s": self.args.audit_checkpoint_every.as_secs(),
        })
    }
}

struct Writer {
    dir: PathBuf,
    args: AuditArgs,
    stats: Arc<AuditStats>,
    key: AuditKey,
    seg: u64,
    file: BufWriter<File>,
    seg_bytes: u64,
    seg_opened: Instant,
    seq: u64,
    last_hash: String,
    /// Kind of the last record written (a clean stop ends on a checkpoint).
    last_kind: String,
}

const STATE_FILE: &str = "state.json";

impl Writer {
    fn open(dir: PathBuf, args: AuditArgs, stats: Arc<AuditStats>) -> anyhow::Result<Writer> {
        let key = AuditKey::load_or_create(&dir)?;
        let segs = audit::segments(&dir)?;
        let seg = segs.last().map_or(0, |(n, _)| *n);
        // The newest record, even when the newest segment is still empty.
        let (mut tail, mut cut) = (None, 0);
        for (_, path) in segs.iter().rev() {
            let (t, c) = last_record(path)?;
            cut += c;
            if t.is_some() {
                tail = t;
                break;
            }
        }
        let path = dir.join(segment_name(seg));
        let f = OpenOptions::new().create(true).append(true).open(&path)?;
        let len = f.metadata()?.len();
        stats
            .segments
            .store(segs.len().max(1) as u64, Ordering::Relaxed);
        let (seq, last_hash, last_kind) = match &tail {
            Some((rec, hash)) => (rec.seq + 1, hash.clone(), rec.kind.clone()),
            None => (0, GENESIS.to_string(), String::new()),
        };
        let mut w = Writer {
            dir,
            args,
            stats,
            key,
            seg,
            file: BufWriter::new(f),
            seg_bytes: len,
            seg_opened: Instant::now(),
            seq,
            last_hash,
            last_kind,
        };
        let previous: Value = fs::read(w.dir.join(STATE_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let clean = tail.is_none() || w.last_kind == "checkpoint";
        w.append(
            "start",
            json!({
                "pid": std::process::id(),
                "version": env!("CARGO_PKG_VERSION"),
                "previous_checkpoint": previous["checkpoint"],
                "previous_run": if tail.is_none() { "none" } else if clean { "clean" } else { "unclean" },
                "partial_line_dropped_bytes": cut,
            }),
        )?;
        w.file.flush()?;
        Ok(w)
    }

    async fn run(
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
                    Ok(ev) => {
                        let body = serde_json::to_value(&*ev).unwrap_or(Value::Null);
                        self.write("event", body);
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        self.stats.lost.fetch_add(n, Ordering::Relaxed);
                        warn!(lost = n, "audit log fell behind the event stream");
                        self.write("loss", json!({ "count": n, "source": "audit writer behind the event hub" }));
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = flush.tick() => {
                    if let Err(e) = self.file.flush() {
                        self.failed("flushing", &e);
                    }
                }
                _ = checkpoint.tick() => self.checkpoint(),
                done = stop.recv() => {
                    // What the hub already holds goes in before the seal.
                    loop {
                        match events.try_recv() {
                            Ok(ev) => {
                                let body = serde_json::to_value(&*ev).unwrap_or(Value::Null);
                                self.write("event", body);
                            }
                            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                                self.stats.lost.fetch_add(n, Ordering::Relaxed);
                                self.write("loss", json!({ "count": n, "source": "audit writer behind the event hub" }));
                            }
                            Err(_) => break,
                        }
                    }
                    self.checkpoint();
                    info!(seq = self.seq, "audit log sealed with a checkpoint");
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
            }
        }
    }

    /// Appends, reporting failures (a full disk) without ever blocking the
    /// event path for long: the record is counted as lost.
    fn write(&mut self, kind: &str, body: Value) {
        if let Err(e) = self.append(kind, body) {
            self.stats.lost.fetch_add(1, Ordering::Relaxed);
            self.failed("writing", &e);
        }
    }

    fn failed(&self, what: &str, e: &dyn std::fmt::Display) {
        let n = self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        let msg = format!("{what} the audit log: {e}");
        if n.is_multiple_of(1000) {
            error!("{msg}");
        }
        *self.stats.last_error.lock().expect("audit stats") = Some(msg);
    }

    fn append(&mut self, kind: &str, body: Value) -> std::io::Result<()> {
        let rec = Record {
            seq: self.seq,
            time: now_rfc3339(),
            kind: kind.to_string(),
            prev: self.last_hash.clone(),
            body,
        };
        let mut line = serde_json::to_vec(&rec).map_err(std::io::Error::other)?;
        let hash = hash_line(&line);
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.last_hash = hash;
        self.last_kind = rec.kind;
        self.seq += 1;
        self.seg_bytes += line.len() as u64;
        self.stats.records.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes
            .fetch_add(line.len() as u64, Ordering::Relaxed);
        if kind != "checkpoint"
            && (self.seg_bytes >= self.args.audit_segment_bytes
                || self.seg_opened.elapsed() >= self.args.audit_segment_age)
        {
            self.rotate()?;
        }
        Ok(())
    }

    fn checkpoint(&mut self) {
        let sig = self
            .key
            .sign(&checkpoint_message(self.seq, &self.last_hash));
        let at = (self.seq, self.last_hash.clone());
        let r = self
            .append("checkpoint", json!({ "sig": sig, "alg": "Ed25519" }))
            .and_then(|()| self.file.flush())
            .and_then(|()| self.file.get_ref().sync_data());
        match r {
            Ok(()) => {
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
                    self.failed("saving the checkpoint state of", &e);
                }
            }
            Err(e) => self.failed("checkpointing", &e),
        }
    }

    /// Next segment; then retention, recorded before the file goes.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_data()?;
        self.seg += 1;
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(segment_name(self.seg)))?;
        self.file = BufWriter::new(f);
        self.seg_bytes = 0;
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
                )?;
            }
            self.file.flush()?;
            fs::remove_file(path)?;
        }
        self.stats
            .segments
            .store((segs.len() - excess) as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// The last complete record of a segment and its hash; a partial last
/// line (a crash mid-write) is cut off, and its length returned.
fn last_record(path: &std::path::Path) -> std::io::Result<(Option<(Record, String)>, u64)> {
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
