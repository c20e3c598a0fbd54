//! `cargo xtask vm-test`: the privileged tests that need BPF LSM, in a QEMU
//! guest booting Debian's cloud kernel (our dev and CI machines cannot load
//! BPF LSM programs; see /work/shared/KERNEL-NOTES.md).
//!
//! 1. apt: `qemu-system-x86`, `busybox-static`, `cpio` when missing;
//! 2. kernel: the newest `linux-image-*-cloud-amd64-unsigned` apt offers,
//!    downloaded and unpacked once into `.cache/vm/` (reused offline);
//! 3. initramfs (gzip'd cpio, rebuilt each run): busybox, an `/init` that
//!    mounts proc, sysfs, devtmpfs, securityfs, bpffs, cgroup2, brings up
//!    `lo` and runs the tests, the `corral` binary, the `corral-tests` test
//!    binaries and probe, and every library `ldd` names;
//! 4. boot: TCG (KVM only where /dev/kvm really runs a stock kernel), under
//!    a hard timeout; QEMU runs in its own process group, dies with xtask
//!    (`PR_SET_PDEATHSIG`) and is killed on timeout or error — never left
//!    behind;
//! 5. the guest prints `CORRAL-VM-RESULT: pass|fail` on the serial console;
//!    that marker (and nothing else) is the step's result.

use std::{
    collections::BTreeSet,
    env, fs,
    io::{BufRead as _, BufReader, Read as _},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{build, setup, util};

/// Debian packages the VM step needs.
pub const APT_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "cpio"];

const MARKER: &str = "CORRAL-VM-RESULT:";
/// Tests proven in the guest: every test of these binaries...
const GUEST_TESTS: &[&str] = &["files_lsm"];
/// ...plus one network test as a sanity check of the rest of Corral there.
const SANITY_TEST: (&str, &str) = (
    "network",
    "tcp_connect_allowed_denied_and_untouched_outside",
);

#[derive(clap::Args, Debug, Clone, Default)]
pub struct VmArgs {
    /// Also run the file-open benchmark in the guest (ratios printed).
    #[arg(long)]
    pub bench: bool,
    /// Only guest tests whose name contains NAME.
    #[arg(long, value_name = "NAME")]
    pub filter: Option<String>,
    /// Hard limit for the whole guest run.
    #[arg(long, default_value_t = 900, value_name = "SECS")]
    pub timeout: u64,
    /// Skip `cargo xtask setup` and the builds (use what target/ holds).
    #[arg(long)]
    pub no_build: bool,
    /// Debugging: run this shell command in the guest instead of the tests
    /// (its exit status is the result).
    #[arg(long, value_name = "SH")]
    pub exec: Option<String>,
}

/// `cargo xtask vm-test`.
pub fn run(ws: &Path, args: &VmArgs) -> Result<()> {
    if !args.no_build {
        util::header("setup");
        setup::ensure(ws)?;
        util::header("build corral (release)");
        build::release(ws)?;
    }
    run_guest(ws, args)
}

/// The step `cargo xtask test` runs, after its own builds.
pub fn run_in_suite(ws: &Path, filter: Option<&str>) -> Result<()> {
    let args = VmArgs {
        filter: filter.map(str::to_owned),
        timeout: timeout_from_env(900),
        no_build: true,
        ..VmArgs::default()
    };
    run_guest(ws, &args)
}

