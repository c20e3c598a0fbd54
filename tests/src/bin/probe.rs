//! A small program the tests run inside (and outside) agent identities.
//! Each step prints one JSON line: {"op":..,"ok":bool,"errno":N}.
//!
//! probe connect ADDR PORT | sendto ADDR PORT | bind-tcp ADDR PORT |
//!       subcgroup NAME (then the remaining steps run in that child cgroup) |
//!       pid | exit CODE | kill SIG | sleep SECS |
//!       loop ADDR:PORT=allow|deny ... SECS   (tight connect loop; counts wrong answers)
//! Steps chain: `probe pid connect 127.0.0.1 80 exit 3`.

use std::{
    io::Write as _,
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

fn emit(op: &str, r: std::io::Result<()>) {
    let line = match r {
        Ok(()) => format!(r#"{{"op":"{op}","ok":true,"errno":0}}"#),
        Err(e) => format!(
            r#"{{"op":"{op}","ok":false,"errno":{},"error":"{}"}}"#,
            e.raw_os_error().unwrap_or(-1),
            e.to_string().replace('"', "'")
        ),
    };
    println!("{line}");
    let _ = std::io::stdout().flush();
}

fn addr(a: &str, p: &str) -> SocketAddr {
    let ip: std::net::IpAddr = a.parse().expect("ip");
    SocketAddr::new(ip, p.parse().expect("port"))
}

fn connect(sa: SocketAddr) -> std::io::Result<()> {
    TcpStream::connect_timeout(&sa, Duration::from_secs(3)).map(drop)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "pid" => {
                println!(r#"{{"op":"pid","pid":{}}}"#, std::process::id());
                i += 1;
            }
            "connect" => {
                emit("connect", connect(addr(&args[i + 1], &args[i + 2])));
                i += 3;
            }
            "sendto" => {
                let sa = addr(&args[i + 1], &args[i + 2]);
                let bind: SocketAddr = if sa.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
                    .parse()
                    .expect("addr");
                let r = UdpSocket::bind(bind).and_then(|s| s.send_to(b"corral", sa).map(drop));
                emit("sendto", r);
                i += 3;
            }
            "bind-tcp" => {
                emit("bind", TcpListener::bind(addr(&args[i + 1], &args[i + 2])).map(drop));
                i += 3;
            }
            "subcgroup" => {
                let own = std::fs::read_to_string("/proc/self/cgroup").expect("cgroup");
                let rel = own.lines().find_map(|l| l.strip_prefix("0::")).expect("v2");
                let root = cgroup2_root();
                let dir = format!("{root}{rel}/{}", args[i + 1]);
                let r = std::fs::create_dir_all(&dir)
                    .and_then(|_| std::fs::write(format!("{dir}/cgroup.procs"), "0"));
                emit("subcgroup", r);
                i += 2;
            }
            "exit" => std::process::exit(args[i + 1].parse().expect("code")),
            "kill" => {
                let sig: i32 = args[i + 1].parse().expect("signal");
                // SAFETY: plain syscall.
                unsafe { libc::kill(std::process::id() as i32, sig) };
                std::thread::sleep(Duration::from_secs(5));
                i += 2;
            }
            "sleep" => {
                std::thread::sleep(Duration::from_secs_f64(args[i + 1].parse().expect("secs")));
                i += 2;
            }
            "loop" => {
                // loop 127.0.0.1:80=allow 127.0.0.1:81=deny ... SECS
                let mut targets = Vec::new();
                let mut j = i + 1;
                while let Some((t, want)) = args.get(j).and_then(|a| a.split_once('=')) {
                    targets.push((t.parse::<SocketAddr>().expect("addr"), want == "allow"));
                    j += 1;
                }
                let secs: f64 = args[j].parse().expect("secs");
                let end = Instant::now() + Duration::from_secs_f64(secs);
                let (mut n, mut wrong) = (0u64, 0u64);
                while Instant::now() < end {
                    for (t, allow) in &targets {
                        let ok = connect(*t).is_ok();
                        n += 1;
                        if ok != *allow {
                            wrong += 1;
                        }
                    }
                }
                println!(r#"{{"op":"loop","attempts":{n},"wrong":{wrong}}}"#);
                i = j + 1;
            }
            other => panic!("unknown probe step {other}"),
        }
    }
}

fn cgroup2_root() -> String {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mi.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(str::to_string))?
        })
        .expect("cgroup2 mount")
}
