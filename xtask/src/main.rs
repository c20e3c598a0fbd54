//! `cargo xtask <command>`: everything needed to build, run and test Corral on
//! a fresh machine (see README.md). One module per command; `util` holds the
//! shared process helpers.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod bench_agent;
mod bench_audit;
mod bench_env;
mod bench_files;
mod bench_host;
mod bench_lease;
mod bench_paired;
mod bench_syscall;
mod build;
mod fuzz;
mod lint;
mod packaging_check;
mod run;
mod setup;
mod test;
mod util;
mod vm;

#[derive(Parser, Debug)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Corral's build, run and test automation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Install what building and testing need (idempotent; fast when done):
    /// nightly rust-src, bpf-linker in .tools/, apt packages used by tests.
    Setup,
    /// setup, then build the release `corral` binary.
    Build,
    /// setup + build, then run the daemon in the foreground on ./policies (as root).
    Run(run::RunArgs),
    /// The whole suite (what CI runs): build, unit tests, privileged tests,
    /// systemd unit check.
    Test(test::TestArgs),
    /// rustfmt check, clippy on the host crates and on the eBPF crate.
    Lint,
    /// Benchmarks: connect() cost and event throughput, with baselines, as ratios.
    Bench(bench::BenchArgs),
    /// The libFuzzer targets (policy, event_decode, api, lease_token, btf),
    /// each for a bounded time.
    Fuzz(fuzz::FuzzArgs),
    /// The BPF-LSM tests in a QEMU guest booting Debian's cloud kernel
    /// (also a step of `test`).
    VmTest(vm::VmArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ws = util::workspace_root();
    let result = match cli.command {
        Command::Setup => setup::run(&ws),
        Command::Build => build::run(&ws).map(|_| ()),
        Command::Run(args) => run::run(&ws, &args),
        Command::Test(args) => test::run(&ws, &args),
        Command::Lint => lint::run(&ws),
        Command::Bench(args) => bench::run(&ws, &args),
        Command::Fuzz(args) => fuzz::run(&ws, &args),
        Command::VmTest(args) => vm::run(&ws, &args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nxtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
