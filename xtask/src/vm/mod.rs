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

mod initramfs;
mod kernel;
mod modules;
mod qemu;

use std::{
    env, fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{build, setup, util};

/// Debian packages the VM step needs.
pub const APT_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "cpio", "xz-utils"];

const MARKER: &str = "CORRAL-VM-RESULT:";
/// Tests proven in the guest: every test of these binaries...
const GUEST_TESTS: &[&str] = &[
    "files_lsm",
    "files_lsm_bypass",
    "files_lsm_protect",
    "files_lsm_escape",
    "files_lsm_leases",
    "files_lsm_suggest",
    // The bundled policies' `[files]` rules in `FILE_RULES` (and their
    // network rules again).
    "golden",
    // SCTP and L2TP/IP are modules there (see `modules`).
    "socket_kinds",
];
/// Suites of the Landlock fallback, run in the guest too with BPF LSM
/// switched off (`CORRAL_NO_BPF_LSM`), where they would otherwise skip:
/// (test binary, name filter).
const LANDLOCK_IN_GUEST: &[(&str, &str)] = &[
    ("files_landlock", ""),
    ("files_lsm_leases", "without_bpf_lsm"),
];
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
    let kernel = kernel::kernel(ws).context("getting the guest kernel")?;
    println!(
        "vm: kernel {} (lsm={})",
        kernel.vmlinuz.display(),
        kernel.lsm
    );
    let stage = ws.join("target/vm");
    let mods = match &kernel.modules {
        Some(dir) => modules::resolve(dir).context("reading the guest's kernel modules")?,
        None => Vec::new(),
    };
    let initrd =
        initramfs::initramfs(&stage, &tests, &mods, args).context("building the initramfs")?;
    println!(
        "vm: initramfs {} ({:.1} MiB), ready after {:.1?}",
        initrd.display(),
        fs::metadata(&initrd)?.len() as f64 / (1 << 20) as f64,
        start.elapsed()
    );
    let accel = qemu::accel();
    let result = qemu::boot(&kernel, &initrd, accel, Duration::from_secs(args.timeout));
    println!("vm: finished in {:.1?}", start.elapsed());
    result
}

// --- binaries ------------------------------------------------------------------

struct Tests {
    corral: PathBuf,
    probe: PathBuf,
    /// (test target name, executable).
    binaries: Vec<(String, PathBuf)>,
    /// The bundled policies (put at `/corral/policies` in the guest, where
    /// `golden` reads them through `CORRAL_BUNDLED_POLICIES`).
    policies: PathBuf,
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
    let landlock = LANDLOCK_IN_GUEST.iter().map(|(n, _)| n);
    for want in GUEST_TESTS.iter().chain([&SANITY_TEST.0]).chain(landlock) {
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
        policies: ws.join("policies"),
    })
}
