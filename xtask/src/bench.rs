//! `cargo xtask bench`: a placeholder until benchmarks exist.

use std::path::Path;

use anyhow::Result;

pub fn run(_ws: &Path) -> Result<()> {
    println!("no benchmarks yet");
    Ok(())
}
