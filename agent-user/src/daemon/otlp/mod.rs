//! OTLP/HTTP log export: every event on the hub, as an OpenTelemetry
//! LogRecord, to a collector. Like the audit writer it is a hub subscriber
//! on a thread and runtime of its own, so a collector that is slow, down or
//! hanging never slows the event reader, enforcement or the API: the cost
//! of an absent collector is a bounded queue and counted losses, never
//! back-pressure.
//!
//! Records are batched (`--otlp-batch` records or `--otlp-flush`, whichever
//! first); a batch that fails with a retryable answer is sent again after
//! an exponential back-off while new records wait in the queue; a batch the
//! collector refuses for good is dropped and counted. Every record that
//! never reaches the collector is counted in `lost` (`corral status`,
//! `corral_otlp_records_lost_total`).

mod http;
mod map;
mod proto;
mod queue;
#[cfg(test)]
mod tests;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use prost::Message as _;
use serde_json::{Value, json};
use tokio::{
    sync::{Notify, broadcast, mpsc, oneshot, watch},
    time::Instant,
};
use tracing::{info, warn};

use self::{
    http::{Client, Endpoint, Header, Outcome},
    proto::Resource,
    queue::{Backoff, Queue},
};
use super::events::{Ready, drain_ready};
use crate::event::Event;

#[derive(Debug, Clone, clap::Args)]
pub struct OtlpArgs {
    /// Export events as OTLP logs (OTLP/HTTP, protobuf) to this collector
    /// URL, e.g. http://127.0.0.1:4318 (`/v1/logs` is added when the URL
    /// has no path). Plain http only. Off unless given.
    #[arg(long, value_name = "URL", value_parser = http::parse_endpoint)]
    pub otlp_endpoint: Option<Endpoint>,
    /// A header for every export request, NAME=VALUE (e.g. authentication);
    /// repeatable. Values are never shown or logged.
    #[arg(long, value_name = "NAME=VALUE", value_parser = http::parse_header)]
    pub otlp_header: Vec<Header>,
    /// Records per export request, at most.
    #[arg(long, value_name = "N", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub otlp_batch: u32,
    /// Longest a record waits for its batch to fill.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub otlp_flush: Duration,
    /// Records kept while the collector is slow or away (besides the batch
    /// being sent); past that the oldest are dropped and counted as lost.
    #[arg(long, value_name = "N", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(1..))]
    pub otlp_queue: u32,
    /// Time one export request may take, connecting included.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub otlp_timeout: Duration,
}

const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long shutdown waits for the last records to go out.
const FINAL_FLUSH: Duration = Duration::from_secs(2);

#[derive(Default, Debug)]
pub struct OtlpStats {
    pub sent: AtomicU64,
    pub lost: AtomicU64,
    /// Waiting plus in flight.
    pub queued: AtomicU64,
    pub requests: AtomicU64,
    pub failed_requests: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

pub struct Otlp {
    endpoint: Endpoint,
    args: OtlpArgs,
    pub stats: Arc<OtlpStats>,
    stop: mpsc::Sender<oneshot::Sender<()>>,
}

impl Otlp {
    /// Starts the exporter on its own thread when an endpoint is given.
    pub fn start(
        args: &OtlpArgs,
        events: broadcast::Receiver<Arc<Event>>,
    ) -> anyhow::Result<Option<Otlp>> {
        let Some(endpoint) = args.otlp_endpoint.clone() else {
            return Ok(None);
        };
        let stats = Arc::new(OtlpStats::default());
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::new(args.otlp_queue as usize)),
            wake: Notify::new(),
            stats: stats.clone(),
            batch: args.otlp_batch as usize,
            // A zero period would make the flush timer panic.
            flush: args.otlp_flush.max(Duration::from_millis(1)),
            timeout: args.otlp_timeout,
            resource: map::resource(),
        });
        let client = Client::new(endpoint.clone(), args.otlp_header.clone());
        let (stop, stop_rx) = mpsc::channel(1);
        super::conn::spawn_isolated("corral-otlp", shared.run(events, stop_rx, client))?;
        info!(%endpoint, "exporting events as OTLP logs");
        Ok(Some(Otlp {
            endpoint,
            args: args.clone(),
            stats,
            stop,
        }))
    }

    /// Sends what is queued, for at most `FINAL_FLUSH`; the rest is lost.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.stop.send(tx).await.is_ok() {
            let _ = tokio::time::timeout(FINAL_FLUSH + Duration::from_secs(1), rx).await;
        }
    }

    pub fn view(&self) -> Value {
        let s = &self.stats;
        let names: Vec<&str> = self.args.otlp_header.iter().map(|h| h.0.as_str()).collect();
        json!({
            "endpoint": self.endpoint.to_string(),
            "headers": names,
            "batch": self.args.otlp_batch,
            "flush_ms": self.args.otlp_flush.as_millis() as u64,
            "queue_capacity": self.args.otlp_queue,
            "queued": s.queued.load(Ordering::Relaxed),
            "sent": s.sent.load(Ordering::Relaxed),
            "lost": s.lost.load(Ordering::Relaxed),
            "requests": s.requests.load(Ordering::Relaxed),
            "failed_requests": s.failed_requests.load(Ordering::Relaxed),
            "last_error": *s.last_error.lock().expect("otlp stats"),
        })
    }
}

