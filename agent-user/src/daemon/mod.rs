//! `corral daemon`: loads and pins the programs, applies the policy
//! directory, serves the API and streams events.

mod api;
mod audit;
mod capabilities;
mod conn;
mod dns;
mod enforcer;
mod events;
mod fileobs;
#[doc(hidden)]
pub mod harness;
#[cfg(test)]
mod harness_seeds;
mod hostcost;
mod inspect;
pub mod kernel;
pub mod lease;
pub mod llaudit;
mod loader;
mod lsm;
mod mechanism;
mod metrics;
#[cfg(test)]
mod object_names;
mod otlp;
mod pins;
#[cfg(test)]
mod prop_files;
#[cfg(test)]
mod prop_net;
mod reload;
mod reports;
mod snapshot;
mod start;
mod state_files;
mod syscall_need;
mod syscalls;
mod unix;
mod watch;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tokio::net::UnixListener;

pub use kernel::lsm_probe::kernel_probe as lsm_kernel_probe;
pub use loader::{object_is_stub, unload};
pub use reload::compile_dir;
pub use syscalls::task_offsets;
pub use unix::kernel_support as unix_kernel_support;

/// `corral daemon --landlock-pids`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LandlockPids {
    #[default]
    Process,
    Session,
}

#[derive(clap::Args, Debug, Clone)]
pub struct DaemonArgs {
    /// Directory of policy files, one identity per `*.toml`.
    #[arg(long, default_value = "/etc/corral/policies")]
    pub policy_dir: PathBuf,
    /// Group allowed to use the API socket (mode becomes 0660).
    #[arg(long)]
    pub socket_group: Option<String>,
    #[arg(long, default_value = "/var/lib/corral")]
    pub state_dir: PathBuf,
    /// Where maps and links are pinned (on bpffs; mounted if missing).
    #[arg(long, default_value = "/sys/fs/bpf/corral")]
    pub pin_dir: PathBuf,
    /// The daemon's cgroup, relative to the cgroup v2 root; identities get
    /// one child each.
    #[arg(long, default_value = "corral")]
    pub cgroup_parent: String,
    /// Ring buffer size in bytes (power of two, at least 16 MiB by default).
    #[arg(long, default_value_t = 16 * 1024 * 1024, value_parser = parse_ringbuf)]
    pub ringbuf_size: u32,
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Where Landlock's audit records report the Landlock fallback's
    /// denials: `process` names each refused process (agents keep an audit
    /// context: ~+200 ns on each of their syscalls); `session` names the
    /// process that started the agent, and agents pay nothing for it.
    #[arg(long, value_enum, default_value_t = LandlockPids::Process)]
    pub landlock_pids: LandlockPids,
    /// Detach programs and remove pins and empty cgroups on exit. Without
    /// it, enforcement stays in force while the daemon is down (restart,
    /// upgrade) — the default for a service.
    #[arg(long)]
    pub unload_on_exit: bool,
    /// Do not watch the policy dir (reload with SIGHUP or `corral policy
    /// apply` only).
    #[arg(long)]
    pub no_watch: bool,
    /// Quiet time that ends a burst of policy dir changes (one reload per
    /// burst).
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    pub watch_debounce: std::time::Duration,
    /// How often host names in rules are resolved again (clamped to
    /// 5s..10min; `CORRAL_DNS_REFRESH_FLOOR` lowers the floor, for tests). A
    /// name that stops resolving keeps its last addresses for 10 intervals
    /// (at most 1h), then its allow rules are dropped.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub dns_refresh: std::time::Duration,
    /// The agent socket, where processes of an identity ask for their own
    /// leases (mode 0666: the kernel attests the caller). Default:
    /// `lease.sock` beside the control socket.
    #[arg(long)]
    pub lease_socket: Option<PathBuf>,
    /// Start with an empty lease store when it is missing or corrupt,
    /// instead of refusing to start (every lease is dropped).
    #[arg(long)]
    pub reset_leases: bool,
    /// Open connections the agent socket admits, all callers together.
    #[arg(long, default_value_t = 256)]
    pub lease_max_connections: u32,
    /// Open connections the agent socket admits from one uid.
    #[arg(long, default_value_t = 32)]
    pub lease_max_connections_per_uid: u32,
    /// Requests per second one identity may make on the agent socket
    /// (bursts of twice that); more get 429 and a `rate-limited` event.
    #[arg(long, default_value_t = 20)]
    pub lease_rate: u32,
    /// A connection waiting longer than this for a request's headers (idle
    /// keep-alive included) is closed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease_idle_timeout: std::time::Duration,
    #[command(flatten)]
    pub audit: audit::AuditArgs,
    #[command(flatten)]
    pub otlp: otlp::OtlpArgs,
    /// Also serve `GET /metrics` (Prometheus) on this TCP address, e.g.
    /// 127.0.0.1:9477; nothing else is served there. Program run counts
    /// need `sysctl kernel.bpf_stats_enabled=1`.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum LogFormat {
    Text,
    Json,
}

fn parse_ringbuf(s: &str) -> Result<u32, String> {
    let (num, mul) = match s.strip_suffix(['M', 'm']) {
        Some(n) => (n, 1024 * 1024),
        None => match s.strip_suffix(['K', 'k']) {
            Some(n) => (n, 1024),
            None => (s, 1),
        },
    };
    let v: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 16M)"))?;
    let v = v * mul;
    if !v.is_power_of_two() || !(4096..=(1 << 30)).contains(&v) {
        return Err(format!(
            "ring buffer size {v} must be a power of two between 4K and 1G"
        ));
    }
    Ok(v as u32)
}

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

pub fn run(args: DaemonArgs, socket: PathBuf) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(main(args, socket))
}

/// The phases are types (`start.rs`): each consumes the one before.
async fn main(args: DaemonArgs, socket: PathBuf) -> anyhow::Result<()> {
    start::preflight(&args).await?;
    let running = start::Kernel::load(&args)?.start(&args).await?;
    let mut serving = running.serve(&args, socket).await?;
    let outcome = serving.until_signal().await;
    serving.shut_down(&args, outcome).await
}

fn bind_socket(path: &Path, group: Option<&str>) -> anyhow::Result<UnixListener> {
    let gid = match group {
        None => None,
        Some(g) => Some(
            nix::unistd::Group::from_name(g)?
                .with_context(|| format!("socket group `{g}` does not exist"))?
                .gid,
        ),
    };
    conn::bind::bind(path, if gid.is_some() { 0o660 } else { 0o600 }, gid)
}

/// systemd readiness (Type=notify), without a libsystemd dependency.
fn sd_notify(msg: &str) {
    let Some(sock) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let s = sock.to_string_lossy();
    let addr = if let Some(abs) = s.strip_prefix('@') {
        nix::sys::socket::UnixAddr::new_abstract(abs.as_bytes())
    } else {
        nix::sys::socket::UnixAddr::new(s.as_ref())
    };
    let Ok(addr) = addr else { return };
    let Ok(fd) = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return;
    };
    let _ = nix::sys::socket::sendto(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        msg.as_bytes(),
        &addr,
        nix::sys::socket::MsgFlags::empty(),
    );
}
