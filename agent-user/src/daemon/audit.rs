//! The audit log writer (format: `crate::audit`). It subscribes to the
//! event hub like any client, so every judged event, lease and anomaly
//! record, policy reload, operator action and loss record is written
//! whether or not anyone else listens, on a thread of its own: file I/O
//! never waits on, or makes wait, the kernel path. A subscriber that falls
//! behind is told how much it missed, and the log records that as a `loss`
//! record: never a silent gap.
//!
//! Durability: lines are buffered and written every second; a checkpoint
//! (every `checkpoint_every` and at shutdown) is fsync'ed with its segment
//! and noted in `state.json`, so a crash of the daemon loses at most the
//! last second (what the kernel already has survives a SIGKILL; a power
//! loss may also take what was not yet fsync'ed), and the next start says
//! whether the previous run ended with a checkpoint.
//!
//! A full disk: the writer stops writing, the kernel path and the event
//! stream go on as before, `corral status` and an `audit` event say so,
//! and a `loss` record declares the gap once writing works again
//! (`writer`).

mod writer;

use std::{
    fs,
    os::unix::fs::DirBuilderExt as _,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::{audit, event::Event};

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

#[derive(Default, Debug)]
pub struct AuditStats {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    /// Records not in the log: the writer fell behind the hub, or could
    /// not write (`not_written`).
    pub lost: AtomicU64,
    pub not_written: AtomicU64,
    /// Set while writes fail (a full disk).
    pub failing: Mutex<Option<Failing>>,
    pub segments: AtomicU64,
    pub last_checkpoint_seq: AtomicU64,
    pub write_errors: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

/// The log cannot be written: since when, why, and how many records it
/// has not written since.
#[derive(Debug, Clone, Serialize)]
pub struct Failing {
    pub since: String,
    pub error: String,
    pub not_written: u64,
}

pub struct Audit {
    pub dir: PathBuf,
    pub args: AuditArgs,
    pub stats: Arc<AuditStats>,
    stop: mpsc::Sender<oneshot::Sender<()>>,
}

impl Audit {
    /// Opens the log in `state_dir/audit` (writing a `start` record) and
    /// starts the writer on its own thread, subscribed to `hub` (where it
    /// also says when writing fails and recovers).
    pub fn start(
        state_dir: &std::path::Path,
        args: AuditArgs,
        hub: &broadcast::Sender<Arc<Event>>,
    ) -> anyhow::Result<Audit> {
        let dir = audit::dir_of(state_dir);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let stats = Arc::new(AuditStats::default());
        let events = hub.subscribe();
        let mut w = writer::Writer::open(dir.clone(), args.clone(), stats.clone(), hub.clone())?;
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
            "not_written": s.not_written.load(Ordering::Relaxed),
            "failing": *s.failing.lock().expect("audit stats"),
            "write_errors": s.write_errors.load(Ordering::Relaxed),
            "last_error": *s.last_error.lock().expect("audit stats"),
            "segment_bytes": self.args.audit_segment_bytes,
            "segment_age_s": self.args.audit_segment_age.as_secs(),
            "retain_segments": self.args.audit_retain_segments,
            "checkpoint_every_s": self.args.audit_checkpoint_every.as_secs(),
        })
    }
}