fn timeout_from_env(default: u64) -> u64 {
    env::var("CORRAL_VM_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run_guest(ws: &Path, args: &VmArgs) -> Result<()> {
    let start = Instant::now();
    setup::apt_packages(APT_PACKAGES).context("installing the VM packages")?;
    let tests = test_binaries(ws)?;
    let kernel = kernel(ws).context("getting the guest kernel")?;
    println!(
        "vm: kernel {} (lsm={})",
        kernel.vmlinuz.display(),
        kernel.lsm
    );
    let stage = ws.join("target/vm");
    let initrd = initramfs(&stage, &tests, args).context("building the initramfs")?;
    println!(
        "vm: initramfs {} ({:.1} MiB), ready after {:.1?}",
        initrd.display(),
        fs::metadata(&initrd)?.len() as f64 / (1 << 20) as f64,
        start.elapsed()
    );
    let accel = accel();
    let result = boot(&kernel, &initrd, accel, Duration::from_secs(args.timeout));
    println!("vm: finished in {:.1?}", start.elapsed());
    result
}

// --- binaries ------------------------------------------------------------------

struct Tests {
    corral: PathBuf,
    probe: PathBuf,
    /// (test target name, executable).
    binaries: Vec<(String, PathBuf)>,
}

/// Builds (no-op when fresh) the test crate and asks cargo where its test
/// executables are.
fn test_binaries(ws: &Path) -> Result<Tests> {
    let out = util::output(
        util::cargo()
            .args([
                "test",
                "--release",
                "-p",
                "corral-tests",
                "--no-run",
                "--message-format=json",
            ])
            .current_dir(ws),
    )?;
    let mut binaries = Vec::new();
    for line in out.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
            continue;
        }
        let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str())
        else {
            continue;
        };
        if v["target"]["kind"][0] == "test" {
            binaries.push((name.to_owned(), PathBuf::from(exe)));
        }
    }
    for want in GUEST_TESTS.iter().chain([&SANITY_TEST.0]) {
        if !binaries.iter().any(|(n, _)| n == want) {
            bail!("cargo built no test binary `{want}` in corral-tests");
        }
    }
    let corral = util::corral_bin(ws);
    let probe = ws.join("target/release/corral-probe");
    for p in [&corral, &probe] {
        if !p.is_file() {
            bail!(
                "{} is missing: build first (cargo xtask build)",
                p.display()
            );
        }
    }
    Ok(Tests {
        corral,
        probe,
        binaries,
    })
}

// --- kernel ----------------------------------------------------------------------

struct Kernel {
    vmlinuz: PathBuf,
    /// The `lsm=` boot list: the kernel's default with `bpf` added.
    lsm: String,
}

/// Numeric-aware ordering key: `6.12.117+deb12` > `6.1.0-48`.
fn version_key(s: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut num = String::new();
    let mut text = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !text.is_empty() {
                out.push((0, std::mem::take(&mut text)));
            }
            num.push(c);
        } else {
            if !num.is_empty() {
                out.push((num.parse().unwrap_or(0), String::new()));
                num.clear();
            }
            text.push(c);
        }
    }
    if !num.is_empty() {
        out.push((num.parse().unwrap_or(0), String::new()));
    }
    if !text.is_empty() {
        out.push((0, text));
    }
    out
}

fn newest(names: impl IntoIterator<Item = String>) -> Option<String> {
    names.into_iter().max_by_key(|n| version_key(n))
}

