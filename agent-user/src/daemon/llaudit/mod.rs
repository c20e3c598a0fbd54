//! The Landlock-denial observer without a host-wide hook: Landlock's own
//! audit records (ABI 7, Linux 6.15+), read from the audit multicast group.
//! Where BPF LSM does not enforce `[files]`, `corral run` applies them with
//! Landlock, which tells Corral nothing by itself; syscall tracepoints saw
//! the failed opens, at the price of every syscall on the host taking the
//! slow path. Research and measurements: docs/research/landlock-audit.md.
//!
//! - The daemon enables audit if it is off (and puts it back on stop), with
//!   one task rule, `task,never -F gid!=OBSERVED_GID`: no process gets an
//!   audit context unless it was forked by a member of that group, so the
//!   host's syscalls pay nothing. `audit_ever_enabled` is sticky until
//!   reboot and without the rule every later process would pay, so the rule
//!   stays when the daemon stops.
//! - `corral run` joins the group before forking the agent (root launchers;
//!   others cannot, and their denials carry the session's pid). Agents keep
//!   an audit context, the price of the per-process pid and comm on each
//!   denial (the SYSCALL record of the same serial).
//! - Which identity a record belongs to is bound per Landlock domain: the
//!   launcher names its child with a token the daemon signed for the
//!   identity before `landlock_restrict_self`, and the domain's first
//!   record carries the creator's name. An agent cannot forge another
//!   identity's token, and each is accepted once.
//! - The domain's `deallocated` record says how many denials it had; any
//!   the observer did not receive (daemon down, buffer overflow) become a
//!   `lost` event.

pub mod netlink;
pub mod observe;
pub mod record;
pub mod token;

