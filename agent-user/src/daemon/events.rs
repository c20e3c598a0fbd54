//! Reads the kernel ring buffer, decodes and enriches events, and fans them
//! out. A slow subscriber lags (and is told how many it missed) without
//! slowing the reader or the other subscribers.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{broadcast, watch},
};
use tracing::{debug, warn};

use super::snapshot::Snapshot;
use crate::clock::{BootToWall, now_rfc3339};
use crate::event::{self, Event, EventKind, Raw, RawBody, SCHEMA};

/// Counters any reader can see (`corral status`).
#[derive(Debug, Default)]
pub struct EventStats {
    pub received: AtomicU64,
    pub decode_errors: AtomicU64,
    /// Ring buffer reservations that failed in the kernel (events lost).
    pub kernel_lost: AtomicU64,
}

pub struct Hub {
    pub tx: broadcast::Sender<Arc<Event>>,
    pub stats: Arc<EventStats>,
}

impl Hub {
    pub fn new() -> Hub {
        let (tx, _) = broadcast::channel(65536);
        Hub {
            tx,
            stats: Arc::default(),
        }
    }
}

/// What a process looks like, cached briefly: procfs reads are the most
/// expensive part of handling an event.
#[derive(Clone)]
struct ProcInfo {
    exe: Option<String>,
    ppid: Option<u32>,
    cgroup: Option<String>,
    at: Instant,
}

const PROC_CACHE_TTL: Duration = Duration::from_secs(2);
const PROC_CACHE_MAX: usize = 4096;

/// Cgroup paths (relative to the v2 root, as `/proc/PID/cgroup` gives them)
/// by the kernel's cgroup id in the event: the cgroup the task was in when
/// it was judged, known even after the task exited or moved.
#[derive(Default)]
struct CgroupNames {
    root: Option<std::path::PathBuf>,
    by_id: HashMap<u64, Option<String>>,
}

/// Directories one miss may look at below an identity's cgroups.
const CGROUP_WALK_LIMIT: usize = 4096;

impl CgroupNames {
    fn name(&mut self, id: u64, view: Option<&super::snapshot::IdentityView>) -> Option<String> {
        if let Some(n) = self.by_id.get(&id) {
            return n.clone();
        }
        let view = view?;
        let root = match &self.root {
            Some(r) => r.clone(),
            None => {
                let r = crate::cgroup::cgroup2_root().ok()?;
                self.root = Some(r.clone());
                r
            }
        };
        let found = std::iter::once(&view.cgroup)
            .chain(&view.assigned)
            .find_map(|c| crate::cgroup::find_by_id(c, id, CGROUP_WALK_LIMIT))
            .and_then(|p| {
                let rel = p.strip_prefix(&root).ok()?;
                Some(format!("/{}", rel.display()))
            });
        if self.by_id.len() > PROC_CACHE_MAX {
            self.by_id.clear();
        }
        // A miss is remembered too: a cgroup made later gets a new id.
        self.by_id.insert(id, found.clone());
        found
    }
}

pub async fn run(
    ring: RingBuf<MapData>,
    mut reports: tokio::sync::mpsc::Receiver<super::reports::Report>,
    drops: PerCpuArray<MapData, u64>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    tx: broadcast::Sender<Arc<Event>>,
    stats: Arc<EventStats>,
    // Lease correlation and anomaly counting (`lease::Watch::observe`).
    leases: Option<Arc<super::lease::Watch>>,
) -> anyhow::Result<()> {
    // SAFETY: the ring buffer's fd stays open for as long as the AsyncFd,
    // which owns the ring buffer.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("registering the ring buffer: {e}"))?;
    let mut cache: HashMap<u32, ProcInfo> = HashMap::new();
    let mut cgroups = CgroupNames::default();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last_drops = sum_drops(&drops);
    if last_drops > 0 {
        stats.kernel_lost.store(last_drops, Ordering::Relaxed);
    }
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                let ring = guard.get_inner_mut();
                let snap = snapshot.borrow().clone();
                let clock = BootToWall::now();
                while let Some(item) = ring.next() {
                    stats.received.fetch_add(1, Ordering::Relaxed);
                    match Raw::decode(&item) {
                        Ok(raw) => {
                            let mut ev = enrich(&raw, &snap, &clock, &mut cache, &mut cgroups);
                            if let Some(w) = &leases {
                                w.observe(&mut ev, clock.wall(raw.hdr.ts_ns), raw.hdr.ts_ns);
                            }
                            let _ = tx.send(Arc::new(ev));
                        }
                        Err(e) => {
                            stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                            debug!("undecodable event: {e}");
                        }
                    }
                }
                guard.clear_ready();
            }
            Some(r) = reports.recv() => {
                match r {
                    super::reports::Report::Event(bytes) => {
                        stats.received.fetch_add(1, Ordering::Relaxed);
                        if let Ok(raw) = Raw::decode(&bytes) {
                            let snap = snapshot.borrow().clone();
                            let clock = BootToWall::now();
                            let mut ev = enrich(&raw, &snap, &clock, &mut cache, &mut cgroups);
                            // The leases held then, like the kernel's events.
                            if let Some(w) = &leases {
                                w.observe(&mut ev, clock.wall(raw.hdr.ts_ns), raw.hdr.ts_ns);
                            }
                            let _ = tx.send(Arc::new(ev));
                        }
                    }
                    super::reports::Report::Lost(n, source) => {
                        warn!(lost = n, source, "events were lost before they reached the daemon");
                        let _ = tx.send(Arc::new(Event::lost(now_rfc3339(), n, source)));
                    }
                }
            }
            _ = tick.tick() => {
                let now = sum_drops(&drops);
                if now > last_drops {
                    let lost = now - last_drops;
                    warn!(lost, "kernel ring buffer was full: events lost");
                    stats.kernel_lost.store(now, Ordering::Relaxed);
                    let _ = tx.send(Arc::new(Event::lost(now_rfc3339(), lost, "kernel")));
                    last_drops = now;
                }
                if cache.len() > PROC_CACHE_MAX {
                    cache.retain(|_, p| p.at.elapsed() < PROC_CACHE_TTL);
                }
            }
        }
    }
}

