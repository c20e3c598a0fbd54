//! Correlating denials with leases, and spotting bursts of denials.
//!
//! The event reader calls [`Watch::observe`] for every decoded event before
//! fan-out. It stamps denials with the leases that were live for the
//! identity at the event's kernel time, keeps a bounded ring of recent
//! denials per lease, and counts denials per identity in a sliding window;
//! crossing `[anomaly] max_denials` sends a [`Trip`] to the lease manager,
//! which carries out the configured actions.

use std::{
    collections::{HashMap, VecDeque},
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio::sync::{mpsc, watch};

use crate::{
    daemon::snapshot::Snapshot,
    event::{Event, EventVerdict, LeaseRef},
};

/// Recent denials kept per lease for `corral lease show`.
pub const RING: usize = 64;
/// How long an ended lease is still matched against late events.
const SPAN_GRACE_MS: u64 = 10 * 60 * 1000;

#[derive(Debug, Clone)]
pub struct Span {
    pub id: String,
    pub scopes: Vec<String>,
    pub start_ms: u64,
    /// Expiry, or revocation: whichever came first.
    pub end_ms: u64,
}

#[derive(Default)]
struct Inner {
    spans: HashMap<String, Vec<Span>>,
    rings: HashMap<String, VecDeque<Arc<Event>>>,
    /// Denials per lease not yet written to the store.
    unsaved: HashMap<String, u64>,
    windows: HashMap<String, VecDeque<u64>>,
    /// Kernel time of each identity's last trip: one response per window
    /// (denials already in flight when the agent froze do not trip again).
    tripped: HashMap<String, u64>,
}

/// Shared by the event reader (writer of rings and windows) and the lease
/// service (writer of spans, reader of rings).
#[derive(Default)]
pub struct Correlator {
    inner: Mutex<Inner>,
}

impl Correlator {
    /// Replaces the spans of `identity` (the lease service calls this after
    /// every change).
    pub fn set_spans(&self, identity: &str, spans: Vec<Span>) {
        let mut g = self.inner.lock().expect("correlator lock");
        g.spans.insert(identity.to_string(), spans);
    }

    /// Drops spans and rings of leases that ended long before `now_ms`.
    pub fn prune(&self, now_ms: u64) {
        let mut g = self.inner.lock().expect("correlator lock");
        let mut gone = Vec::new();
        for spans in g.spans.values_mut() {
            spans.retain(|s| {
                let keep = s.end_ms.saturating_add(SPAN_GRACE_MS) > now_ms;
                if !keep {
                    gone.push(s.id.clone());
                }
                keep
            });
        }
        for id in gone {
            g.rings.remove(&id);
        }
    }

    pub fn recent(&self, lease: &str) -> Vec<Arc<Event>> {
        let g = self.inner.lock().expect("correlator lock");
        g.rings
            .get(lease)
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Denials of `lease` not yet written to the store.
    pub fn unsaved(&self, lease: &str) -> u64 {
        let g = self.inner.lock().expect("correlator lock");
        g.unsaved.get(lease).copied().unwrap_or(0)
    }

    /// Denial counts per lease since the last call.
    pub fn take_counts(&self) -> HashMap<String, u64> {
        std::mem::take(&mut self.inner.lock().expect("correlator lock").unsaved)
    }

    /// Restarts the denial window of `identity` and re-arms it (on thaw).
    pub fn reset_window(&self, identity: &str) {
        let mut g = self.inner.lock().expect("correlator lock");
        g.windows.remove(identity);
        g.tripped.remove(identity);
    }
}

/// A crossed threshold.
#[derive(Debug, Clone)]
pub struct Trip {
    pub identity: String,
    pub denials: usize,
    pub max_denials: u32,
    pub window_ms: u64,
    /// Kernel time (`CLOCK_BOOTTIME` ns) of the denial that crossed it.
    pub boot_ns: u64,
    pub detected: Instant,
}

pub struct Watch {
    pub corr: Arc<Correlator>,
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub trips: mpsc::UnboundedSender<Trip>,
}

fn ms_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Watch {
    /// Stamps `ev` with the identity's live leases at its kernel time, and
    /// counts it if it is a denial.
    pub fn observe(&self, ev: &mut Event, wall: SystemTime, boot_ns: u64) {
        let (Some(identity), Some(verdict)) = (ev.identity.clone(), ev.verdict) else {
            return;
        };
        let denied = verdict == EventVerdict::Deny;
        let t = ms_of(wall);
        let mut g = self.corr.inner.lock().expect("correlator lock");
        let live: Vec<LeaseRef> = g
            .spans
            .get(&identity)
            .into_iter()
            .flatten()
            .filter(|s| s.start_ms <= t && t < s.end_ms)
            .map(|s| LeaseRef {
                id: s.id.clone(),
                scopes: s.scopes.clone(),
            })
            .collect();
        ev.leases = Some(live.clone());
        if !denied {
            return;
        }
        if !live.is_empty() {
            let shared = Arc::new(ev.clone());
            for l in &live {
                let ring = g.rings.entry(l.id.clone()).or_default();
                if ring.len() == RING {
                    ring.pop_front();
                }
                ring.push_back(shared.clone());
                *g.unsaved.entry(l.id.clone()).or_default() += 1;
            }
        }
        let snap = self.snapshot.borrow().clone();
        let Some(a) = snap
            .by_name(&identity)
            .and_then(|v| v.policy.as_ref())
            .and_then(|p| p.anomaly.clone())
        else {
            return;
        };
        let window_ns = a.window_ms.saturating_mul(1_000_000);
        if g.tripped
            .get(&identity)
            .is_some_and(|&t| boot_ns < t.saturating_add(window_ns))
        {
            return;
        }
        let w = g.windows.entry(identity.clone()).or_default();
        w.push_back(boot_ns);
        while w
            .front()
            .is_some_and(|&f| f.saturating_add(window_ns) < boot_ns)
        {
            w.pop_front();
        }
        if w.len() > a.max_denials as usize {
            let denials = w.len();
            w.clear();
            g.tripped.insert(identity.clone(), boot_ns);
            let _ = self.trips.send(Trip {
                identity,
                denials,
                max_denials: a.max_denials,
                window_ms: a.window_ms,
                boot_ns,
                detected: Instant::now(),
            });
        }
    }
}

/// Writes `cgroup.freeze` of each cgroup; returns the ones that failed.
pub fn set_frozen(cgroups: &[PathBuf], frozen: bool) -> Vec<(PathBuf, String)> {
    cgroups
        .iter()
        .filter_map(|c| {
            crate::cgroup::set_frozen(c, frozen)
                .err()
                .map(|e| (c.clone(), e.to_string()))
        })
        .collect()
}

/// Whether `cgroup.events` says `frozen 1`.
pub fn is_frozen(cgroup: &Path) -> bool {
    fs::read_to_string(cgroup.join("cgroup.events"))
        .map(|s| s.lines().any(|l| l.trim() == "frozen 1"))
        .unwrap_or(false)
}

/// Polls until every cgroup reports frozen (the kernel freezes tasks
/// asynchronously), or `timeout`; returns whether they all did.
pub fn wait_frozen(cgroups: &[PathBuf], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cgroups.iter().all(|c| is_frozen(c)) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}
