//! Harness for Corral's privileged integration tests.
//!
//! Every test gets its own daemon with a unique cgroup parent, pin dir,
//! socket and policy dir, so tests never touch the host's own processes or a
//! real installation; `Drop` stops the daemon and removes pins and cgroups,
//! also when the test panics. Shape borrowed from pulsar's test runner:
//! `let tail = d.tail(); d.run_as(..); tail.expect(|e| ..)`.

use std::{
    io::{BufRead as _, BufReader},
    net::{TcpListener, UdpSocket},
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

/// Privileged tests need root; without it they say so and do nothing.
pub fn is_root() -> bool {
    // SAFETY: plain syscall.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipping: needs root (run through `cargo xtask test`)");
    }
    root
}

pub fn cgroup2_root() -> PathBuf {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mi.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .expect("cgroup2 mount")
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
        let base = tempfile::tempdir().expect("tempdir");
        let dirs = Dirs::new(base.path());
        for (name, text) in policies {
            std::fs::write(dirs.policy_dir.join(format!("{name}.toml")), text).expect("policy");
        }
        let mut d = Daemon::start_with(dirs).expect("daemon did not start");
        d._base = Some(base);
        d
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
        let child = Command::new(corral_bin())
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
        let deadline = Instant::now() + Duration::from_secs(30);
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
                panic!("daemon not ready after 30 s:\n{}", d.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
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
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Result of one probe run: its exit status and JSON step lines.
#[derive(Debug)]
pub struct ProbeRun {
    pub code: Option<i32>,
    pub steps: Vec<Value>,
    pub stderr: String,
}

impl From<Output> for ProbeRun {
    fn from(o: Output) -> ProbeRun {
        let steps = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        ProbeRun {
            code: o.status.code(),
            steps,
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl ProbeRun {
    pub fn step(&self, op: &str, n: usize) -> &Value {
        self.steps
            .iter()
            .filter(|s| s["op"] == op)
            .nth(n)
            .unwrap_or_else(|| panic!("no step {op}#{n} in {self:#?}"))
    }

    pub fn pid(&self) -> u64 {
        self.step("pid", 0)["pid"].as_u64().expect("pid")
    }
}

/// Runs the probe directly, outside any identity.
pub fn probe_outside(steps: &[&str]) -> ProbeRun {
    ProbeRun::from(
        Command::new(probe_bin())
            .args(steps)
            .output()
            .expect("probe"),
    )
}

/// A TCP listener that accepts in the background; gives its port.
pub fn tcp_listener(addr: &str) -> u16 {
    let l = TcpListener::bind(addr).expect("listen");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || for _ in l.incoming() {});
    port
}

/// A UDP socket that exists so sends have a target; gives its port.
pub fn udp_sink(addr: &str) -> u16 {
    let s = UdpSocket::bind(addr).expect("udp bind");
    let port = s.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut b = [0u8; 64];
        while s.recv(&mut b).is_ok() {}
    });
    port
}

pub const EPERM: i64 = 1;

/// Asserts a net denial event's identity, pid, comm and target.
pub fn assert_net_event(ev: &Value, identity: &str, pid: u64, op: &str, addr: &str, port: u16) {
    assert_eq!(ev["kind"], "net", "{ev:#}");
    assert_eq!(ev["identity"], identity, "{ev:#}");
    assert_eq!(ev["tgid"].as_u64(), Some(pid), "{ev:#}");
    assert_eq!(ev["comm"], "corral-probe", "{ev:#}");
    assert_eq!(ev["net"]["op"], op, "{ev:#}");
    assert_eq!(ev["net"]["addr"], addr, "{ev:#}");
    assert_eq!(ev["net"]["port"].as_u64(), Some(port as u64), "{ev:#}");
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

    /// Starts the probe as `identity` in the background; its step lines can
    /// be waited for one by one while it runs.
    pub fn spawn_probe_as(&self, identity: &str, steps: &[&str]) -> BgProbe {
        let mut child = Command::new(corral_bin())
            .arg("--socket")
            .arg(&self.dirs.socket)
            .args(["run", "--identity", identity, "--"])
            .arg(probe_bin())
            .args(steps)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("corral run probe");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
        BgProbe {
            child,
            rx,
            steps: Vec::new(),
        }
    }
}

/// A probe running in the background (see `Daemon::spawn_probe_as`).
pub struct BgProbe {
    child: Child,
    rx: mpsc::Receiver<Value>,
    steps: Vec<Value>,
}

impl BgProbe {
    /// The `corral run` launcher's pid (the probe's parent and, for
    /// `[syscalls]`, its seccomp supervisor).
    pub fn launcher_pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (up to 30 s) for the probe's next step line with this op.
    pub fn next_step(&mut self, op: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(v) => {
                    self.steps.push(v.clone());
                    if v["op"] == op {
                        return v;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("probe step {op} did not come; got {:#?}", self.steps);
    }

    /// Waits for the probe to exit; every step it printed.
    pub fn finish(mut self) -> ProbeRun {
        let status = self.child.wait().expect("probe wait");
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read as _;
            let _ = e.read_to_string(&mut stderr);
        }
        let mut steps = std::mem::take(&mut self.steps);
        while let Ok(v) = self.rx.recv_timeout(Duration::from_secs(5)) {
            steps.push(v);
        }
        ProbeRun {
            code: status.code(),
            steps,
            stderr,
        }
    }
}

impl Drop for BgProbe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