fn sum_drops(m: &PerCpuArray<MapData, u64>) -> u64 {
    m.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0)
}

/// What a hub subscriber is handed without waiting.
pub enum Ready {
    Event(Arc<Event>),
    /// The subscriber fell this many events behind; they are gone.
    Missed(u64),
}

/// Hands `each` what the hub already holds for `rx`, at most `max` items,
/// without waiting: how subscribers take a batch per wake-up, and how they
/// leave nothing already published behind at shutdown.
pub fn drain_ready(
    rx: &mut broadcast::Receiver<Arc<Event>>,
    max: usize,
    mut each: impl FnMut(Ready),
) {
    for _ in 0..max {
        match rx.try_recv() {
            Ok(ev) => each(Ready::Event(ev)),
            Err(broadcast::error::TryRecvError::Lagged(n)) => each(Ready::Missed(n)),
            Err(_) => return,
        }
    }
}

fn proc_info(tgid: u32, cache: &mut HashMap<u32, ProcInfo>) -> ProcInfo {
    if let Some(p) = cache.get(&tgid)
        && p.at.elapsed() < PROC_CACHE_TTL
    {
        return p.clone();
    }
    let exe = std::fs::read_link(format!("/proc/{tgid}/exe"))
        .ok()
        .map(|p| p.display().to_string());
    let ppid = procfs::process::Process::new(tgid as i32)
        .and_then(|p| p.stat())
        .ok()
        .map(|s| s.ppid as u32);
    let cgroup = crate::cgroup::of_pid(tgid).ok();
    let info = ProcInfo {
        exe,
        ppid,
        cgroup,
        at: Instant::now(),
    };
    cache.insert(tgid, info.clone());
    info
}

/// [`enrich`] with fresh caches (the fuzz harness: one record at a time).
pub(super) fn enrich_once(raw: &Raw, snap: &Snapshot) -> Event {
    enrich(
        raw,
        snap,
        &BootToWall::now(),
        &mut HashMap::new(),
        &mut CgroupNames::default(),
    )
}

fn enrich(
    raw: &Raw,
    snap: &Snapshot,
    clock: &BootToWall,
    cache: &mut HashMap<u32, ProcInfo>,
    cgroups: &mut CgroupNames,
) -> Event {
    let h = &raw.hdr;
    let view = snap.by_id.get(&h.identity);
    let p = proc_info(h.tgid, cache);
    let cgroup = cgroups.name(h.cgroup_id, view.map(|v| v.as_ref()));
    let (kind, net, unix, file) = match &raw.body {
        RawBody::Net(n) => (EventKind::Net, Some(event::net_info(n)), None, None),
        RawBody::Unix(u) => (EventKind::Unix, None, Some(event::unix_info(u)), None),
        RawBody::File(_) => (EventKind::File, None, None, None),
        RawBody::FileOp(x) => (EventKind::File, None, None, Some(event::file_op_info(x))),
        RawBody::Protect(_) => (EventKind::Protect, None, None, None),
        RawBody::Syscall(_) => (EventKind::Syscall, None, None, None),
    };
    let mut ev = Event {
        schema: SCHEMA,
        time: humantime::format_rfc3339_nanos(clock.wall(h.ts_ns)).to_string(),
        kind,
        identity: Some(
            view.map(|v| v.name.clone())
                .unwrap_or_else(|| format!("#{}", h.identity)),
        ),
        identity_id: Some(h.identity),
        verdict: event::verdict_of(h.verdict),
        mode: Some(event::mode_str(h.mode).into()),
        reason: event::reason_of(h.reason),
        rule: (h.rule_id != 0)
            .then(|| snap.rule_text(h.identity, h.rule_id))
            .flatten(),
        pid: Some(h.pid),
        tgid: Some(h.tgid),
        ppid: p.ppid,
        comm: Some(event::comm_str(&h.comm)),
        exe: p.exe,
        cgroup: cgroup.or(p.cgroup),
        cgroup_id: Some(h.cgroup_id),
        net,
        unix,
        file,
        lost: None,
        leases: None,
        lease: None,
        anomaly: None,
        policy: None,
        operator: None,
        audit: None,
        protect: None,
        syscall: None,
    };
    if let RawBody::Syscall(x) = &raw.body {
        // Name, layer, and the `deny` entry that refused it.
        super::syscalls::complete(&mut ev, x, view.and_then(|v| v.policy.as_deref()));
    }
    if let RawBody::Protect(x) = &raw.body {
        ev.protect = Some(event::protect_info(x));
    }
    if let RawBody::File(x) = &raw.body {
        // Path, and for Landlock the rule replayed in userspace.
        super::fileobs::complete(&mut ev, x, view.and_then(|v| v.policy.as_deref()));
    }
    ev
}
