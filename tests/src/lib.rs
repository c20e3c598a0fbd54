//! Harness for Corral's privileged integration tests.
//!
//! Every test gets its own daemon with a unique cgroup parent, pin dir,
//! socket and policy dir, so tests never touch the host's own processes or a
//! real installation; `Drop` stops the daemon and removes pins and cgroups,
//! also when the test panics. Shape borrowed from pulsar's test runner:
//! `let tail = d.tail(); d.run_as(..); tail.expect(|e| ..)`.
//!
//! Beside this file: `probe` (running the probe: in an identity, outside,
//! as another user, in the background), `assert` (step and event checks),
//! `net` (listeners, sinks and the connect denial proof), `policy` (policy
//! texts, bundled policies, mechanisms), `files` (scratch trees for
//! `[files]` rules) and `lease` (a daemon whose policies may name its lease
//! socket).

mod assert;
pub mod audit;
mod files;
pub mod lease;
mod net;
mod policy;
mod probe;

pub use assert::*;
pub use files::*;
pub use net::*;
pub use policy::*;
pub use probe::*;

use std::{
    io::{BufRead as _, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use serde_json::Value;

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn corral_bin() -> PathBuf {
    std::env::var_os("CORRAL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/release/corral"))
}

/// The probe binary cargo built next to the test executables
/// (`target/<profile>/deps/<test>` → `target/<profile>/corral-probe`).
pub fn probe_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join("corral-probe")
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("root")
        .to_path_buf()
}

/// Privileged tests need root; without it they record a skip and do
/// nothing.
pub fn is_root() -> bool {
    // SAFETY: plain syscall.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        skip("needs root (run through `cargo xtask test`)");
    }
    root
}

