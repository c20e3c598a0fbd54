//! Client commands that talk to the daemon's API (`corral policy` is in
//! `policy.rs`).

use std::path::PathBuf;

use anyhow::Context as _;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::client::{self, Client, print_json};
use crate::event::Event;

#[derive(clap::Args, Debug)]
pub struct JsonFlag {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub use super::client::UsageError;

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["pid", "cgroup"])))]
pub struct AssignArgs {
    #[arg(long)]
    pub identity: String,
    /// Move this process into the identity's cgroup.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Tag this cgroup (absolute, or relative to the cgroup v2 root), e.g. a
    /// systemd unit's or a container's.
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct TailArgs {
    #[arg(long)]
    pub identity: Option<String>,
    /// One kind of event (`lost` events come whatever the filter).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(crate::event::EventKind::filterable_names()))]
    pub kind: Option<String>,
    /// JSON lines (schema in the README).
    #[arg(long)]
    pub json: bool,
    /// First print what the audit log recorded since then (RFC 3339 time,
    /// or a duration ago like `10m`), then go on live. Reads the audit log
    /// directly: run it as root.
    #[arg(long, value_parser = crate::cli::audit::parse_time)]
    pub since: Option<std::time::SystemTime>,
}

#[derive(clap::Args, Debug)]
pub struct UnloadArgs {
    #[arg(long, default_value = "/sys/fs/bpf/corral")]
    pub pin_dir: PathBuf,
    /// Also remove the (empty) identity cgroups under this parent.
    #[arg(long, default_value = "corral")]
    pub cgroup_parent: String,
}

fn get(client: &Client, path: &str) -> anyhow::Result<Value> {
    client.json(Method::GET, path, None)
}

pub fn assign(client: &Client, a: &AssignArgs) -> anyhow::Result<u8> {
    let body = json!({ "identity": a.identity, "pid": a.pid, "cgroup": a.cgroup });
    let (status, v) = client::block_on(client.call(Method::POST, "/v1/assign", Some(&body)))?;
    if status == StatusCode::NOT_FOUND {
        return Err(UsageError(client::api_error(status, &v).to_string()).into());
    }
    if !status.is_success() {
        return Err(client::api_error(status, &v));
    }
    match (a.pid, &a.cgroup) {
        (Some(pid), _) => println!(
            "pid {pid} is now {} (cgroup {})",
            a.identity,
            v["cgroup"].as_str().unwrap_or("?")
        ),
        (_, Some(cg)) => println!("cgroup {} is now {}", cg.display(), a.identity),
        _ => {}
    }
    // What binds an already running process depends on the file layer.
    let files = client::block_on(client.call(
        Method::GET,
        &format!("/v1/policy/{}?sections=files", a.identity),
        None,
    ))
    .map(|(_, p)| {
        p["files"]["enforced_by"]
            .as_str()
            .unwrap_or("none")
            .to_string()
    })
    .unwrap_or_default();
    if files == "landlock" {
        eprintln!(
            "warning: `{}` has [files] rules, but BPF LSM is unavailable here and Landlock can \
             only be applied when a process starts: the assigned processes are NOT \
             file-confined (network and unix socket rules do apply). Start agents with \
             `corral run --identity {} -- CMD` for file rules.",
            a.identity, a.identity
        );
    } else {
        eprintln!(
            "note: kernel-side rules (network, unix sockets{}) apply to the assigned \
             processes; launch-time restrictions (syscall filters) do not. Use `corral run` for \
             full confinement.",
            if files == "lsm" { ", files" } else { "" }
        );
    }
    Ok(0)
}

pub fn identities(client: &Client, a: &JsonFlag) -> anyhow::Result<u8> {
    let v = get(client, "/v1/identities")?;
    if a.json {
        print_json(&v);
        return Ok(0);
    }
    println!(
        "{:<20} {:<8} {:>5} {:>6} {:>8} {:>8}  CGROUP",
        "IDENTITY", "MODE", "PROCS", "RULES", "DENIED", "AUDITED"
    );
    let n = |x: &Value| x.as_u64().unwrap_or(0);
    for i in v.as_array().into_iter().flatten() {
        let mode = if i["orphaned"] == true {
            "orphaned"
        } else {
            i["mode"].as_str().unwrap_or("?")
        };
        println!(
            "{:<20} {:<8} {:>5} {:>6} {:>8} {:>8}  {}",
            i["name"].as_str().unwrap_or("?"),
            mode,
            n(&i["processes"]),
            n(&i["rules"]["network"]) + n(&i["rules"]["unix"]),
            n(&i["counters"]["denied"]),
            n(&i["counters"]["audited"]),
            i["cgroup"].as_str().unwrap_or("?"),
        );
    }
    Ok(0)
}

pub fn status(client: &Client, a: &JsonFlag) -> anyhow::Result<u8> {
    let v = get(client, "/v1/status")?;
    if a.json {
        print_json(&v);
    } else {
        print!("{}", super::status_text::render_status(&v));
    }
    Ok(0)
}

/// `tail --since`: what the audit log holds since then, printed before
/// the live stream; the lines are remembered so a repeat is skipped.
fn print_history(
    dir: &std::path::Path,
    a: &TailArgs,
    since: std::time::SystemTime,
    json: bool,
    printed: &mut std::collections::HashSet<String>,
) {
    let f = crate::audit::query::Filter {
        identity: a.identity.clone(),
        kind: a.kind.clone(),
        since: Some(since),
        ..Default::default()
    };
    match crate::audit::query::events(dir, &f) {
        Ok(evs) => {
            for e in evs {
                let line = e.to_string();
                let out = if json {
                    line.clone()
                } else {
                    serde_json::from_value::<Event>(e)
                        .map(|ev| ev.to_string())
                        .unwrap_or_else(|_| line.clone())
                };
                println!("{out}");
                printed.insert(line);
            }
        }
        Err(e) => eprintln!("(cannot read the audit log {}: {e})", dir.display()),
    }
}

pub fn tail(client: &Client, a: &TailArgs) -> anyhow::Result<u8> {
    let mut q = Vec::new();
    if let Some(i) = &a.identity {
        q.push(format!("identity={i}"));
    }
    if let Some(k) = &a.kind {
        q.push(format!("kind={k}"));
    }
    let path = format!("/v1/events?{}", q.join("&"));
    let json = a.json;
    let audit_dir = match a.since {
        Some(_) => Some(
            get(client, "/v1/status")?["audit"]["dir"]
                .as_str()
                .map(PathBuf::from)
                .context("the daemon reports no audit log")?,
        ),
        None => None,
    };
    // History printed at `hello`, to skip if the live stream repeats it.
    let mut printed: std::collections::HashSet<String> = Default::default();
    let r = client::block_on(client.stream(&path, |line| {
        let v: Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(_) => return true,
        };
        if v["kind"] == "hello"
            && let (Some(dir), Some(since)) = (&audit_dir, a.since)
        {
            // Subscribed first, history second: nothing falls in between.
            // The log is flushed every second.
            std::thread::sleep(std::time::Duration::from_millis(1100));
            print_history(dir, a, since, json, &mut printed);
        } else if !printed.is_empty() && printed.remove(&v.to_string()) {
            return true;
        }
        // In JSON mode the hello line is passed on: it tells scripts the
        // stream is live before anything else happens.
        if v["kind"] == "hello" && !json {
            eprintln!(
                "(streaming; {} events lost in the kernel so far)",
                v["kernel_lost_so_far"]
            );
            return true;
        }
        let out = if json {
            String::from_utf8_lossy(line).into_owned()
        } else {
            match serde_json::from_value::<Event>(v) {
                Ok(ev) => ev.to_string(),
                Err(_) => String::from_utf8_lossy(line).into_owned(),
            }
        };
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        // A closed pipe (`corral tail | head`) ends the stream quietly.
        writeln!(stdout, "{out}")
            .and_then(|_| stdout.flush())
            .is_ok()
    }));
    if let Err(e) = &r
        && e.downcast_ref::<client::Unreachable>().is_none()
        && e.to_string().contains("unknown identity")
    {
        return Err(UsageError(e.to_string()).into());
    }
    r.map(|_| 0)
}

pub fn unload(a: &UnloadArgs) -> anyhow::Result<u8> {
    crate::daemon::unload(&a.pin_dir)
        .with_context(|| format!("removing pins under {}", a.pin_dir.display()))?;
    let root = crate::cgroup::cgroup2_root()?;
    let parent = crate::cgroup::join(&root, &a.cgroup_parent)?;
    let busy = crate::cgroup::remove_tree(&parent);
    println!(
        "programs detached, pins under {} removed",
        a.pin_dir.display()
    );
    for b in busy {
        println!("kept {} (it still has processes)", b.display());
    }
    Ok(0)
}
