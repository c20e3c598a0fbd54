//! Command-line interface: `corral daemon` and the client commands.

pub(crate) mod audit;
mod client;
mod cmds;
mod doctor;
mod install;
mod lease;
mod policy;
mod run;
mod status_text;
mod suggest;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::daemon::DaemonArgs;
use client::{Client, DEFAULT_SOCKET, Unreachable};

#[derive(Parser, Debug)]
#[command(
    name = "corral",
    version,
    about = "Zero-trust control of AI agents in the kernel"
)]
pub struct Cli {
    /// The daemon's API socket.
    #[arg(long, global = true, env = "CORRAL_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the daemon (foreground; systemd runs it as a service).
    // Boxed: its flags are several times the size of any other command's.
    Daemon(Box<DaemonArgs>),
    /// Start a command as an agent identity.
    Run(run::RunArgs),
    /// Put an existing process or cgroup under an identity.
    Assign(cmds::AssignArgs),
    /// List identities with their cgroups, processes, rules and counters.
    Identities(cmds::JsonFlag),
    /// Stream kernel events (denials) as they happen.
    Tail(cmds::TailArgs),
    /// The daemon's state: mechanisms in force, reloads, event counters.
    Status(cmds::JsonFlag),
    /// Check what this host can enforce (works without a daemon).
    Doctor(cmds::JsonFlag),
    /// Check, apply and inspect policies.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// Detach every program and remove pins and empty identity cgroups.
    Unload(cmds::UnloadArgs),
    /// Install the binary, the systemd unit and the policy directory.
    Install(install::InstallArgs),
    /// Short-lived credential leases: issue, renew, revoke, approve, verify.
    #[command(subcommand)]
    Lease(lease::LeaseCmd),
    /// Release an identity frozen by an anomaly response (and resume its
    /// lease requests and token rotation).
    Thaw(lease::ThawArgs),
    /// The tamper-evident audit log: verify, query, export the key.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let client = Client {
        socket: cli.socket.clone(),
    };
    let result = match cli.command {
        Cmd::Daemon(a) => crate::daemon::run(*a, cli.socket).map(|_| 0),
        Cmd::Run(a) => run::run(&client, &a),
        Cmd::Assign(a) => cmds::assign(&client, &a),
        Cmd::Identities(a) => cmds::identities(&client, &a),
        Cmd::Tail(a) => cmds::tail(&client, &a),
        Cmd::Status(a) => cmds::status(&client, &a),
        Cmd::Doctor(a) => doctor::run(&client, &a),
        Cmd::Policy(p) => policy::run(&client, p),
        Cmd::Unload(a) => cmds::unload(&a),
        Cmd::Install(a) => install::run(&a).map(|_| 0),
        Cmd::Lease(c) => lease::run(&client, c),
        Cmd::Thaw(a) => lease::thaw(&client, &a),
        Cmd::Audit(c) => audit::run(c),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("corral: error: {e:#}");
            if e.downcast_ref::<run::UnknownIdentity>().is_some()
                || e.downcast_ref::<cmds::UsageError>().is_some()
            {
                ExitCode::from(run::EXIT_UNKNOWN_IDENTITY)
            } else if e.downcast_ref::<Unreachable>().is_some() {
                ExitCode::from(3)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