fn apt_kernel_packages() -> Result<Vec<String>> {
    let out = util::output(util::cmd("apt-cache").args([
        "search",
        "--names-only",
        "^linux-image-[0-9].*-cloud-amd64-unsigned$",
    ]))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

fn kernel(ws: &Path) -> Result<Kernel> {
    let cache = ws.join(".cache/vm");
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let mut offered = apt_kernel_packages().unwrap_or_default();
    if offered.is_empty() {
        println!("vm: apt offers no cloud kernel yet; running apt-get update");
        let _ = util::run(
            util::as_root("apt-get", &[("DEBIAN_FRONTEND", "noninteractive".as_ref())])?
                .arg("update")
                .stdin(Stdio::null()),
        );
        offered = apt_kernel_packages().unwrap_or_default();
    }
    let cached = || -> Vec<String> {
        fs::read_dir(&cache)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().join("boot").is_dir())
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let pkg = match newest(offered) {
        Some(p) => p,
        None => newest(cached()).context(
            "apt offers no linux-image-*-cloud-amd64-unsigned package and none is cached in .cache/vm",
        )?,
    };
    let dir = cache.join(&pkg);
    if !dir.join("boot").is_dir() {
        println!("vm: downloading {pkg}");
        let _ = fs::remove_dir_all(&dir);
        util::run(
            util::cmd("apt-get")
                .args(["download", &pkg])
                .current_dir(&cache)
                .stdin(Stdio::null()),
        )?;
        let deb = fs::read_dir(&cache)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.extension().is_some_and(|x| x == "deb")
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{pkg}_")))
            })
            .with_context(|| {
                format!(
                    "apt-get download left no {pkg}_*.deb in {}",
                    cache.display()
                )
            })?;
        let tmp = cache.join(format!(".{pkg}.partial"));
        let _ = fs::remove_dir_all(&tmp);
        util::run(util::cmd("dpkg").arg("-x").arg(&deb).arg(&tmp))?;
        fs::rename(&tmp, &dir)?;
        let _ = fs::remove_file(&deb);
    } else {
        println!("vm: using cached {pkg}");
    }
    let boot = dir.join("boot");
    let find = |prefix: &str| -> Result<PathBuf> {
        fs::read_dir(&boot)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .with_context(|| format!("no {prefix}* in {}", boot.display()))
    };
    let vmlinuz = find("vmlinuz-")?;
    let config = fs::read_to_string(find("config-")?)?;
    let opt = |key: &str| {
        config
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(|v| v.trim_matches('"').to_owned())
    };
    if opt("CONFIG_BPF_LSM").as_deref() != Some("y") {
        bail!("{pkg} is built without CONFIG_BPF_LSM");
    }
    let mut lsm: Vec<String> = opt("CONFIG_LSM")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if !lsm.iter().any(|l| l == "bpf") {
        lsm.push("bpf".into());
    }
    Ok(Kernel {
        vmlinuz,
        lsm: lsm.join(","),
    })
}

// --- initramfs -------------------------------------------------------------------

/// Shared libraries `ldd` names for `bin` (none for static binaries).
fn libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = util::cmd("ldd")
        .arg(bin)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running ldd {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)".
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// Copies `from` to `root/to` (following symlinks), without debug info for
/// our own binaries (they are large and the guest unpacks them into RAM).
fn install(from: &Path, root: &Path, to: &Path, strip: bool) -> Result<()> {
    let dst = root.join(to.strip_prefix("/").unwrap_or(to));
    if let Some(d) = dst.parent() {
        fs::create_dir_all(d)?;
    }
    if strip && util::which("objcopy").is_some() {
        let ok = util::cmd("objcopy")
            .arg("--strip-debug")
            .arg(from)
            .arg(&dst)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(());
        }
    }
    fs::copy(from, &dst).with_context(|| format!("copying {}", from.display()))?;
    Ok(())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// One command the guest runs: program, arguments, extra environment.
type GuestRun = (String, Vec<String>, Vec<(String, String)>);

fn init_script(runs: &[GuestRun]) -> String {
    let mut s = String::from(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mkdir -p /proc /sys /dev /tmp /run /root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t securityfs securityfs /sys/kernel/security
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
exec </dev/null
echo "CORRAL-VM: kernel $(uname -r), active LSMs: $(cat /sys/kernel/security/lsm), cpus: $(nproc)"
export HOME=/root RUST_BACKTRACE=1 CORRAL_BIN=/corral/target/release/corral CORRAL_VM=1
rc=0
"#,
    );
    for (exe, args, envs) in runs {
        let args: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
        let envs: Vec<String> = envs
            .iter()
            .map(|(k, v)| format!("{k}={}", shell_quote(v)))
            .collect();
        s.push_str(&format!(
            "echo {}\n{} {exe} {} || rc=1\n",
            shell_quote(&format!("CORRAL-VM: running {exe} {}", args.join(" "))),
            envs.join(" "),
            args.join(" ")
        ));
    }
    s.push_str(&format!(
        "if [ $rc = 0 ]; then echo \"{MARKER} pass\"; else echo \"{MARKER} fail\"; fi\n\
         sync\npoweroff -f\n"
    ));
    s
}

