//! Namespaces and plumbing: a fresh network or cgroup namespace, `ip`,
//! listeners, UDP sinks that count marked datagrams, and an AF_PACKET
//! capture of outgoing marked packets.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd as _,
    sync::Mutex,
    time::Duration,
};

use super::*;
use crate::emit;

static UDP_COUNTS: Mutex<Vec<(u16, u64)>> = Mutex::new(Vec::new());

static CAPTURED: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn lo_up() -> io::Result<()> {
    let s = sock(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    // SAFETY: all zeroes is a valid ifreq.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, b) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *b as libc::c_char;
    }
    // SAFETY: ifr is a valid ifreq for these ioctls.
    cvt(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } as i64)?;
    // SAFETY: reading and writing the flags member of the union.
    unsafe { ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as i16 };
    // SAFETY: as above.
    cvt(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } as i64).map(drop)
}

fn udp_sink(a: &SocketAddr) -> io::Result<u16> {
    let s = std::net::UdpSocket::bind(a)?;
    let port = s.local_addr()?.port();
    UDP_COUNTS.lock().expect("counts").push((port, 0));
    std::thread::spawn(move || {
        let mut b = [0u8; 2048];
        while let Ok(n) = s.recv(&mut b) {
            if b[..n].windows(MARK.len()).any(|w| w == MARK) {
                let mut c = UDP_COUNTS.lock().expect("counts");
                if let Some(e) = c.iter_mut().find(|e| e.0 == port) {
                    e.1 += 1;
                }
            }
        }
    });
    Ok(port)
}

/// Captures outgoing IP packets that carry the marker (AF_PACKET, every
/// interface of the current netns); records their IP destinations.
fn capture_start() -> io::Result<()> {
    let s = sock(
        libc::AF_PACKET,
        libc::SOCK_RAW,
        (libc::ETH_P_ALL as u16).to_be() as i32,
    )?;
    std::thread::spawn(move || {
        let mut b = [0u8; 65536];
        loop {
            // SAFETY: all zeroes is a valid sockaddr_ll.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut flen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: b and from are valid for their lengths.
            let n = unsafe {
                libc::recvfrom(
                    s.as_raw_fd(),
                    b.as_mut_ptr().cast(),
                    b.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut flen,
                )
            };
            if n <= 0 {
                return;
            }
            let p = &b[..n as usize];
            if from.sll_pkttype != libc::PACKET_OUTGOING
                || !p.windows(MARK.len()).any(|w| w == MARK)
                || p.len() < 14 + 40
            {
                continue;
            }
            let dst = match u16::from_be_bytes([p[12], p[13]]) {
                0x0800 => {
                    IpAddr::from(<[u8; 4]>::try_from(&p[14 + 16..14 + 20]).expect("4")).to_string()
                }
                0x86dd => IpAddr::from(<[u8; 16]>::try_from(&p[14 + 24..14 + 40]).expect("16"))
                    .to_string(),
                _ => continue,
            };
            CAPTURED.lock().expect("captured").push(dst);
        }
    });
    Ok(())
}

/// Runs the step at `args[i]` if it is one of this module's; gives the
/// index of the next step.
pub(super) fn step(args: &[String], i: usize) -> Option<usize> {
    let a = |k: usize| args[i + k].as_str();
    Some(match a(0) {
        "bp-netns" => {
            // SAFETY: plain syscall.
            let r = cvt(unsafe { libc::unshare(libc::CLONE_NEWNET) } as i64).and_then(|_| lo_up());
            emit("bp-netns", r);
            i + 1
        }
        "bp-cgroupns" => {
            // SAFETY: plain syscall.
            let r = cvt(unsafe { libc::unshare(libc::CLONE_NEWCGROUP) } as i64).map(drop);
            emit("bp-cgroupns", r);
            i + 1
        }
        "bp-ip" => {
            let mut j = i + 1;
            while args[j] != "--" {
                j += 1;
            }
            let r = std::process::Command::new("ip")
                .args(&args[i + 1..j])
                .status()
                .and_then(|s| {
                    if s.success() {
                        Ok(())
                    } else {
                        Err(io::Error::other(format!("ip: {s}")))
                    }
                });
            emit("bp-ip", r);
            j + 1
        }
        "bp-listen" => {
            let r = std::net::TcpListener::bind(sa(a(1), a(2))).and_then(|l| {
                let port = l.local_addr()?.port();
                std::thread::spawn(move || for _ in l.incoming() {});
                Ok(port)
            });
            let port = *r.as_ref().unwrap_or(&0);
            emit_with("bp-listen", r.map(drop), &format!(r#""port":{port}"#));
            i + 3
        }
        "bp-udp-sink" => {
            let r = udp_sink(&sa(a(1), a(2)));
            let port = *r.as_ref().unwrap_or(&0);
            emit_with("bp-udp-sink", r.map(drop), &format!(r#""port":{port}"#));
            i + 3
        }
        "bp-udp-count" => {
            std::thread::sleep(Duration::from_millis(300));
            let port: u16 = a(1).parse().expect("port");
            let n = UDP_COUNTS
                .lock()
                .expect("counts")
                .iter()
                .find(|e| e.0 == port)
                .map_or(0, |e| e.1);
            println!(r#"{{"op":"bp-udp-count","port":{port},"count":{n}}}"#);
            i + 2
        }
        "bp-capture" => {
            emit("bp-capture", capture_start());
            i + 1
        }
        "bp-captured" => {
            std::thread::sleep(Duration::from_millis(500));
            let d: Vec<String> = CAPTURED
                .lock()
                .expect("captured")
                .iter()
                .map(|s| json_str(s))
                .collect();
            println!(r#"{{"op":"bp-captured","dst":[{}]}}"#, d.join(","));
            i + 1
        }
        _ => return None,
    })
}