use std::{
    collections::HashMap,
    io,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use tracing::{info, warn};

use netlink::{Control, STATUS_BACKLOG_LIMIT, STATUS_ENABLED, Status};

/// The group whose members' children get an audit context. No file
/// should be owned by it (membership grants its group permissions): a gid
/// far above any distribution's allocation ranges.
pub const OBSERVED_GID: u32 = 0x7fff_ff3c;
/// The backlog the records need in a denial storm (the default 64 loses
/// most of a burst; research: 2000/2000 arrived with 8192).
const BACKLOG: u32 = 8192;
const STATE_FILE: &str = "landlock-audit.json";
const KEY_FILE: &str = "landlock-audit.key";
const PROBE_FILE: &str = "landlock-audit.probe";
const DOMAINS_FILE: &str = "landlock-domains.json";
/// Bound domains kept across a restart (a domain that ended while the
/// daemon was down is never heard of again).
const DOMAINS_KEPT: usize = 10_000;
/// The self-test's thread name, which its domain record carries.
pub const SELFTEST_COMM: &str = "corral-selftest";

/// What the observer knows of one Landlock domain; kept across restarts
/// (`DOMAINS_FILE`) so a domain that ends after one still reconciles.
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Domain {
    pub identity: Option<u32>,
    pub creator: u32,
    /// Denials turned into events.
    pub received: u64,
    #[serde(skip)]
    pub selftest: bool,
}

pub struct Setup {
    domains: Mutex<HashMap<u64, Domain>>,
    domains_file: PathBuf,
    pub tokens: token::Tokens,
    ctl: Mutex<Control>,
    listener: Mutex<Option<OwnedFd>>,
    /// The status found at start (or by the daemon that crashed before).
    original: Status,
    /// Whether this daemon turned audit on (and so turns it off again).
    managed: bool,
    state_file: PathBuf,
    pub selftest: Duration,
    /// Launchers join `OBSERVED_GID` (`--landlock-pids process`).
    pub per_process: bool,
    /// `restore` ran (at shutdown, or on drop when the start-up failed
    /// after audit was turned on).
    restored: std::sync::atomic::AtomicBool,
    /// A host rule (`-a task,never`) gives no process an audit context:
    /// denials then carry the pid that started the agent, not each one's.
    pub no_contexts: bool,
}

impl Setup {
    /// Everything or an error saying what is missing; nothing is changed
    /// on the host unless every check passed.
    pub fn start(state_dir: &Path, per_process: bool) -> Result<Setup, String> {
        let abi = crate::sandbox::landlock::abi();
        if abi < 7 {
            return Err(format!(
                "Landlock ABI {abi} writes no audit records (ABI 7, Linux 6.15+)"
            ));
        }
        let mut ctl = Control::open().map_err(|e| match e.raw_os_error() {
            Some(libc::EPROTONOSUPPORT) => {
                "the kernel has no audit (CONFIG_AUDIT=n or audit=0)".into()
            }
            _ => format!("audit netlink: {e}"),
        })?;
        let found = ctl.status().map_err(|e| {
            format!("audit status: {e} (needs CAP_AUDIT_CONTROL in the initial namespaces)")
        })?;
        let listener = netlink::listener()
            .map_err(|e| format!("audit log group: {e} (needs CAP_AUDIT_READ)"))?;
        let state_file = state_dir.join(STATE_FILE);
        let original = read_state(&state_file).unwrap_or(found);
        ctl.add_rule(&netlink::task_never_unless_gid(OBSERVED_GID))
            .map_err(|e| format!("adding the task rule: {e}"))?;
        let managed = found.enabled == 0 || original.enabled == 0;
        if managed {
            write_state(&state_file, &original)
                .map_err(|e| format!("{}: {e}", state_file.display()))?;
            let mut s = found;
            s.enabled = 1;
            s.backlog_limit = found.backlog_limit.max(BACKLOG);
            ctl.set(STATUS_ENABLED | STATUS_BACKLOG_LIMIT, s)
                .map_err(|e| format!("enabling audit: {e}"))?;
        } else if found.backlog_limit < BACKLOG {
            warn!(
                backlog_limit = found.backlog_limit,
                "audit was enabled by someone else with a small backlog: a denial storm loses records (counted as lost)"
            );
        }
        let no_contexts = ctl.foreign_task_never().unwrap_or(false);
        if no_contexts {
            warn!(
                "a `task,never` audit rule is in force: Landlock denials will carry the pid that \
                 started each agent, not the pid of each refused process"
            );
        }
        let key = key(state_dir).map_err(|e| format!("{KEY_FILE}: {e}"))?;
        let domains_file = state_dir.join(DOMAINS_FILE);
        let domains: HashMap<u64, Domain> = std::fs::read(&domains_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut setup = Setup {
            domains: Mutex::new(domains),
            domains_file,
            tokens: token::Tokens::new(key),
            ctl: Mutex::new(ctl),
            listener: Mutex::new(None),
            original,
            managed,
            state_file,
            selftest: Duration::ZERO,
            no_contexts,
            per_process,
            restored: Default::default(),
        };
        match selftest(&listener, state_dir) {
            Ok(took) => setup.selftest = took,
            Err(e) => {
                setup.restore();
                return Err(format!("self-test: {e}"));
            }
        }
        *setup.listener.lock().unwrap() = Some(listener);
        info!(
            took_ms = setup.selftest.as_millis() as u64,
            managed, "Landlock denials observed through audit records"
        );
        Ok(setup)
    }

    /// How `corral status` names this observer.
    pub fn form(&self) -> String {
        format!(
            "Landlock audit records (no host-wide hook; audit {} by Corral; {}; self-test {:.1} \
             ms)",
            if self.managed {
                "enabled"
            } else {
                "already on, read"
            },
            if !self.per_process {
                "denials carry the pid that started the agent (--landlock-pids session)".to_string()
            } else if self.no_contexts {
                "per-process pids UNAVAILABLE: a `task,never` audit rule of the host's gives no \
                 process an audit context, so denials carry the pid that started the agent"
                    .to_string()
            } else {
                format!("agents in group {OBSERVED_GID} for per-process pids")
            },
            self.selftest.as_secs_f64() * 1000.0
        )
    }

    pub fn domains(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Domain>> {
        self.domains.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The group launchers join, when agents keep an audit context.
    pub fn launch_gid(&self) -> Option<u32> {
        (self.per_process && !self.no_contexts).then_some(OBSERVED_GID)
    }

    pub fn take_listener(&self) -> Option<OwnedFd> {
        self.listener.lock().unwrap().take()
    }

    /// Audit on again if someone turned it off while this daemon relies
    /// on it; says so either way.
    pub fn keep_enabled(&self) {
        let mut ctl = self.ctl.lock().unwrap();
        match ctl.status() {
            Ok(s) if s.enabled == 0 && self.managed => {
                warn!(
                    "audit was disabled behind Corral's back: enabling it again (Landlock denials in between are counted as lost when their domain ends)"
                );
                let _ = ctl.set(STATUS_ENABLED, Status { enabled: 1, ..s });
            }
            Ok(s) if s.enabled == 0 => {
                warn!(
                    "audit is disabled: Landlock denials are NOT reported until it is enabled again"
                )
            }
            Ok(_) => {}
            Err(e) => warn!("audit status: {e}"),
        }
    }

    /// Puts back what this daemon changed (audit on, the backlog); the
    /// task rule stays (see the module comment).
    pub fn restore(&self) {
        if self
            .restored
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let mut kept: Vec<_> = self
            .domains()
            .iter()
            .filter(|(_, d)| d.identity.is_some() && !d.selftest)
            .map(|(k, d)| {
                (
                    *k,
                    Domain {
                        identity: d.identity,
                        creator: d.creator,
                        received: d.received,
                        selftest: false,
                    },
                )
            })
            .collect();
        // Domain ids grow: the newest are the ones still running.
        kept.sort_by_key(|(k, _)| std::cmp::Reverse(*k));
        kept.truncate(DOMAINS_KEPT);
        let kept: HashMap<u64, Domain> = kept.into_iter().collect();
        if let Err(e) = serde_json::to_vec(&kept)
            .map_err(io::Error::from)
            .and_then(|b| std::fs::write(&self.domains_file, b))
        {
            warn!("saving Landlock domains: {e}");
        }
        if !self.managed {
            return;
        }
        let mut ctl = self.ctl.lock().unwrap();
        let o = self.original;
        match ctl.set(STATUS_ENABLED | STATUS_BACKLOG_LIMIT, o) {
            Ok(()) => {
                let _ = std::fs::remove_file(&self.state_file);
            }
            Err(e) => warn!("restoring the audit status: {e}"),
        }
    }
}

impl Drop for Setup {
    /// A daemon whose start-up failed after this (a tagged cgroup of its
    /// own, a policy error) leaves the host's audit status as it found it.
    fn drop(&mut self) {
        self.restore();
    }
}

/// The audit status to restore, written before the first change so a
/// daemon that crashed is followed by one that restores the right thing.
fn read_state(p: &Path) -> Option<Status> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
    Some(Status {
        enabled: v["enabled"].as_u64()? as u32,
        backlog_limit: v["backlog_limit"].as_u64()? as u32,
        ..Status::default()
    })
}

fn write_state(p: &Path, s: &Status) -> io::Result<()> {
    let v = serde_json::json!({ "enabled": s.enabled, "backlog_limit": s.backlog_limit });
    std::fs::write(p, v.to_string())
}

fn key(state_dir: &Path) -> io::Result<[u8; 32]> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let p = state_dir.join(KEY_FILE);
    if let Ok(b) = std::fs::read(&p)
        && let Ok(k) = <[u8; 32]>::try_from(b.as_slice())
    {
        return Ok(k);
    }
    let mut k = [0u8; 32];
    getrandom::fill(&mut k).map_err(|e| io::Error::other(e.to_string()))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&p)?;
    std::io::Write::write_all(&mut f, &k)?;
    Ok(k)
}

/// Proves the whole path before anything relies on it: a thread of this
/// daemon confines itself (Landlock domains are per thread), is refused a
/// read, and its record must arrive (an auditd exclude rule, a locked-off
/// audit or a foreign namespace would otherwise leave Corral deaf).
fn selftest(listener: &OwnedFd, state_dir: &Path) -> Result<Duration, String> {
    let probe = state_dir.join(PROBE_FILE);
    if !probe.exists() {
        std::fs::write(&probe, "{}").map_err(|e| e.to_string())?;
    }
    let target = std::ffi::CString::new(probe.display().to_string()).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let refused = std::thread::spawn(move || -> io::Result<i32> {
        let name = std::ffi::CString::new(SELFTEST_COMM).unwrap();
        // SAFETY: raw syscalls on valid pointers, in a thread that exits
        // right after (the domain and no_new_privs go with it).
        unsafe {
            libc::prctl(libc::PR_SET_NAME, name.as_ptr());
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        }
        let fd = crate::sandbox::landlock::empty_ruleset()?;
        crate::sandbox::landlock::restrict_thread(&fd, 0)?;
        // SAFETY: a valid C string.
        let rc = unsafe { libc::open(target.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if rc >= 0 {
            // SAFETY: the fd just opened.
            unsafe { libc::close(rc) };
            return Ok(0);
        }
        Ok(io::Error::last_os_error().raw_os_error().unwrap_or(0))
    })
    .join()
    .map_err(|_| "the probe thread panicked".to_string())?
    .map_err(|e| format!("confining the probe thread: {e}"))?;
    if refused != libc::EACCES {
        return Err(format!(
            "the probe read was not refused by Landlock (errno {refused})"
        ));
    }
    let want = probe.display().to_string();
    let mut buf = vec![0u8; 16384];
    while t0.elapsed() < Duration::from_secs(2) {
        if !netlink::wait_readable(listener, Duration::from_millis(100)) {
            continue;
        }
        let Ok(Some(n)) = netlink::recv(listener, &mut buf) else {
            continue;
        };
        for (ty, _, body) in netlink::messages(&buf[..n]) {
            if let Some((_, record::Record::Access { path: Some(p), .. })) = record::parse(ty, body)
                && p == want
            {
                return Ok(t0.elapsed());
            }
        }
    }
    Err(
        "no audit record of the probe's refused read within 2 s (audit excluded or locked off?)"
            .into(),
    )
}