fn initramfs(stage: &Path, t: &Tests, args: &VmArgs) -> Result<PathBuf> {
    let root = stage.join("root");
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("cleaning {}", root.display()))?;
    }
    fs::create_dir_all(&root)?;
    let busybox = util::which("busybox")
        .or_else(|| Some(PathBuf::from("/bin/busybox")).filter(|p| p.is_file()))
        .context("busybox not found (apt-get install busybox-static)")?;
    install(&busybox, &root, Path::new("/bin/busybox"), false)?;
    // The test harness finds the probe next to `deps/`, as cargo lays out.
    let guest_dir = Path::new("/corral/target/release");
    let mut bins: Vec<(PathBuf, PathBuf)> = vec![
        (t.corral.clone(), guest_dir.join("corral")),
        (t.probe.clone(), guest_dir.join("corral-probe")),
    ];
    let mut runs = Vec::new();
    let filter = args.filter.clone();
    for (name, exe) in &t.binaries {
        let guest = guest_dir
            .join("deps")
            .join(exe.file_name().context("exe name")?);
        let mut targs: Vec<String> = vec!["--test-threads=1".into()];
        if GUEST_TESTS.contains(&name.as_str()) {
            if let Some(f) = &filter {
                targs.push(f.clone());
            }
        } else if name == SANITY_TEST.0 {
            if filter
                .as_deref()
                .is_some_and(|f| !SANITY_TEST.1.contains(f))
            {
                continue;
            }
            targs.extend([SANITY_TEST.1.to_owned(), "--exact".into()]);
        } else {
            continue;
        }
        bins.push((exe.clone(), guest.clone()));
        runs.push((guest.display().to_string(), targs, Vec::new()));
        if args.bench && name == "files_lsm" {
            runs.push((
                guest.display().to_string(),
                vec![
                    "--test-threads=1".into(),
                    "--ignored".into(),
                    "--nocapture".into(),
                    "bench_file_open".into(),
                ],
                vec![("CORRAL_VM_BENCH".into(), "1".into())],
            ));
        }
    }
    if let Some(cmd) = &args.exec {
        runs = vec![("sh".into(), vec!["-c".into(), cmd.clone()], Vec::new())];
    }
    let mut libs: BTreeSet<PathBuf> = BTreeSet::new();
    for (host, guest) in &bins {
        install(host, &root, guest, true)?;
        libs.extend(libraries(host)?);
    }
    libs.extend(libraries(&busybox)?);
    for lib in &libs {
        install(lib, &root, lib, false)?;
    }
    let etc = root.join("etc");
    fs::create_dir_all(&etc)?;
    fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(etc.join("group"), "root:x:0:\n")?;
    let init = root.join("init");
    fs::write(&init, init_script(&runs))?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;

    let out = stage.join("initramfs.cpio.gz");
    let script = format!(
        "cd {} && find . -print0 | cpio --null -o -H newc --quiet | gzip -1 > {}",
        shell_quote(&root.display().to_string()),
        shell_quote(&out.display().to_string())
    );
    util::run(util::cmd("sh").args(["-c", &script]))?;
    Ok(out)
}

// --- boot ------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Accel {
    Tcg,
    Kvm,
}

