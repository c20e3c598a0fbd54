//! Turning Landlock's audit records into Corral's file events: the records
//! of one refused syscall (ACCESS, the domain's first DOMAIN record, the
//! SYSCALL record of agents that have an audit context, EOE) are gathered
//! by serial, the domain is bound to its identity, and the denial joins the
//! event pipeline as the same `FileEvent` the tracepoint observer writes.

use std::{
    collections::HashSet,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use agent_common::{
    event::{COMM_LEN, EventHeader, KIND_FILE, REASON_NO_RULE, VERDICT_DENY},
    file::{
        FILE_PATH_LEN, FILE_REASON_OBSERVED, FILE_REASON_OBSERVED_CREATE, FileEvent, LAYER_LANDLOCK,
    },
    identity::MODE_ENFORCE,
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{mpsc, watch},
};
use tracing::{debug, warn};

use super::{
    SELFTEST_COMM, Setup, netlink,
    record::{self, Record, Stamp},
};
use crate::daemon::{reports::Report, snapshot::Snapshot};

/// A process without an audit context sends no SYSCALL/EOE records: its
/// denial is complete once the records written with it have arrived.
const SETTLE: Duration = Duration::from_millis(40);
const TOKENS_KEPT: usize = 65_536;

struct Pending {
    stamp: Stamp,
    domain: u64,
    access: u32,
    /// Only `fs.make_*` blockers: something was to be created in `path`.
    create: bool,
    path: String,
    /// pid, comm, syscall number, return value.
    sys: Option<(u32, String, u32, i64)>,
    /// The names the syscall was given (PATH records) and the working
    /// directory (CWD): what the process asked for, where the ACCESS
    /// record names what it reached (a symlink's target).
    asked: Vec<String>,
    cwd: Option<String>,
    at: Instant,
}

struct Observer {
    setup: Arc<Setup>,
    tx: mpsc::Sender<Report>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    cg_root: PathBuf,
    pending: Vec<Pending>,
    used: HashSet<String>,
}

pub async fn run(
    setup: Arc<Setup>,
    fd: OwnedFd,
    tx: mpsc::Sender<Report>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    cg_root: PathBuf,
) {
    // SAFETY: the AsyncFd owns the socket and keeps it open while
    // registered.
    let fd = match unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            warn!("Landlock audit records: {e}; Landlock denials are NOT reported");
            return;
        }
    };
    let mut o = Observer {
        setup,
        tx,
        snapshot,
        cg_root,
        pending: Vec::new(),
        used: HashSet::new(),
    };
    let mut buf = vec![0u8; 16384];
    let mut settle = tokio::time::interval(SETTLE / 2);
    let mut check = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            guard = fd.readable() => {
                let Ok(mut guard) = guard else { return };
                loop {
                    match netlink::recv(fd.get_ref(), &mut buf) {
                        Ok(Some(n)) => {
                            for (ty, _, body) in netlink::messages(&buf[..n]) {
                                if let Some((stamp, rec)) = record::parse(ty, body) {
                                    o.record(stamp, rec).await;
                                }
                            }
                        }
                        Ok(None) => {
                            guard.clear_ready();
                            break;
                        }
                        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                            // How many is known only when each domain ends
                            // (its `denials=`): the `lost` event comes then.
                            warn!("audit records overflowed Corral's socket: Landlock denials lost (counted per domain when it ends)");
                        }
                        Err(e) => {
                            warn!("reading audit records: {e}; Landlock denials are NOT reported");
                            return;
                        }
                    }
                }
            }
            _ = settle.tick() => o.flush(|p| p.at.elapsed() >= SETTLE).await,
            _ = check.tick() => o.setup.keep_enabled(),
        }
    }
}

