//! The `corral` daemon, CLI and launcher as a library: the binary is a thin
//! `main`, and the privileged tests and fuzz targets use the same types and
//! parsers the daemon runs.

pub mod audit;
pub mod cgroup;
pub mod cli;
pub mod clock;
pub mod daemon;
pub mod event;
pub mod fsutil;
pub mod policy;
pub mod sandbox;
pub mod views;
