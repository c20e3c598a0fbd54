//! `cargo xtask build`: setup, then the release `corral` binary.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::{setup, util};

pub fn run(ws: &Path) -> Result<PathBuf> {
    setup::run(ws)?;
    util::header("build corral (release)");
    release(ws)
}

/// `cargo build --release -p agent-user` (no setup); returns the binary's path.
pub fn release(ws: &Path) -> Result<PathBuf> {
    util::run(
        util::cargo()
            .args(["build", "--release", "-p", "agent-user"])
            .current_dir(ws),
    )?;
    let bin = util::corral_bin(ws);
    if !bin.is_file() {
        bail!("build succeeded but {} is missing", bin.display());
    }
    println!("built {}", bin.display());
    Ok(bin)
}