impl Observer {
    async fn record(&mut self, stamp: Stamp, rec: Record) {
        match rec {
            Record::Access {
                domain,
                access,
                path,
                blockers,
            } => {
                if access == 0 {
                    return;
                }
                self.setup.domains().entry(domain).or_default();
                self.pending.push(Pending {
                    stamp,
                    domain,
                    access,
                    create: blockers.split(',').all(|b| b.starts_with("fs.make_")),
                    path: path.unwrap_or_default(),
                    sys: None,
                    asked: Vec::new(),
                    cwd: None,
                    at: Instant::now(),
                });
            }
            Record::Allocated { domain, pid, comm } => {
                let identity = self.bind(&comm, pid);
                let mut domains = self.setup.domains();
                let d = domains.entry(domain).or_default();
                d.creator = pid;
                d.selftest = comm == SELFTEST_COMM;
                d.identity = identity;
            }
            Record::Deallocated { domain, denials } => {
                self.flush(|p| p.domain == domain).await;
                let ended = self.setup.domains().remove(&domain);
                // Only Corral's domains: a host program's own Landlock
                // sandbox is none of its business.
                if let Some(d) = ended
                    && !d.selftest
                    && d.identity.is_some()
                    && denials > d.received
                {
                    warn!(
                        domain,
                        denials,
                        received = d.received,
                        "Landlock denials were not observed"
                    );
                    self.lost(denials - d.received).await;
                }
            }
            Record::Syscall {
                pid,
                comm,
                nr,
                exit,
            } => {
                if let Some(p) = self
                    .pending
                    .iter_mut()
                    .find(|p| p.stamp.serial == stamp.serial)
                {
                    p.sys = Some((pid, comm, nr, exit));
                }
            }
            Record::Path { name } => {
                if let Some(p) = self
                    .pending
                    .iter_mut()
                    .find(|p| p.stamp.serial == stamp.serial)
                {
                    p.asked.push(name);
                }
            }
            Record::Cwd { cwd } => {
                if let Some(p) = self
                    .pending
                    .iter_mut()
                    .find(|p| p.stamp.serial == stamp.serial)
                {
                    p.cwd = Some(cwd);
                }
            }
            Record::EndOfEvent => self.flush(|p| p.stamp.serial == stamp.serial).await,
        }
    }

    /// The identity of a new domain: the launch token its creator carried,
    /// accepted once; otherwise (a domain an agent made for itself) the
    /// creator's cgroup, while it lives. A live creator in another
    /// identity's cgroup than its token names is judged by the cgroup: a
    /// token read from another launch's `/proc/PID/comm` in the instant it
    /// is set cannot lend an agent's own domain another identity.
    fn bind(&mut self, comm: &str, creator: u32) -> Option<u32> {
        let by_cgroup = self.identity_of(creator);
        if let Some(id) = self.setup.tokens.verify(comm) {
            if self.used.len() >= TOKENS_KEPT {
                self.used.clear();
            }
            if by_cgroup.is_some_and(|c| c != id) {
                warn!(
                    comm,
                    "a launch token used outside its identity's cgroup: judged by the cgroup"
                );
            } else if self.used.insert(comm.to_string()) {
                return Some(id);
            } else {
                warn!(
                    comm,
                    "a launch token was used twice: the second domain is judged by its cgroup"
                );
            }
        }
        by_cgroup
    }

    fn cgroup_of(&self, pid: u32) -> Option<PathBuf> {
        let rel = crate::cgroup::of_pid(pid).ok()?;
        Some(self.cg_root.join(rel.trim_start_matches('/')))
    }

    /// The deepest identity whose cgroup holds `pid`.
    fn identity_of(&self, pid: u32) -> Option<u32> {
        let abs = self.cgroup_of(pid)?;
        let snap = self.snapshot.borrow();
        snap.by_id
            .values()
            .flat_map(|v| {
                std::iter::once(&v.cgroup)
                    .chain(&v.assigned)
                    .map(move |c| (v.id, c))
            })
            .filter(|(_, c)| abs.starts_with(c))
            .max_by_key(|(_, c)| c.as_os_str().len())
            .map(|(id, _)| id)
    }

    async fn flush(&mut self, done: impl Fn(&Pending) -> bool) {
        let (ready, keep) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(done);
        self.pending = keep;
        for p in ready {
            self.emit(p).await;
        }
    }

