//! `corral`: the daemon and its CLI in one binary.

fn main() -> std::process::ExitCode {
    agent_user::cli::main()
}