/// An event waiting to be sent. Kept as the hub's shared event rather than
/// as its LogRecord (several times the size): a full queue of 65536 is
/// tens of MB, not hundreds.
struct Pending {
    ev: Arc<Event>,
    observed: SystemTime,
}

struct Shared {
    queue: Mutex<Queue<Pending>>,
    /// A full batch is waiting.
    wake: Notify,
    stats: Arc<OtlpStats>,
    batch: usize,
    flush: Duration,
    timeout: Duration,
    resource: Resource,
}

impl Shared {
    /// Takes events from the hub while the sender (polled in the same
    /// select) talks to the collector: one task, no locks held across
    /// awaits.
    async fn run(
        self: Arc<Self>,
        mut events: broadcast::Receiver<Arc<Event>>,
        mut stop: mpsc::Receiver<oneshot::Sender<()>>,
        client: Client,
    ) {
        let (closing_tx, closing) = watch::channel(None);
        let sender = self.clone().send_loop(client, closing);
        tokio::pin!(sender);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(ev) => self.enqueue(ev),
                    Err(broadcast::error::RecvError::Lagged(n)) => self.missed(n),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                done = stop.recv() => {
                    // What the hub already holds goes out with the rest.
                    drain_ready(&mut events, usize::MAX, |r| match r {
                        Ready::Event(ev) => self.enqueue(ev),
                        Ready::Missed(n) => self.missed(n),
                    });
                    let _ = closing_tx.send(Some(Instant::now() + FINAL_FLUSH));
                    (&mut sender).await;
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
                () = &mut sender => return,
            }
        }
    }

    fn enqueue(&self, ev: Arc<Event>) {
        let observed = SystemTime::now();
        let mut q = self.queue.lock().expect("otlp queue");
        let dropped = q.push(Pending { ev, observed });
        let full_batch = q.len() >= self.batch;
        drop(q);
        if dropped > 0 {
            self.stats.lost.fetch_add(dropped, Ordering::Relaxed);
        } else {
            self.stats.queued.fetch_add(1, Ordering::Relaxed);
        }
        if full_batch {
            self.wake.notify_one();
        }
    }

    /// The exporter fell behind the hub: counted, and said in the stream
    /// itself so the collector's view has no silent gap.
    fn missed(&self, n: u64) {
        self.stats.lost.fetch_add(n, Ordering::Relaxed);
        warn!(lost = n, "OTLP exporter fell behind the event stream");
        let now = crate::clock::now_rfc3339();
        self.enqueue(Arc::new(Event::lost(
            now,
            n,
            "otlp exporter behind the event hub",
        )));
    }

    async fn send_loop(
        self: Arc<Self>,
        mut client: Client,
        mut closing: watch::Receiver<Option<Instant>>,
    ) {
        let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX);
        let mut failing = false;
        let mut tick = tokio::time::interval(self.flush);
        loop {
            let deadline = *closing.borrow();
            // A backlog (after an outage) goes out at the collector's pace,
            // not one batch per flush interval.
            let backlog = self.queue.lock().expect("otlp queue").len() >= self.batch;
            if deadline.is_none() && !backlog {
                tokio::select! {
                    () = self.wake.notified() => {}
                    _ = tick.tick() => {}
                    _ = closing.changed() => {}
                }
            }
            let deadline = *closing.borrow();
            let batch = self.queue.lock().expect("otlp queue").take(self.batch);
            if batch.is_empty() {
                if deadline.is_some() {
                    return;
                }
                continue;
            }
            let n = batch.len() as u64;
            let records = batch.iter().map(|p| map::record(&p.ev, p.observed));
            let body = Bytes::from(map::request(&self.resource, records.collect()).encode_to_vec());
            let mut attempt = Attempt {
                shared: &self,
                client: &mut client,
                backoff: &mut backoff,
                closing: &mut closing,
                failing: &mut failing,
            };
            attempt.export(body, n).await;
            self.stats.queued.fetch_sub(n, Ordering::Relaxed);
            if let Some(d) = *closing.borrow()
                && Instant::now() >= d
            {
                self.give_up_at_shutdown();
                return;
            }
        }
    }

    fn give_up_at_shutdown(&self) {
        let left = self
            .queue
            .lock()
            .expect("otlp queue")
            .take(usize::MAX)
            .len() as u64;
        if left > 0 {
            self.stats.lost.fetch_add(left, Ordering::Relaxed);
            self.stats.queued.fetch_sub(left, Ordering::Relaxed);
            warn!(lost = left, "OTLP: records not exported before shutdown");
        }
    }

    fn note_error(&self, why: &str) {
        self.stats.failed_requests.fetch_add(1, Ordering::Relaxed);
        *self.stats.last_error.lock().expect("otlp stats") = Some(why.to_string());
    }
}

