//! Policy texts the suites write, the bundled `policies/` files, reloads,
//! and the daemon's report of its mechanisms.

use serde_json::Value;

use crate::{Daemon, workspace};

/// A policy file: `[identity]` with `name` (and `mode`, where given), then
/// one `[section]` with `body`.
pub fn identity_policy(name: &str, mode: Option<&str>, section: &str, body: &str) -> String {
    let mode = mode.map_or(String::new(), |m| format!("mode = \"{m}\"\n"));
    format!("[identity]\nname = \"{name}\"\n{mode}[{section}]\n{body}\n")
}

/// A policy with a `[network]` section.
pub fn net_policy(name: &str, mode: &str, body: &str) -> String {
    identity_policy(name, Some(mode), "network", body)
}

/// An enforce-mode policy with a `[network]` section.
pub fn enforce_policy(name: &str, body: &str) -> String {
    net_policy(name, "enforce", body)
}

/// A policy with a `[syscalls]` section.
pub fn syscall_policy(name: &str, mode: &str, body: &str) -> String {
    identity_policy(name, Some(mode), "syscalls", body)
}

/// Every `policies/*.toml` of the workspace: (file stem, text).
pub fn bundled_policies() -> Vec<(String, String)> {
    // The guest puts them elsewhere: its /tmp is a fresh tmpfs, and a
    // checkout may live under /tmp.
    let src = std::env::var_os("CORRAL_BUNDLED_POLICIES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace().join("policies"));
    std::fs::read_dir(&src)
        .expect("policies/")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
        .map(|e| {
            let stem = e
                .path()
                .file_stem()
                .expect("stem")
                .to_string_lossy()
                .into_owned();
            (stem, std::fs::read_to_string(e.path()).expect("read"))
        })
        .collect()
}

/// (name, text) pairs as `Daemon::start` takes them.
pub fn policy_refs(files: &[(String, String)]) -> Vec<(&str, &str)> {
    files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect()
}

/// The mechanism called `name` in a status report (`corral status --json`
/// or `GET /v1/status`); `Null` when there is none.
pub fn mechanism_in(status: &Value, name: &str) -> Value {
    status["daemon"]["mechanisms"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == name).cloned())
        .unwrap_or(Value::Null)
}

impl Daemon {
    /// `corral policy apply`, which must succeed.
    pub fn apply(&self) {
        let out = self.cli(&["policy", "apply"]);
        assert!(
            out.status.success(),
            "policy apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The mechanism called `name` as the daemon reports it (`Null` when
    /// it reports none by that name).
    pub fn mechanism(&self, name: &str) -> Value {
        mechanism_in(&self.status(), name)
    }
}

/// The values `corral policy suggest --json` adds under `key` (`allow`,
/// `read`, ...), in its order.
pub fn suggested<'a>(v: &'a Value, key: &str) -> Vec<&'a str> {
    v["additions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["key"] == key)
        .filter_map(|a| a["value"].as_str())
        .collect()
}
