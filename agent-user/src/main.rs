//! `corral`: the daemon and its CLI in one binary.

mod cgroup;
mod cli;
mod daemon;
mod event;
mod policy;
mod sandbox;

fn main() -> std::process::ExitCode {
    cli::main()
}
