//! The one reload path (start-up, SIGHUP, `corral policy apply`, the policy
//! dir watcher, host name refreshes): parse, validate and compile everything
//! first; only a fully valid set reaches the enforcer, so a bad edit changes
//! nothing that is in force.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{error, info};

use super::{
    dns::{self, HostCache, HostView},
    enforcer::{ApplyReport, Command, Compiled, EnforceError},
};
use crate::{
    event::Event,
    policy::{
        self, PolicyErrors, PolicySource,
        compiled::{self, FileGuard},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("policy errors, nothing changed:\n{0}")]
    Policy(PolicyErrors),
    #[error("applying the policy: {0}")]
    Enforce(#[from] EnforceError),
    #[error("the enforcer task is gone")]
    EnforcerGone,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadStatus {
    /// Count of successful applies since the daemon started.
    pub generation: u64,
    pub last_time: Option<String>,
    pub last_ok: bool,
    /// `start`, `SIGHUP`, `api`, `watch` or `dns`.
    pub last_trigger: Option<String>,
    /// Errors of the last attempt (file:line:col each), empty when it worked.
    pub last_errors: Vec<String>,
    pub last_report: Option<serde_json::Value>,
    /// Parse + compile + apply of the last attempt, in milliseconds.
    pub last_duration_ms: Option<f64>,
    /// Of which parse + compile (the rest is writing the kernel maps).
    pub last_compile_ms: Option<f64>,
    /// Errors that keep the policy files' current content out of force:
    /// set by a failed load from disk, cleared by a successful one, and left
    /// alone by host name refreshes (which re-apply the policy in force), so
    /// a broken file stays visible after a later `dns` reload.
    pub policy_dir_errors: Vec<String>,
}

/// The policy in force: the texts it was compiled from (so host name
/// refreshes recompile exactly it, whatever the files say meanwhile) and the
/// host names each identity's rules use.
struct InForce {
    dir: PathBuf,
    sources: Vec<PolicySource>,
    hosts: BTreeMap<String, Vec<String>>,
}

enum Input {
    Dir(PathBuf),
    InForce,
}

/// What one reload did, for [`Reloader::record`].
struct Done<'a> {
    trigger: &'a str,
    dir: &'a Path,
    from_disk: bool,
    took: std::time::Duration,
    compiled_in: std::time::Duration,
    digests: BTreeMap<String, String>,
}

pub struct Reloader {
    pub policy_dir: PathBuf,
    /// The resolver cache every load of the daemon goes through.
    pub hosts: Arc<HostCache>,
    enforcer: mpsc::Sender<Command>,
    status: Mutex<ReloadStatus>,
    in_force: Mutex<Option<Arc<InForce>>>,
    serial: tokio::sync::Mutex<()>,
    /// Where each reload is reported (`policy` events; the audit log).
    events: Option<broadcast::Sender<Arc<Event>>>,
    /// What the daemon adds to every identity's file rules (its protected
    /// paths), compiled in with them.
    guard: Arc<dyn FileGuard + Send + Sync>,
}

/// Parses and compiles every file of a directory with the system resolver
/// (blocking): `corral policy check` and the daemon's start-up check.
pub fn compile_dir(dir: &Path) -> Result<Vec<Compiled>, PolicyErrors> {
    compiled::compile_set(policy::load_dir(dir)?, &compiled::NoGuard)
}

impl Reloader {
    pub fn new(
        policy_dir: PathBuf,
        enforcer: mpsc::Sender<Command>,
        dns: dns::Config,
        guard: Arc<dyn FileGuard + Send + Sync>,
    ) -> Reloader {
        Reloader {
            policy_dir,
            hosts: HostCache::new(dns),
            enforcer,
            status: Mutex::default(),
            in_force: Mutex::default(),
            serial: tokio::sync::Mutex::new(()),
            events: None,
            guard,
        }
    }

    pub fn with_events(mut self, tx: broadcast::Sender<Arc<Event>>) -> Reloader {
        self.events = Some(tx);
        self
    }

    pub fn status(&self) -> ReloadStatus {
        self.status.lock().expect("status lock").clone()
    }

    /// Reloads `dir` (default: the daemon's policy dir) from disk.
    pub async fn reload(
        &self,
        dir: Option<PathBuf>,
        trigger: &str,
    ) -> Result<ApplyReport, ReloadError> {
        let dir = dir.unwrap_or_else(|| self.policy_dir.clone());
        self.run(Input::Dir(dir), trigger).await
    }

    /// Compiles the policy in force again, with the host cache's current
    /// answers, and applies it: what a host name refresh does. Unchanged
    /// identities are left alone by the enforcer, as always.
    pub async fn reapply(&self, trigger: &str) -> Result<ApplyReport, ReloadError> {
        self.run(Input::InForce, trigger).await
    }

    /// What each host name used by `identity`'s rules resolves to now.
    pub fn hosts_of(&self, identity: &str) -> Vec<HostView> {
        let in_force = self.in_force.lock().expect("in force lock").clone();
        let Some(f) = in_force else {
            return Vec::new();
        };
        f.hosts
            .get(identity)
            .into_iter()
            .flatten()
            .filter_map(|h| self.hosts.view(h))
            .collect()
    }

    async fn run(&self, input: Input, trigger: &str) -> Result<ApplyReport, ReloadError> {
        let _one_at_a_time = self.serial.lock().await;
        let started = Instant::now();
        let (dir, earlier) = match input {
            Input::Dir(d) => (d, None),
            Input::InForce => {
                let f = self.in_force.lock().expect("in force lock").clone();
                match f {
                    Some(f) => (f.dir.clone(), Some(f)),
                    // Nothing applied yet: nothing to refresh.
                    None => return Ok(ApplyReport::default()),
                }
            }
        };
        let from_disk = earlier.is_none();
        let hosts = self.hosts.clone();
        let guard = self.guard.clone();
        let d = dir.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            let used = Mutex::default();
            let resolve = |h: &str| hosts.for_load(h, &used);
            let (set, sources) = match earlier {
                None => policy::load_dir_sources(&d, &resolve)?,
                Some(f) => (
                    policy::load_sources(&d, &f.sources, &resolve)?,
                    f.sources.clone(),
                ),
            };
            let set = compiled::compile_set(set, &*guard)?;
            Ok::<_, PolicyErrors>((set, sources, used.into_inner().expect("used lock")))
        })
        .await
        .expect("policy compile task panicked");
        let compiled_in = started.elapsed();

        let mut digests = BTreeMap::new();
        let result = match compiled {
            Err(e) => Err(ReloadError::Policy(e)),
            Ok((set, sources, used)) => {
                digests = set
                    .iter()
                    .map(|c| (c.policy.name.clone(), format!("{:016x}", c.policy.digest)))
                    .collect();
                let hosts = hosts_by_identity(&set, &sources);
                match self.apply(set).await {
                    Ok(report) => {
                        self.hosts.retain(&used);
                        *self.in_force.lock().expect("in force lock") = Some(Arc::new(InForce {
                            dir: dir.clone(),
                            sources,
                            hosts,
                        }));
                        Ok(report)
                    }
                    Err(e) => Err(e),
                }
            }
        };
        let took = started.elapsed();
        trim_heap();
        let done = Done {
            trigger,
            dir: &dir,
            from_disk,
            took,
            compiled_in,
            digests,
        };
        self.record(&result, done);
        result
    }

    /// The reload's outcome into `corral status` and the log, and (unless
    /// it is a quiet host-name refresh) a `policy` event.
    fn record(&self, result: &Result<ApplyReport, ReloadError>, done: Done<'_>) {
        let mut st = self.status.lock().expect("status lock");
        st.last_time = Some(crate::clock::now_rfc3339());
        st.last_trigger = Some(done.trigger.to_string());
        st.last_duration_ms = Some(done.took.as_secs_f64() * 1000.0);
        st.last_compile_ms = Some(done.compiled_in.as_secs_f64() * 1000.0);
        match result {
            Ok(report) => {
                st.generation += 1;
                st.last_ok = true;
                st.last_errors.clear();
                st.last_report = serde_json::to_value(report).ok();
                if done.from_disk {
                    st.policy_dir_errors.clear();
                }
                info!(
                    trigger = done.trigger, dir = %done.dir.display(), generation = st.generation,
                    took_ms = done.took.as_millis() as u64,
                    compile_ms = done.compiled_in.as_millis() as u64,
                    changed = ?report.changed, removed = ?report.removed,
                    orphaned = ?report.orphaned, "policy reloaded"
                );
            }
            Err(e) => {
                st.last_ok = false;
                st.last_errors = match e {
                    ReloadError::Policy(p) => p.0.iter().map(|e| e.to_string()).collect(),
                    other => vec![other.to_string()],
                };
                if done.from_disk && matches!(e, ReloadError::Policy(_)) {
                    st.policy_dir_errors = st.last_errors.clone();
                }
                error!(
                    trigger = done.trigger, dir = %done.dir.display(),
                    "reload failed, the previous policy stays in force: {e}"
                );
            }
        }
        // Host name refreshes run every few seconds: reported when they
        // changed something or failed.
        let quiet = done.trigger == "dns"
            && matches!(result, Ok(r) if r.changed.is_empty() && r.removed.is_empty());
        if let Some(tx) = self.events.as_ref().filter(|_| !quiet) {
            let mut ev =
                Event::notice(crate::event::EventKind::Policy, crate::clock::now_rfc3339());
            ev.policy = Some(serde_json::json!({
                "trigger": done.trigger,
                "dir": done.dir,
                "ok": st.last_ok,
                "generation": st.generation,
                "errors": st.last_errors,
                "report": st.last_report,
                "digests": done.digests,
                "duration_ms": st.last_duration_ms,
            }));
            let _ = tx.send(Arc::new(ev));
        }
    }

    async fn apply(&self, set: Vec<Compiled>) -> Result<ApplyReport, ReloadError> {
        let (reply, rx) = oneshot::channel();
        self.enforcer
            .send(Command::Apply { set, reply })
            .await
            .map_err(|_| ReloadError::EnforcerGone)?;
        match rx.await {
            Ok(r) => r.map_err(ReloadError::from),
            Err(_) => Err(ReloadError::EnforcerGone),
        }
    }
}

