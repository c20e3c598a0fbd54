//! For the lease suites: a daemon whose policies may name its own lease
//! socket (which sits beside the control socket, so agents may connect to
//! it under unix rules), the policy texts with `[leases]`, and offline
//! token checks.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use serde_json::{Value, json};

use crate::{BgProbe, Daemon, Dirs, ProbeRun, cleanup, corral_bin};

/// How long a background probe may take before it fails the test.
pub const PROBE_WAIT: Duration = Duration::from_secs(30);

/// A policy file: its name and its text, given the lease socket's path.
pub type PolicyText<'a> = (&'a str, &'a dyn Fn(&Path) -> String);

/// A daemon that can be stopped (pins kept) and started again on the same
/// dirs; cleans up after itself either way.
pub struct Lab {
    d: Option<Daemon>,
    pub dirs: Dirs,
    /// Extra `corral daemon` arguments, kept for restarts.
    args: Vec<String>,
    _base: tempfile::TempDir,
}

impl Lab {
    pub fn start(policies: &[PolicyText<'_>]) -> Lab {
        Lab::start_opts(policies, &[])
    }

    /// Like `start`, with extra `corral daemon` arguments.
    pub fn start_opts(policies: &[PolicyText<'_>], args: &[&str]) -> Lab {
        Lab::start_prepared(policies, args, |_| ()).0
    }

    /// Like `start_opts`, with `prepare` run on the dirs before the daemon
    /// starts (a mount under the state dir); what it returns is handed
    /// back, and dropped first if the daemon does not start.
    pub fn start_prepared<T>(
        policies: &[PolicyText<'_>],
        args: &[&str],
        prepare: impl FnOnce(&Dirs) -> T,
    ) -> (Lab, T) {
        let base = tempfile::tempdir().expect("tempdir");
        let dirs = Dirs::new(base.path());
        let prepared = prepare(&dirs);
        let sock = lease_sock(&dirs);
        for (name, text) in policies {
            std::fs::write(dirs.policy_dir.join(format!("{name}.toml")), text(&sock))
                .expect("policy");
        }
        let d = Daemon::start_with_opts(dirs.clone(), args, &[]).expect("daemon did not start");
        let lab = Lab {
            d: Some(d),
            dirs,
            args: args.iter().map(|a| a.to_string()).collect(),
            _base: base,
        };
        (lab, prepared)
    }

    /// One identity `agent` with the standard `[leases]` section (both
    /// grants on 127.0.0.1:`port`).
    pub fn agent(port: u16) -> Lab {
        let leases = leases_section(port, port);
        Lab::start(&[("agent", &|s: &Path| policy("agent", s, "", &leases))])
    }

    pub fn d(&self) -> &Daemon {
        self.d.as_ref().expect("daemon running")
    }

    /// The agent-facing lease socket.
    pub fn sock(&self) -> String {
        lease_sock(&self.dirs).display().to_string()
    }

    /// Stops the daemon, keeping pins (enforcement goes on).
    pub fn stop(&mut self) {
        let d = self.d.take().expect("running");
        d.stop_keep_pins();
    }

    /// SIGKILL, as a crash (pins kept).
    pub fn kill(&mut self) {
        let d = self.d.take().expect("running");
        d.kill_keep_pins();
    }

    pub fn restart(&mut self) {
        assert!(self.d.is_none());
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.d = Some(Daemon::start_with_opts(self.dirs.clone(), &args, &[]).expect("restart"));
    }

    /// `corral …` with the given args; JSON stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        self.d().cli_json(args)
    }

    /// `corral lease issue` (by the operator).
    pub fn issue(&self, identity: &str, scopes: &[&str], ttl: &str) -> Value {
        let mut args = vec![
            "lease",
            "issue",
            "--identity",
            identity,
            "--ttl",
            ttl,
            "--json",
        ];
        for s in scopes {
            args.extend(["--scope", s]);
        }
        self.json(&args)
    }

    /// An `agent` probe connects to 127.0.0.1:`port` (allowed by lease
    /// `id`'s grant), then connects until the first EPERM while the operator
    /// revokes the lease. Returns the probe's run (its first connect checked
    /// as allowed, its watch as ended by a refusal), µs from the revoke
    /// command's start to that first EPERM, and the revoke's answer.
    pub fn revoke_and_watch(&self, id: &str, port: u16) -> (ProbeRun, u128, Value) {
        let ps = port.to_string();
        let child = self.spawn_probe(
            "agent",
            &[
                "pid",
                "connect",
                "127.0.0.1",
                &ps,
                "watch-deny",
                "127.0.0.1",
                &ps,
                "10",
            ],
        );
        std::thread::sleep(Duration::from_millis(800));
        let t0 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos();
        let rv = self.json(&["lease", "revoke", id, "--json"]);
        let r = child.finish_within(PROBE_WAIT);
        r.assert_ok("connect", 0);
        let w = r.step("watch-deny", 0);
        assert_eq!(w["ok"], true, "revoke must close the grant: {r:#?}");
        let flip = w["flip_ns"].as_u64().expect("flip") as u128;
        (r, flip.saturating_sub(t0) / 1000, rv)
    }

    /// The probe, in the background, as `identity`.
    pub fn spawn_probe(&self, identity: &str, steps: &[&str]) -> BgProbe {
        self.d().spawn_probe_as(identity, steps)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.d.is_none() {
            cleanup(&self.dirs);
        }
    }
}

pub fn lease_sock(dirs: &Dirs) -> PathBuf {
    dirs.socket.with_file_name("lease.sock")
}

/// A policy that may connect to the lease socket `sock`, with
/// `extra_allow` network rules and a `leases` section.
pub fn policy(name: &str, sock: &Path, extra_allow: &str, leases: &str) -> String {
    format!(
        "[identity]\nname = \"{name}\"\n[network]\nallow = [{extra_allow}]\nunix = [\"{}\"]\n{leases}\n",
        sock.display()
    )
}

/// Scopes `tickets:read`, `db:write` (a grant to 127.0.0.1:`port`) and
/// `refunds:issue` (needs approval; a grant to 127.0.0.1:`approval_port`
/// and a file grant); max_ttl 1m, approval_timeout 2s.
pub fn leases_section(port: u16, approval_port: u16) -> String {
    format!(
        "[leases]\nmax_ttl = \"1m\"\nscopes = [\"tickets:read\", \"db:write\", \"refunds:issue\"]\n\
         approval = [\"refunds:issue\"]\napproval_timeout = \"2s\"\n\
         [[leases.grant]]\nscope = \"db:write\"\nnetwork = [\"tcp://127.0.0.1:{port}\"]\n\
         [[leases.grant]]\nscope = \"refunds:issue\"\nnetwork = [\"tcp://127.0.0.1:{approval_port}\"]\n\
         files = {{ write = [\"/srv/refunds/\"] }}\n"
    )
}

/// A `POST /v1/leases` body: scopes, ttl, and the fields of `extra`.
pub fn call_body(scopes: &[&str], ttl: &str, extra: Value) -> String {
    let mut b = json!({ "scopes": scopes, "ttl": ttl });
    if let (Some(o), Some(e)) = (b.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    b.to_string()
}

/// `corral lease verify` with only a public key (PEM or JWK set) and no
/// daemon to ask; `--json` when `json`.
pub fn verify_offline(pubkey: &Path, token: &str, json: bool) -> Output {
    let mut c = Command::new(corral_bin());
    c.args(["--socket", "/nonexistent/corral.sock", "lease", "verify"]);
    if json {
        c.arg("--json");
    }
    c.arg("--pubkey")
        .arg(pubkey)
        .arg(token)
        .output()
        .expect("verify")
}

/// The cgroup is frozen (`cgroup.events`).
pub fn frozen(cg: &Path) -> bool {
    std::fs::read_to_string(cg.join("cgroup.events"))
        .map(|s| s.lines().any(|l| l == "frozen 1"))
        .unwrap_or(false)
}
