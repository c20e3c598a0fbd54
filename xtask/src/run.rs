//! `cargo xtask run [-- extra daemon args]`: setup, build, then the daemon in
//! the foreground on `<ws>/policies`, as root.

use std::{os::unix::process::CommandExt as _, path::Path};

use anyhow::{Context as _, Result};

use crate::{build, util};

/// Where `xtask run` puts the API socket (the systemd unit's RuntimeDirectory).
const SOCKET: &str = "/run/corral/corral.sock";

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Extra arguments for `corral daemon`, after `--`.
    #[arg(last = true)]
    pub daemon_args: Vec<String>,
}

pub fn run(ws: &Path, args: &RunArgs) -> Result<()> {
    let bin = build::run(ws)?;
    util::header("run the daemon (Ctrl-C stops it and unloads its programs)");
    // Under systemd, RuntimeDirectory= creates the socket's directory.
    util::run(util::as_root("mkdir", &[])?.args(["-p", "-m", "0755", "/run/corral"]))?;
    let mut daemon = util::as_root(&bin, &[])?;
    daemon
        .arg("daemon")
        .arg("--policy-dir")
        .arg(ws.join("policies"))
        .args(["--socket", SOCKET, "--unload-on-exit"])
        .args(&args.daemon_args)
        .current_dir(ws);
    let line = util::display(&daemon);
    println!("$ {line}");
    // exec: signals (Ctrl-C) go straight to the daemon.
    let err = daemon.exec();
    Err(err).with_context(|| format!("cannot exec `{line}`"))
}