/// One batch's way to the collector, retries included.
struct Attempt<'a> {
    shared: &'a Shared,
    client: &'a mut Client,
    backoff: &'a mut Backoff,
    closing: &'a mut watch::Receiver<Option<Instant>>,
    /// Whether the last attempt failed: warnings on changes, not per retry.
    failing: &'a mut bool,
}

impl Attempt<'_> {
    async fn export(&mut self, body: Bytes, n: u64) {
        let stats = &self.shared.stats;
        loop {
            let deadline = *self.closing.borrow();
            let timeout = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => self.shared.timeout,
            };
            stats.requests.fetch_add(1, Ordering::Relaxed);
            let outcome = self.client.export(body.clone(), timeout).await;
            let (after, why) = match outcome {
                Outcome::Sent { rejected } => {
                    let rejected = rejected.min(n);
                    stats.sent.fetch_add(n - rejected, Ordering::Relaxed);
                    stats.lost.fetch_add(rejected, Ordering::Relaxed);
                    if *self.failing {
                        info!("OTLP export recovered");
                        *self.failing = false;
                    }
                    self.backoff.reset();
                    return;
                }
                Outcome::Drop { why } => {
                    stats.lost.fetch_add(n, Ordering::Relaxed);
                    self.shared.note_error(&why);
                    if !*self.failing {
                        warn!(records = n, "OTLP export refused, batch dropped: {why}");
                    }
                    *self.failing = true;
                    return;
                }
                Outcome::Retry { after, why } => (after, why),
            };
            self.shared.note_error(&why);
            if !*self.failing {
                warn!("OTLP export failing, retrying with back-off: {why}");
                *self.failing = true;
            }
            let delay = self.backoff.delay(after);
            if let Some(d) = deadline
                && Instant::now() + delay >= d
            {
                stats.lost.fetch_add(n, Ordering::Relaxed);
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                // Shutdown: one more try now, within the final deadline.
                _ = self.closing.changed() => {}
            }
        }
    }
}