/// Host names per identity, from the texts its policies were compiled from.
fn hosts_by_identity(set: &[Compiled], sources: &[PolicySource]) -> BTreeMap<String, Vec<String>> {
    let texts: BTreeMap<&Path, &str> = sources
        .iter()
        .map(|s| (s.path.as_path(), s.text.as_str()))
        .collect();
    set.iter()
        .filter_map(|c| {
            let text = texts.get(c.policy.source.as_path())?;
            let names = policy::host_names(text);
            (!names.is_empty()).then(|| (c.policy.name.clone(), names))
        })
        .collect()
}

/// Re-resolves host names every refresh interval and re-applies the policy
/// in force when an answer changed. Runs for the daemon's lifetime.
pub async fn refresh_hosts(reloader: Arc<Reloader>) {
    let every = reloader.hosts.config().refresh;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let hosts = reloader.hosts.clone();
        let changed = tokio::task::spawn_blocking(move || hosts.refresh())
            .await
            .unwrap_or(false);
        if changed {
            // Errors are logged and land in `corral status`.
            let _ = reloader.reapply("dns").await;
        }
    }
}

/// Hands memory freed by a big transient job (loading a large policy,
/// serialising it for the API) back to the system: glibc keeps it in its
/// per-thread arenas otherwise, so the daemon would hold its peak forever.
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: glibc call without pointer arguments.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::files::compile::{FileEntry, RuleIn};

    /// Adds, for identity `b` only, a file rule the kernel's path table
    /// cannot hold: what a protected path or lease grant the load never saw
    /// could do.
    struct TooLongFor(&'static str);

    impl FileGuard for TooLongFor {
        fn rules(&self, identity: &str, _: Option<&policy::IdentityPolicy>) -> Vec<RuleIn> {
            if identity != self.0 {
                return Vec::new();
            }
            vec![RuleIn {
                path: format!("/{}/", "x".repeat(agent_common::file::FILE_KEY_PATH_LEN)),
                access: agent_common::file::ACCESS_ALL,
                deny: true,
                id: 1,
                expires_ns: 0,
            }]
        }
        fn enforce(&self, _: &mut [FileEntry], _: &str, _: Option<&policy::IdentityPolicy>) {}
    }

    #[tokio::test]
    async fn a_file_rule_compile_error_reaches_no_identity() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a", "b"] {
            std::fs::write(
                dir.path().join(format!("{name}.toml")),
                format!("[identity]\nname = \"{name}\"\n[files]\nread = [\"/srv/{name}/\"]\n"),
            )
            .unwrap();
        }
        let (tx, mut rx) = mpsc::channel(4);
        let r = Reloader::new(
            dir.path().to_path_buf(),
            tx,
            dns::Config::new(std::time::Duration::from_secs(30)),
            Arc::new(TooLongFor("b")),
        );
        let err = r.reload(None, "test").await.expect_err("refused");
        let ReloadError::Policy(errs) = &err else {
            panic!("{err}")
        };
        assert_eq!(errs.0.len(), 1, "{err}");
        assert!(errs.0[0].file.ends_with("b.toml"), "{err}");
        // Not one identity was sent to the enforcer: `a`, valid on its
        // own, keeps what it had too.
        assert!(rx.try_recv().is_err(), "an apply reached the enforcer");
        let st = r.status();
        assert_eq!(st.generation, 0);
        assert!(
            !st.last_ok && st.last_errors[0].contains("b.toml"),
            "{st:?}"
        );
    }
}
