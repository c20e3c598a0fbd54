//! Shared helpers: workspace paths, printing, running commands.

use std::{
    env,
    ffi::{OsStr, OsString},
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// The workspace root: the parent of xtask's manifest directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// `<ws>/.tools`: bpf-linker and the libLLVM symlinks (see `setup`).
pub fn tools_dir(ws: &Path) -> PathBuf {
    ws.join(".tools")
}

/// The directory holding the bpf-linker that `setup` builds.
pub fn bpf_linker_bin_dir(ws: &Path) -> PathBuf {
    tools_dir(ws).join("bpf-linker/bin")
}

/// The release `corral` binary.
pub fn corral_bin(ws: &Path) -> PathBuf {
    ws.join("target/release/corral")
}

/// A section header.
pub fn header(title: &str) {
    println!("\n==> {title}");
}

/// A command with the environment `cargo run` added for xtask itself removed,
/// so nested cargo invocations and the programs we start behave as if run
/// from a shell. `RUSTUP_TOOLCHAIN` is kept on purpose: nested `cargo` uses the
/// toolchain xtask was started with, and `+nightly` overrides it.
pub fn cmd(program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new(program);
    for (key, _) in env::vars_os() {
        let Some(k) = key.to_str() else { continue };
        if k.starts_with("CARGO_PKG_")
            || matches!(
                k,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
            )
        {
            c.env_remove(&key);
        }
    }
    // `cargo run` prepends target/ and the toolchain's lib dirs (which hold
    // a libLLVM) to LD_LIBRARY_PATH; drop those entries again.
    if let Some(paths) = env::var_os("LD_LIBRARY_PATH") {
        let rustup_home = rustup_home();
        let kept: Vec<PathBuf> = env::split_paths(&paths)
            .filter(|p| {
                !p.starts_with(workspace_root().join("target"))
                    && !p.starts_with(rustup_home.join("toolchains"))
            })
            .collect();
        if kept.is_empty() {
            c.env_remove("LD_LIBRARY_PATH");
        } else if let Ok(joined) = env::join_paths(kept) {
            c.env("LD_LIBRARY_PATH", joined);
        }
    }
    c
}

/// `cargo` (the rustup proxy on PATH, so `+nightly` works).
pub fn cargo() -> Command {
    cmd("cargo")
}

pub fn rustup_home() -> PathBuf {
    env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".rustup"))
}

pub fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cargo"))
}

fn home() -> PathBuf {
    env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// A printable shell-like rendering of a command line.
pub fn display(c: &Command) -> String {
    let mut s = String::new();
    for (k, v) in c.get_envs() {
        if let Some(v) = v {
            s.push_str(&format!("{}={} ", k.to_string_lossy(), quote(v)));
        }
    }
    s.push_str(&quote(c.get_program()));
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&quote(a));
    }
    s
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@+,%".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs `c` (printing it), inheriting stdio; fails with a clear message.
pub fn run(c: &mut Command) -> Result<()> {
    let line = display(c);
    println!("$ {line}");
    let status = c
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `c` quietly and returns its stdout; fails (with its stderr) if it fails.
pub fn output_bytes(c: &mut Command) -> Result<Vec<u8>> {
    let line = display(c);
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// `output_bytes`, as text.
pub fn output(c: &mut Command) -> Result<String> {
    output_bytes(c).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Whether this process runs with effective uid 0 (from /proc, std only).
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// `name` resolved on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A command that runs `program` as root: directly when we are root, else
/// through `sudo` (which must exist). `sudo` resets PATH and may reset the
/// rustup variables, so they are passed explicitly through `env`.
pub fn as_root(program: impl AsRef<OsStr>, envs: &[(&str, &OsStr)]) -> Result<Command> {
    if is_root() {
        let mut c = cmd(program);
        for (k, v) in envs {
            c.env(k, v);
        }
        return Ok(c);
    }
    let Some(sudo) = which("sudo") else {
        bail!("this step needs root and `sudo` is not installed: run it as root");
    };
    let mut c = cmd(sudo);
    c.arg("-E").arg("env");
    let mut pass = |k: &str, v: &OsStr| {
        let mut kv = OsString::from(k);
        kv.push("=");
        kv.push(v);
        c.arg(kv);
    };
    if let Some(path) = env::var_os("PATH") {
        pass("PATH", &path);
    }
    pass("RUSTUP_HOME", rustup_home().as_os_str());
    pass("CARGO_HOME", cargo_home().as_os_str());
    for (k, v) in envs {
        pass(k, v);
    }
    c.arg(program);
    Ok(c)
}

/// A loopback port free for TCP (and UDP on the same number).
pub fn free_port() -> u16 {
    let t = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let p = t.local_addr().expect("addr").port();
    // Keep UDP free on the same number too.
    let _ = std::net::UdpSocket::bind(("127.0.0.1", p));
    p
}