    async fn emit(&mut self, p: Pending) {
        let (creator, bound, selftest) = match self.setup.domains().get(&p.domain) {
            Some(d) => (d.creator, d.identity, d.selftest),
            None => (0, None, false),
        };
        if selftest {
            return;
        }
        let pid = p.sys.as_ref().map_or(creator, |s| s.0);
        // A domain no launch token bound (an agent's own nested sandbox,
        // or one the daemon saw begin before a restart) belongs to the
        // identity whose cgroup holds the process; one of no identity's is
        // a host program's own Landlock sandbox, not Corral's to report.
        let Some(identity) = bound.or_else(|| self.identity_of(pid)) else {
            debug!(
                domain = p.domain,
                pid,
                path = p.path,
                "Landlock denial outside every identity"
            );
            return;
        };
        if let Some(d) = self.setup.domains().get_mut(&p.domain) {
            d.identity = Some(identity);
            d.received += 1;
        }
        // The process's own cgroup while it lives, else its identity's.
        let cgroup = self.cgroup_of(pid).or_else(|| {
            self.snapshot
                .borrow()
                .by_id
                .get(&identity)
                .map(|v| v.cgroup.clone())
        });
        let x = file_event(&p, identity, pid, cgroup.as_deref());
        // SAFETY: `FileEvent` is repr(C) plain data.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&x as *const FileEvent).cast::<u8>(),
                size_of::<FileEvent>(),
            )
        };
        if self.tx.send(Report::Event(bytes.to_vec())).await.is_err() {
            debug!("event pipeline gone");
        }
    }

    async fn lost(&self, n: u64) {
        let _ = self.tx.send(Report::Lost(n, "landlock-audit")).await;
    }
}

/// The path as the process asked for it, absolute: the longest name it
/// gave (a create's parent is a prefix of the full name), against its
/// working directory; the ACCESS record's path without PATH records.
fn asked(p: &Pending) -> String {
    let Some(name) = p.asked.iter().max_by_key(|n| n.len()) else {
        // A create names its directory.
        return match p.create && !p.path.ends_with('/') {
            true => format!("{}/", p.path),
            false => p.path.clone(),
        };
    };
    match &p.cwd {
        Some(cwd) if !name.starts_with('/') => Path::new(cwd).join(name).display().to_string(),
        _ => name.clone(),
    }
}

fn file_event(p: &Pending, identity: u32, pid: u32, cgroup: Option<&Path>) -> FileEvent {
    use std::os::unix::fs::MetadataExt as _;
    let mut comm = [0u8; COMM_LEN];
    // Without a SYSCALL record (no audit context), the process's name
    // while it lives.
    let name = match &p.sys {
        Some((_, c, _, _)) => c.clone(),
        None => std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default(),
    };
    let name = name.trim_end();
    let n = name.len().min(COMM_LEN - 1);
    comm[..n].copy_from_slice(&name.as_bytes()[..n]);
    let asked = asked(p);
    let mut path = [0u8; FILE_PATH_LEN];
    let n = asked.len().min(FILE_PATH_LEN - 1);
    path[..n].copy_from_slice(&asked.as_bytes()[..n]);
    let errno = match &p.sys {
        Some((_, _, _, exit)) if *exit < 0 => (-exit) as u32,
        _ => libc::EACCES as u32,
    };
    FileEvent {
        hdr: EventHeader {
            kind: KIND_FILE,
            identity,
            ts_ns: crate::clock::wall_ms_to_boot_ns(p.stamp.wall_ms),
            cgroup_id: cgroup
                .and_then(|c| std::fs::metadata(c).ok())
                .map_or(0, |m| m.ino()),
            pid,
            tgid: pid,
            comm,
            verdict: VERDICT_DENY,
            mode: MODE_ENFORCE,
            reason: REASON_NO_RULE,
            rule_id: 0,
        },
        access: p.access,
        layer: LAYER_LANDLOCK,
        reason: if p.create {
            FILE_REASON_OBSERVED_CREATE
        } else {
            FILE_REASON_OBSERVED
        },
        path_len: n as u32,
        errno,
        dirfd: 0,
        path,
    }
}