/// Records that the running test (or part of it, `why` says which) did not
/// run here. libtest reports such a test as `ok`, so the reason is also
/// appended to `$CORRAL_SKIP_LOG`, where `cargo xtask test` counts and
/// lists skips in its summary.
pub fn skip(why: &str) {
    let t = std::thread::current();
    // The test binary's name without cargo's hash: `files_lsm-0a1b…`.
    let suite = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| s.rsplit_once('-').map_or(s.clone(), |(a, _)| a.to_string()))
        .unwrap_or_default();
    let test = format!("{suite}::{}", t.name().unwrap_or("?"));
    eprintln!("skipping ({test}): {why}");
    if let Some(log) = std::env::var_os("CORRAL_SKIP_LOG") {
        use std::io::Write as _;
        let line = format!("{test}\t{}\n", why.replace('\n', " "));
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

pub fn cgroup2_root() -> PathBuf {
    agent_user::cgroup::cgroup2_root().expect("cgroup2 mount")
}

/// Where a daemon keeps its state; reused by a restarted daemon.
#[derive(Clone, Debug)]
pub struct Dirs {
    pub tag: String,
    pub policy_dir: PathBuf,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    /// Relative to the cgroup v2 root.
    pub cgroup_parent: String,
    /// A cgroup (absolute) the daemon is started in; `None`: the test's own.
    pub daemon_cgroup: Option<PathBuf>,
}

impl Dirs {
    pub fn new(base: &Path) -> Dirs {
        let tag = format!(
            "corral-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let policy_dir = base.join("policies");
        std::fs::create_dir_all(&policy_dir).expect("policy dir");
        Dirs {
            policy_dir,
            state_dir: base.join("state"),
            socket: base.join("corral.sock"),
            pin_dir: PathBuf::from("/sys/fs/bpf").join(&tag),
            cgroup_parent: tag.clone(),
            tag,
            daemon_cgroup: None,
        }
    }

    pub fn parent_cgroup(&self) -> PathBuf {
        cgroup2_root().join(&self.cgroup_parent)
    }
}

pub struct Daemon {
    pub dirs: Dirs,
    child: Option<Child>,
    log: PathBuf,
    _base: Option<tempfile::TempDir>,
}

impl Daemon {
    /// A daemon on the given policy files (name, TOML); waits until ready.
    pub fn start(policies: &[(&str, &str)]) -> Daemon {
        Daemon::start_opts(policies, &[], &[])
    }

    /// A daemon on one policy file named for its identity, and that
    /// identity's event stream.
    pub fn start_tailed(identity: &str, policy: &str) -> (Daemon, Tail) {
        let d = Daemon::start(&[(identity, policy)]);
        let tail = d.tail(Some(identity));
        (d, tail)
    }

    /// Starts a daemon on existing dirs (e.g. after `stop_keep_pins`).
    /// Returns the daemon's stderr if it exits instead of becoming ready.
    pub fn start_with(dirs: Dirs) -> Result<Daemon, String> {
        Daemon::start_with_opts(dirs, &[], &[])
    }

    /// Like `start_with`, with extra `corral daemon` arguments and
    /// environment variables.
    pub fn start_with_opts(
        dirs: Dirs,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Daemon, String> {
        std::fs::create_dir_all(&dirs.state_dir).expect("state dir");
        let log = dirs.state_dir.join(format!(
            "daemon-{}.log",
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let logf = std::fs::File::create(&log).expect("log");
        let mut cmd = Command::new(corral_bin());
        if let Some(cg) = &dirs.daemon_cgroup {
            let procs = std::ffi::CString::new(path_str(&cg.join("cgroup.procs"))).expect("no NUL");
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                    if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(fd);
                    Ok(())
                })
            };
        }
        let child = cmd
            .arg("--socket")
            .arg(&dirs.socket)
            .arg("daemon")
            .arg("--policy-dir")
            .arg(&dirs.policy_dir)
            .arg("--state-dir")
            .arg(&dirs.state_dir)
            .arg("--pin-dir")
            .arg(&dirs.pin_dir)
            .arg("--cgroup-parent")
            .arg(&dirs.cgroup_parent)
            .args(args)
            .envs(envs.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("spawn corral daemon");
        let mut d = Daemon {
            dirs,
            child: Some(child),
            log,
            _base: None,
        };
        // Under TCG emulation (the vm-test guest) the verifier runs tens of
        // times slower, and slower still when the host is busy: a start
        // that takes 2 s natively took over 30 s there.
        let ready_within = Duration::from_secs(if files::in_vm() { 180 } else { 30 });
        let deadline = Instant::now() + ready_within;
        loop {
            if let Some(c) = d.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                d.child = None;
                return Err(format!("daemon exited with {status}:\n{}", d.log_text()));
            }
            if d.dirs.socket.exists() && d.cli(&["status", "--json"]).status.success() {
                return Ok(d);
            }
            if Instant::now() > deadline {
                panic!("daemon not ready after {ready_within:?}:\n{}", d.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's pid (0 once it was stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(corral_bin())
            .arg("--socket")
            .arg(&self.dirs.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run corral")
    }

    pub fn cli_json(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "corral {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json output")
    }

    /// Runs the probe with `steps` as `identity` via `corral run`.
    pub fn probe_as(&self, identity: &str, steps: &[&str]) -> ProbeRun {
        let mut args = vec!["run", "--identity", identity, "--"];
        let probe = probe_bin();
        args.push(probe.to_str().expect("utf-8"));
        args.extend_from_slice(steps);
        ProbeRun::from(self.cli(&args))
    }

    pub fn write_policy(&self, name: &str, text: &str) {
        let tmp = self.dirs.policy_dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write policy");
        std::fs::rename(&tmp, self.dirs.policy_dir.join(format!("{name}.toml"))).expect("rename");
    }

    /// Subscribes to the event stream; returns once the stream is live.
    pub fn tail(&self, identity: Option<&str>) -> Tail {
        let mut cmd = Command::new(corral_bin());
        cmd.arg("--socket")
            .arg(&self.dirs.socket)
            .args(["tail", "--json"]);
        if let Some(i) = identity {
            cmd.args(["--identity", i]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("corral tail");
        let rx = json_lines(child.stdout.take().expect("stdout"));
        let t = Tail { child, rx };
        t.expect(|e| e["kind"] == "hello");
        t
    }

    /// SIGTERM; pins stay (enforcement continues while no daemon runs).
    pub fn stop_keep_pins(mut self) -> Dirs {
        self.terminate();
        let dirs = self.dirs.clone();
        // Ownership of the temp dir moves to the caller's next daemon.
        if let Some(base) = self._base.take() {
            std::mem::forget(base);
        }
        self.child = None;
        std::mem::forget(self);
        dirs
    }

    /// SIGKILL, as a crash: no shutdown work at all; pins stay.
    pub fn kill_keep_pins(mut self) -> Dirs {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let dirs = self.dirs.clone();
        if let Some(base) = self._base.take() {
            std::mem::forget(base);
        }
        std::mem::forget(self);
        dirs
    }

    fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain syscall on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
        cleanup(&self.dirs);
    }
}

/// Every link pin under a pin dir, by file name (one per program and
/// cgroup: a handed-over link is not duplicated).
pub fn link_pins(pin_dir: &Path) -> Vec<String> {
    std::fs::read_dir(pin_dir.join("links"))
        .expect("links dir")
        .flatten()
        .flat_map(|cg| std::fs::read_dir(cg.path()).expect("cg links").flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Removes pins and the test's cgroups (killing any probe left inside: they
/// are this test's own processes).
pub fn cleanup(dirs: &Dirs) {
    let parent = dirs.parent_cgroup();
    if parent.exists() {
        let kill = parent.join("cgroup.kill");
        if kill.exists() {
            let _ = std::fs::write(&kill, "1");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = Command::new(corral_bin())
        .args(["unload", "--pin-dir"])
        .arg(&dirs.pin_dir)
        .args(["--cgroup-parent", &dirs.cgroup_parent])
        .stdout(Stdio::null())
        .status();
}

pub struct Tail {
    child: Child,
    rx: mpsc::Receiver<Value>,
}

impl Tail {
    /// Waits (up to 10 s) for an event matching `pred`; panics listing what
    /// arrived instead.
    pub fn expect(&self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(v) if pred(&v) => return v,
                Ok(v) => seen.push(v),
                Err(_) => break,
            }
        }
        panic!("expected event did not arrive; got: {seen:#?}");
    }

    /// Collects everything that arrives within `d`.
    pub fn drain_for(&self, d: Duration) -> Vec<Value> {
        let deadline = Instant::now() + d;
        let mut out = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(v) => out.push(v),
                Err(_) => break,
            }
        }
        out
    }

    /// The events of this `kind` among everything that arrives within `d`.
    pub fn drain_kind(&self, kind: &str, d: Duration) -> Vec<Value> {
        let mut evs = self.drain_for(d);
        evs.retain(|e| e["kind"] == kind);
        evs
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// `start` with extra `corral daemon` arguments and environment.
    pub fn start_opts(policies: &[(&str, &str)], args: &[&str], envs: &[(&str, &str)]) -> Daemon {
        let base = tempfile::tempdir().expect("tempdir");
        let dirs = Dirs::new(base.path());
        for (name, text) in policies {
            std::fs::write(dirs.policy_dir.join(format!("{name}.toml")), text).expect("policy");
        }
        let mut d = Daemon::start_with_opts(dirs, args, envs).expect("daemon did not start");
        d._base = Some(base);
        d
    }

    /// One API request, raw HTTP/1.1 on the socket (much cheaper than the
    /// CLI when a test polls): the status code and the JSON body.
    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        use std::io::{Read as _, Write as _};
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut s = std::os::unix::net::UnixStream::connect(&self.dirs.socket).expect("api socket");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: corral\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("api request");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("api response");
        let code = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let json = out
            .split_once("\r\n\r\n")
            .and_then(|(_, b)| serde_json::from_str(b).ok())
            .unwrap_or(Value::Null);
        (code, json)
    }

    /// `GET /v1/status`.
    pub fn status(&self) -> Value {
        self.api("GET", "/v1/status", None).1
    }

    /// The policy generation in force (successful reloads so far).
    pub fn generation(&self) -> u64 {
        self.status()["reload"]["generation"]
            .as_u64()
            .expect("generation")
    }

    /// Waits (up to `within`) until the generation is past `than`; gives it.
    pub fn wait_generation_past(&self, than: u64, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let g = self.generation();
            if g > than {
                return g;
            }
            if Instant::now() > deadline {
                panic!(
                    "generation still {g} after {within:?}; status: {:#}\n{}",
                    self.status(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits (up to 5 s) for a failed reload after `after` (a status
    /// `reload.last_time`); gives the status.
    pub fn wait_failed_reload(&self, after: &Value) -> Value {
        wait_for(Duration::from_secs(5), "a failed reload", || {
            let st = self.status();
            let r = &st["reload"];
            (r["last_time"] != *after && r["last_ok"] == false).then_some(st)
        })
    }
}

/// Reads JSON lines from `r` in the background; lines that are not JSON
/// are skipped.
pub(crate) fn json_lines(r: impl Read + Send + 'static) -> mpsc::Receiver<Value> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && tx.send(v).is_err()
            {
                return;
            }
        }
    });
    rx
}

/// Polls `f` every 10 ms until it gives `Some`, for at most `within`;
/// fails the test naming `what` otherwise.
pub fn wait_for<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A path as the `&str` a probe argument needs.
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

/// Creates `p` empty (a probe's `wait-file` flag).
pub fn touch(p: &Path) {
    std::fs::write(p, b"").expect("touch");
}