/// KVM only where it can run a stock kernel: /dev/kvm opens read-write and
/// is backed by kvm_intel/kvm_amd, not PVM (whose guests die on the first
/// SHLX and then hang). `CORRAL_VM_ACCEL=tcg|kvm` overrides.
fn accel() -> Accel {
    match env::var("CORRAL_VM_ACCEL").as_deref() {
        Ok("kvm") => return Accel::Kvm,
        Ok("tcg") => return Accel::Tcg,
        _ => {}
    }
    let module = |m: &str| Path::new("/sys/module").join(m).exists();
    let rw = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if rw && !module("kvm_pvm") && (module("kvm_intel") || module("kvm_amd")) {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

/// Kills QEMU's process group unless it already exited.
struct Qemu {
    child: Child,
    done: bool,
}

impl Qemu {
    fn kill(&mut self) {
        if self.done {
            return;
        }
        let pgid = self.child.id() as i32;
        // SAFETY: plain syscall on the process group we created.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.done = true;
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
    }
}

fn boot(k: &Kernel, initrd: &Path, accel: Accel, timeout: Duration) -> Result<()> {
    let mut c = Command::new("qemu-system-x86_64");
    match accel {
        Accel::Tcg => c.args(["-accel", "tcg", "-cpu", "qemu64"]),
        Accel::Kvm => c.args(["-accel", "kvm", "-cpu", "host"]),
    };
    c.args(["-m", "1024", "-smp", "2", "-no-reboot", "-nodefaults"])
        .args(["-display", "none", "-serial", "stdio"])
        .arg("-kernel")
        .arg(&k.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 quiet lsm={}", k.lsm))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
    unsafe {
        c.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    println!(
        "vm: booting ({accel:?}, timeout {}s): {}",
        timeout.as_secs(),
        util::display(&c)
    );
    let child = c.spawn().context("starting qemu-system-x86_64")?;
    let mut q = Qemu { child, done: false };
    let stdout = q.child.stdout.take().context("qemu stdout")?;
    let mut stderr = q.child.stderr.take().context("qemu stderr")?;
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let mut result: Option<bool> = None;
    let mut tail: Vec<String> = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            q.kill();
            bail!(
                "the guest did not finish within {}s (QEMU killed); last output:\n{}",
                timeout.as_secs(),
                tail.join("\n")
            );
        }
        match rx.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_owned();
                println!("vm| {line}");
                if let Some(r) = line.trim().strip_prefix(MARKER) {
                    result = Some(r.trim() == "pass");
                }
                tail.push(line);
                if tail.len() > 40 {
                    tail.remove(0);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // stdout closed: QEMU is exiting (poweroff); give it a moment.
    let exit_deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < exit_deadline {
        if let Ok(Some(_)) = q.child.try_wait() {
            q.done = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    q.kill();
    let qemu_err = err_thread.join().unwrap_or_default();
    match result {
        Some(true) => {
            println!("vm: guest tests passed");
            Ok(())
        }
        Some(false) => bail!("guest tests failed (output above)"),
        None => bail!(
            "the guest ended without a result marker; QEMU stderr: {}\nlast output:\n{}",
            qemu_err.trim(),
            tail.join("\n")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_kernel_by_version() {
        let names = [
            "linux-image-6.1.0-48-cloud-amd64-unsigned",
            "linux-image-6.12.117+deb12-cloud-amd64-unsigned",
            "linux-image-6.12.9+deb12-cloud-amd64-unsigned",
            "linux-image-6.1.0-9-cloud-amd64-unsigned",
        ];
        assert_eq!(
            newest(names.iter().map(|s| s.to_string())).as_deref(),
            Some("linux-image-6.12.117+deb12-cloud-amd64-unsigned")
        );
    }

    #[test]
    fn init_script_runs_everything_and_reports() {
        let s = init_script(&[(
            "/corral/t".into(),
            vec!["--test-threads=1".into(), "a b".into()],
            vec![("X".into(), "1".into())],
        )]);
        assert!(s.contains("X='1' /corral/t '--test-threads=1' 'a b' || rc=1"));
        assert!(s.contains("mount -t cgroup2 cgroup2 /sys/fs/cgroup"));
        assert!(s.contains("CORRAL-VM-RESULT: pass"));
        assert!(s.trim_end().ends_with("poweroff -f"));
    }
}
