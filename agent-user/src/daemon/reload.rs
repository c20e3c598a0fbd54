//! The one reload path (start-up, SIGHUP, `corral policy apply`): parse,
//! validate and compile everything first; only a fully valid set reaches the
//! enforcer, so a bad edit changes nothing that is in force.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info};

use super::enforcer::{ApplyReport, Command, Compiled, EnforceError};
use crate::policy::{self, PolicyErrors};

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
    pub last_trigger: Option<String>,
    /// Errors of the last attempt (file:line:col each), empty when it worked.
    pub last_errors: Vec<String>,
    pub last_report: Option<serde_json::Value>,
}

pub struct Reloader {
    pub policy_dir: PathBuf,
    enforcer: mpsc::Sender<Command>,
    status: Mutex<ReloadStatus>,
    serial: tokio::sync::Mutex<()>,
}

/// Parses and compiles every file of a directory (blocking).
pub fn compile_dir(dir: &Path) -> Result<Vec<Compiled>, PolicyErrors> {
    let set = policy::load_dir(dir)?;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (_, p) in set.identities {
        match policy::compile_network(&p) {
            Ok(tables) => out.push(Compiled {
                policy: Arc::new(p),
                tables,
            }),
            Err(e) => errors.extend(e.0),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(PolicyErrors(errors))
    }
}

impl Reloader {
    pub fn new(policy_dir: PathBuf, enforcer: mpsc::Sender<Command>) -> Reloader {
        Reloader {
            policy_dir,
            enforcer,
            status: Mutex::default(),
            serial: tokio::sync::Mutex::new(()),
        }
    }

    pub fn status(&self) -> ReloadStatus {
        self.status.lock().expect("status lock").clone()
    }

    pub async fn reload(
        &self,
        dir: Option<PathBuf>,
        trigger: &str,
    ) -> Result<ApplyReport, ReloadError> {
        let _one_at_a_time = self.serial.lock().await;
        let dir = dir.unwrap_or_else(|| self.policy_dir.clone());
        let d = dir.clone();
        let compiled = tokio::task::spawn_blocking(move || compile_dir(&d))
            .await
            .expect("policy compile task panicked");
        let result = match compiled {
            Err(e) => Err(ReloadError::Policy(e)),
            Ok(set) => {
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
        };
        let mut st = self.status.lock().expect("status lock");
        st.last_time = Some(super::events::now_rfc3339());
        st.last_trigger = Some(trigger.to_string());
        match &result {
            Ok(report) => {
                st.generation += 1;
                st.last_ok = true;
                st.last_errors.clear();
                st.last_report = serde_json::to_value(report).ok();
                info!(
                    trigger, dir = %dir.display(), generation = st.generation,
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
                error!(trigger, "reload failed, the previous policy stays in force: {e}");
            }
        }
        result
    }
}
