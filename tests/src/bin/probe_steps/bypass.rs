//! Probe steps for the network bypass review (`tests/tests/bypass_net.rs`).
//! Every step name starts with `bp-`; each prints one JSON line.
//!
//! Namespaces and plumbing:
//!   bp-netns   (unshare(CLONE_NEWNET), lo up: the rest runs in a fresh netns) |
//!   bp-cgroupns   (unshare(CLONE_NEWCGROUP)) | bp-ip ARGS... --   (run `ip ARGS`) |
//!   bp-listen ADDR PORT   (TCP listener accepting in the background; prints the port) |
//!   bp-udp-sink ADDR PORT + bp-udp-count PORT   (count datagrams received) |
//!   bp-capture + bp-captured   (AF_PACKET capture of outgoing IP packets carrying
//!   "corral-bp"; prints their IP destinations)
//! Sends and connects (ADDR may be any IPv4/IPv6 literal):
//!   bp-uring-connect inline|async|sqpoll ADDR PORT | bp-uring-sendmsg inline|async|sqpoll ADDR PORT |
//!   bp-uring-socket-connect ADDR PORT   (IORING_OP_SOCKET, then IORING_OP_CONNECT) |
//!   bp-tfo ADDR PORT   (sendto MSG_FASTOPEN) | bp-sendmmsg ADDR PORT ADDR PORT |
//!   bp-udp-connect-sendto CADDR CPORT TADDR TPORT | bp-v6sock-v4addr ADDR PORT |
//!   bp-connect6 ADDR IFNAME PORT   (with a scope id) | bp-connect-proto PROTO ADDR PORT |
//!   bp-sendto-proto PROTO ADDR PORT | bp-bound-connect BINDADDR ADDR PORT |
//!   bp-connect-host NAME PORT | bp-raw-udp ADDR PORT | bp-raw-connect ADDR |
//!   bp-packet-udp ADDR PORT   (AF_PACKET on lo) | bp-ping ADDR | bp-ping-connect ADDR |
//!   bp-lsrr HOP ADDR PORT | bp-retopts HOP ADDR PORT | bp-srh HOP ADDR PORT |
//!   bp-vsock-socket |
//!   bp-mptcp-pair ADDR PORT   (MPTCP listener on 0.0.0.0:PORT and a client to ADDR:PORT;
//!   prints the remote ends of the established TCP sockets, subflows included)
//! Descriptors, kept in named slots:
//!   bp-hold tcp|udp|tcp6|udp6 NAME | bp-recvfd UNIXPATH NAME   (SCM_RIGHTS) |
//!   bp-getfd PID FD NAME   (pidfd_getfd) | bp-fd-connect NAME ADDR PORT | bp-fd-sendto NAME ADDR PORT
//! Listening:
//!   bp-listen-accept ADDR   (bind ADDR:0, listen, print the port, accept one, write to it) |
//!   bp-listen-auto   (listen() without bind)
//! Leaving the identity:
//!   bp-cgroup | bp-escape   (write own pid to the parent's cgroup.procs) |
//!   bp-clone-into-parent ADDR PORT   (clone3(CLONE_INTO_CGROUP) into the parent's cgroup;
//!   the child connects)

use std::{
    collections::HashMap,
    ffi::CString,
    io,
    net::{IpAddr, SocketAddr, ToSocketAddrs as _},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use super::emit;

pub fn is_step(op: &str) -> bool {
    op.starts_with("bp-")
}

const MARK: &[u8] = b"corral-bp";

static SLOTS: Mutex<Option<HashMap<String, RawFd>>> = Mutex::new(None);
static UDP_COUNTS: Mutex<Vec<(u16, u64)>> = Mutex::new(Vec::new());
static CAPTURED: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn cvt(rc: i64) -> io::Result<i64> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn sock(domain: i32, ty: i32, proto: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned right away.
    let fd = cvt(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) } as i64)?;
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn ip(a: &str) -> IpAddr {
    a.parse().expect("ip literal")
}

fn sa(a: &str, p: &str) -> SocketAddr {
    SocketAddr::new(ip(a), p.parse().expect("port"))
}

/// A `sockaddr_storage` for `a` (with `scope` for IPv6) and its length.
fn raw_sa(a: &SocketAddr, scope: u32) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all zeroes is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match a {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
            (ss, size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            sin6.sin6_scope_id = scope;
            (ss, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

fn family(a: &SocketAddr) -> i32 {
    if a.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

fn connect_fd(fd: RawFd, a: &SocketAddr, scope: u32) -> io::Result<()> {
    let (ss, len) = raw_sa(a, scope);
    // SAFETY: ss is valid for len bytes.
    cvt(unsafe { libc::connect(fd, (&ss as *const libc::sockaddr_storage).cast(), len) } as i64)
        .map(drop)
}

fn sendto_fd(fd: RawFd, buf: &[u8], flags: i32, a: &SocketAddr) -> io::Result<()> {
    let (ss, len) = raw_sa(a, 0);
    // SAFETY: buf and ss are valid for their lengths.
    cvt(unsafe {
        libc::sendto(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            flags,
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    } as i64)
    .map(drop)
}

fn slot_put(name: &str, fd: OwnedFd) {
    use std::os::fd::IntoRawFd as _;
    SLOTS
        .lock()
        .expect("slots")
        .get_or_insert_with(HashMap::new)
        .insert(name.to_string(), fd.into_raw_fd());
}

fn slot(name: &str) -> RawFd {
    *SLOTS
        .lock()
        .expect("slots")
        .as_ref()
        .and_then(|m| m.get(name))
        .unwrap_or_else(|| panic!("no slot {name}"))
}

fn json_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "'"))
}

/// Like `emit`, with extra JSON fields (`"k":v,...`, already encoded).
fn emit_with(op: &str, r: io::Result<()>, extra: &str) {
    let sep = if extra.is_empty() { "" } else { "," };
    let line = match r {
        Ok(()) => format!(r#"{{"op":"{op}","ok":true,"errno":0{sep}{extra}}}"#),
        Err(e) => format!(
            r#"{{"op":"{op}","ok":false,"errno":{},"error":{}{sep}{extra}}}"#,
            e.raw_os_error().unwrap_or(-1),
            json_str(&e.to_string())
        ),
    };
    println!("{line}");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
}

// --- namespaces --------------------------------------------------------------

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

// --- io_uring, by hand ---------------------------------------------------------

#[repr(C)]
#[derive(Default)]
struct SqOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    flags: u32,
    dropped: u32,
    array: u32,
    resv1: u32,
    user_addr: u64,
}

#[repr(C)]
#[derive(Default)]
struct CqOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    overflow: u32,
    cqes: u32,
    flags: u32,
    resv1: u32,
    user_addr: u64,
}

#[repr(C)]
#[derive(Default)]
struct UringParams {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
    sq_thread_cpu: u32,
    sq_thread_idle: u32,
    features: u32,
    wq_fd: u32,
    resv: [u32; 3],
    sq_off: SqOffsets,
    cq_off: CqOffsets,
}

const IORING_SETUP_SQPOLL: u32 = 1 << 1;
const IORING_ENTER_GETEVENTS: u32 = 1;
const IORING_ENTER_SQ_WAKEUP: u32 = 2;
const IOSQE_ASYNC: u8 = 1 << 4;
const IORING_OP_SENDMSG: u8 = 9;
const IORING_OP_CONNECT: u8 = 16;
const IORING_OP_SOCKET: u8 = 45;

/// One submission queue entry, the fields these steps use.
#[derive(Default, Clone, Copy)]
struct Sqe {
    opcode: u8,
    flags: u8,
    fd: i32,
    off: u64,
    addr: u64,
    len: u32,
    op_flags: u32,
}

struct Ring {
    fd: RawFd,
    sq: *mut u8,
    cq: *mut u8,
    sqes: *mut u8,
    p: UringParams,
    sqpoll: bool,
}

fn map(fd: RawFd, len: usize, off: i64) -> io::Result<*mut u8> {
    // SAFETY: a fresh shared mapping of the ring fd.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd,
            off,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p.cast())
}

impl Ring {
    fn new(sqpoll: bool) -> io::Result<Ring> {
        let mut p = UringParams::default();
        if sqpoll {
            p.flags = IORING_SETUP_SQPOLL;
            p.sq_thread_idle = 2000;
        }
        // SAFETY: params outlive the call.
        let fd = cvt(unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, &mut p as *mut _) })?
            as RawFd;
        let sq_len = p.sq_off.array as usize + p.sq_entries as usize * 4;
        let cq_len = p.cq_off.cqes as usize + p.cq_entries as usize * 16;
        let sq = map(fd, sq_len, 0)?;
        let cq = map(fd, cq_len, 0x800_0000)?;
        let sqes = map(fd, 64 * p.sq_entries as usize, 0x1000_0000)?;
        Ok(Ring {
            fd,
            sq,
            cq,
            sqes,
            p,
            sqpoll,
        })
    }

    /// Submits one entry and waits for its completion; gives `res`.
    fn run(&mut self, e: Sqe) -> io::Result<i32> {
        // SAFETY: offsets come from the kernel for these mappings; the
        // entry is written before the tail is published.
        unsafe {
            let mask = *(self.sq.add(self.p.sq_off.ring_mask as usize) as *const u32);
            let tail_p = self.sq.add(self.p.sq_off.tail as usize) as *const AtomicU32;
            let tail = (*tail_p).load(Ordering::Acquire);
            let idx = (tail & mask) as usize;
            let s = self.sqes.add(64 * idx);
            std::ptr::write_bytes(s, 0, 64);
            *s = e.opcode;
            *s.add(1) = e.flags;
            *(s.add(4) as *mut i32) = e.fd;
            *(s.add(8) as *mut u64) = e.off;
            *(s.add(16) as *mut u64) = e.addr;
            *(s.add(24) as *mut u32) = e.len;
            *(s.add(28) as *mut u32) = e.op_flags;
            *(s.add(32) as *mut u64) = 0xc0ffee;
            *(self.sq.add(self.p.sq_off.array as usize) as *mut u32).add(idx) = idx as u32;
            (*tail_p).store(tail.wrapping_add(1), Ordering::Release);
            let (submit, flags) = if self.sqpoll {
                (0u32, IORING_ENTER_GETEVENTS | IORING_ENTER_SQ_WAKEUP)
            } else {
                (1u32, IORING_ENTER_GETEVENTS)
            };
            cvt(libc::syscall(
                libc::SYS_io_uring_enter,
                self.fd,
                submit,
                1u32,
                flags,
                std::ptr::null::<u8>(),
                0usize,
            ))?;
            let cmask = *(self.cq.add(self.p.cq_off.ring_mask as usize) as *const u32);
            let head_p = self.cq.add(self.p.cq_off.head as usize) as *const AtomicU32;
            let ctail_p = self.cq.add(self.p.cq_off.tail as usize) as *const AtomicU32;
            let end = Instant::now() + Duration::from_secs(5);
            let head = (*head_p).load(Ordering::Acquire);
            while (*ctail_p).load(Ordering::Acquire) == head {
                if Instant::now() > end {
                    return Err(io::Error::from_raw_os_error(libc::ETIMEDOUT));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let cqe = self
                .cq
                .add(self.p.cq_off.cqes as usize + 16 * (head & cmask) as usize);
            let res = *(cqe.add(8) as *const i32);
            (*head_p).store(head.wrapping_add(1), Ordering::Release);
            if res < 0 {
                return Err(io::Error::from_raw_os_error(-res));
            }
            Ok(res)
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: our own fd (the mappings die with the process).
        unsafe { libc::close(self.fd) };
    }
}

fn uring_mode(m: &str) -> (bool, u8) {
    match m {
        "inline" => (false, 0),
        "async" => (false, IOSQE_ASYNC),
        "sqpoll" => (true, 0),
        other => panic!("io_uring mode {other}: inline|async|sqpoll"),
    }
}

fn uring_connect(mode: &str, a: &SocketAddr) -> io::Result<()> {
    let (sqpoll, flags) = uring_mode(mode);
    let s = sock(family(a), libc::SOCK_STREAM, 0)?;
    let (ss, len) = raw_sa(a, 0);
    let mut r = Ring::new(sqpoll)?;
    r.run(Sqe {
        opcode: IORING_OP_CONNECT,
        flags,
        fd: s.as_raw_fd(),
        addr: &ss as *const _ as u64,
        off: len as u64,
        ..Sqe::default()
    })
    .map(drop)
}

fn uring_sendmsg(mode: &str, a: &SocketAddr) -> io::Result<()> {
    let (sqpoll, flags) = uring_mode(mode);
    let s = sock(family(a), libc::SOCK_DGRAM, 0)?;
    let (mut ss, len) = raw_sa(a, 0);
    let mut payload = *b"corral-bp-uring";
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    // SAFETY: all zeroes is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut ss as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = len;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let mut r = Ring::new(sqpoll)?;
    r.run(Sqe {
        opcode: IORING_OP_SENDMSG,
        flags,
        fd: s.as_raw_fd(),
        addr: &msg as *const _ as u64,
        len: 1,
        ..Sqe::default()
    })
    .map(drop)
}

/// The socket itself made by io_uring (IORING_OP_SOCKET), then connected.
fn uring_socket_connect(a: &SocketAddr) -> io::Result<()> {
    let mut r = Ring::new(false)?;
    let fd = r.run(Sqe {
        opcode: IORING_OP_SOCKET,
        fd: family(a),
        off: libc::SOCK_STREAM as u64,
        len: 0,
        ..Sqe::default()
    })?;
    // SAFETY: the CQE's result is a fresh fd.
    let s = unsafe { OwnedFd::from_raw_fd(fd) };
    let (ss, len) = raw_sa(a, 0);
    r.run(Sqe {
        opcode: IORING_OP_CONNECT,
        fd: s.as_raw_fd(),
        addr: &ss as *const _ as u64,
        off: len as u64,
        ..Sqe::default()
    })
    .map(drop)
}

// --- UDP and friends -------------------------------------------------------------

fn sendmmsg(a: &SocketAddr, b: &SocketAddr) -> (io::Result<()>, i64) {
    let s = match sock(family(a), libc::SOCK_DGRAM, 0) {
        Ok(s) => s,
        Err(e) => return (Err(e), 0),
    };
    let (mut sa_a, la) = raw_sa(a, 0);
    let (mut sa_b, lb) = raw_sa(b, 0);
    let mut pa = *b"corral-bp-mmsg-1";
    let mut pb = *b"corral-bp-mmsg-2";
    let mut iov = [
        libc::iovec {
            iov_base: pa.as_mut_ptr().cast(),
            iov_len: pa.len(),
        },
        libc::iovec {
            iov_base: pb.as_mut_ptr().cast(),
            iov_len: pb.len(),
        },
    ];
    // SAFETY: all zeroes is a valid mmsghdr.
    let mut m: [libc::mmsghdr; 2] = unsafe { std::mem::zeroed() };
    m[0].msg_hdr.msg_name = (&mut sa_a as *mut libc::sockaddr_storage).cast();
    m[0].msg_hdr.msg_namelen = la;
    m[0].msg_hdr.msg_iov = &mut iov[0];
    m[0].msg_hdr.msg_iovlen = 1;
    m[1].msg_hdr.msg_name = (&mut sa_b as *mut libc::sockaddr_storage).cast();
    m[1].msg_hdr.msg_namelen = lb;
    m[1].msg_hdr.msg_iov = &mut iov[1];
    m[1].msg_hdr.msg_iovlen = 1;
    // SAFETY: m and everything it points to live across the call.
    match cvt(unsafe { libc::sendmmsg(s.as_raw_fd(), m.as_mut_ptr(), 2, 0) } as i64) {
        Ok(n) => (Ok(()), n),
        Err(e) => (Err(e), 0),
    }
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

fn ones_complement(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A UDP header (checksum 0: none, valid for IPv4) and the payload.
fn udp_datagram(dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&40000u16.to_be_bytes());
    d.extend_from_slice(&dport.to_be_bytes());
    d.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(payload);
    d
}

fn raw_udp(a: &SocketAddr) -> io::Result<()> {
    let s = sock(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP)?;
    let d = udp_datagram(a.port(), b"corral-bp-raw");
    sendto_fd(s.as_raw_fd(), &d, 0, &SocketAddr::new(a.ip(), 0))
}

/// A whole IPv4+UDP packet handed to lo through AF_PACKET (SOCK_DGRAM: the
/// kernel adds the link header).
fn packet_udp(a: &SocketAddr) -> io::Result<()> {
    let IpAddr::V4(dst) = a.ip() else {
        return Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT));
    };
    let s = sock(
        libc::AF_PACKET,
        libc::SOCK_DGRAM,
        (libc::ETH_P_IP as u16).to_be() as i32,
    )?;
    let udp = udp_datagram(a.port(), b"corral-bp-packet");
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + udp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, libc::IPPROTO_UDP as u8, 0, 0]);
    ip.extend_from_slice(&[127, 0, 0, 1]);
    ip.extend_from_slice(&dst.octets());
    let c = ones_complement(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&udp);
    // SAFETY: all zeroes is a valid sockaddr_ll.
    let mut ll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    ll.sll_family = libc::AF_PACKET as u16;
    ll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    // SAFETY: NUL-terminated name.
    ll.sll_ifindex = unsafe { libc::if_nametoindex(c"lo".as_ptr()) } as i32;
    ll.sll_halen = 6;
    // SAFETY: ip and ll are valid for their lengths.
    cvt(unsafe {
        libc::sendto(
            s.as_raw_fd(),
            ip.as_ptr().cast(),
            ip.len(),
            0,
            (&ll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    } as i64)
    .map(drop)
}

fn echo_request() -> Vec<u8> {
    let mut e = vec![8, 0, 0, 0, 0, 0, 0, 1];
    e.extend_from_slice(b"corral-bp-ping");
    e
}

/// IPv4 options: NOP, then a loose source route whose first hop is `hop`
/// (the kernel puts the destination in the last slot).
fn lsrr_opt(hop: &str) -> Vec<u8> {
    let IpAddr::V4(h) = ip(hop) else {
        panic!("LSRR hop must be IPv4")
    };
    let mut o = vec![1, 0x83, 7, 4];
    o.extend_from_slice(&h.octets());
    o
}

fn lsrr(hop: &str, a: &SocketAddr) -> io::Result<()> {
    let s = sock(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    let o = lsrr_opt(hop);
    // SAFETY: o is valid for its length.
    cvt(unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_OPTIONS,
            o.as_ptr().cast(),
            o.len() as libc::socklen_t,
        )
    } as i64)?;
    sendto_fd(s.as_raw_fd(), b"corral-bp-lsrr", 0, a)
}

/// The same source route, given per message (`IP_RETOPTS` control message).
fn retopts(hop: &str, a: &SocketAddr) -> io::Result<()> {
    let s = sock(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    let o = lsrr_opt(hop);
    let (mut ss, len) = raw_sa(a, 0);
    let mut payload = *b"corral-bp-retopts";
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(o.len() as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    // SAFETY: all zeroes is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut ss as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = len;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: the control buffer holds one header of this size.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::IPPROTO_IP;
        (*c).cmsg_type = libc::IP_RETOPTS;
        (*c).cmsg_len = libc::CMSG_LEN(o.len() as u32) as usize;
        std::ptr::copy_nonoverlapping(o.as_ptr(), libc::CMSG_DATA(c), o.len());
    }
    // SAFETY: msg and all it points to live across the call.
    cvt(unsafe { libc::sendmsg(s.as_raw_fd(), &msg, 0) } as i64).map(drop)
}

/// An IPv6 segment routing header (type 4) on the socket: segments
/// [destination, hop], segments_left 1, so the first hop is `hop`.
fn srh(hop: &str, a: &SocketAddr) -> io::Result<()> {
    let IpAddr::V6(h) = ip(hop) else {
        panic!("SRH hop must be IPv6")
    };
    let IpAddr::V6(d) = a.ip() else {
        panic!("SRH destination must be IPv6")
    };
    let s = sock(libc::AF_INET6, libc::SOCK_DGRAM, 0)?;
    // nexthdr, hdrlen (8-byte units after the first 8), type 4,
    // segments_left 1, last_entry 1, flags, tag.
    let mut o = vec![0u8, 4, 4, 1, 1, 0, 0, 0];
    o.extend_from_slice(&d.octets());
    o.extend_from_slice(&h.octets());
    // SAFETY: o is valid for its length.
    cvt(unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_RTHDR,
            o.as_ptr().cast(),
            o.len() as libc::socklen_t,
        )
    } as i64)?;
    sendto_fd(s.as_raw_fd(), b"corral-bp-srh", 0, a)
}

// --- descriptors from elsewhere ----------------------------------------------------

fn recv_fd(path: &str) -> io::Result<OwnedFd> {
    let s = std::os::unix::net::UnixStream::connect(path)?;
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: all zeroes is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&cbuf);
    // SAFETY: msg and its buffers live across the call.
    cvt(unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) } as i64)?;
    // SAFETY: the kernel filled the control buffer.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        if c.is_null() || (*c).cmsg_level != libc::SOL_SOCKET || (*c).cmsg_type != libc::SCM_RIGHTS
        {
            return Err(io::Error::from_raw_os_error(libc::EBADMSG));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const i32);
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

fn getfd(pid: i32, fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscalls; the fds are owned right away.
    let pfd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: as above.
    let pfd = unsafe { OwnedFd::from_raw_fd(pfd as RawFd) };
    // SAFETY: as above.
    let got = cvt(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pfd.as_raw_fd(), fd, 0) })?;
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(got as RawFd) })
}

// --- listening ------------------------------------------------------------------------

fn local_port(fd: RawFd) -> u16 {
    // SAFETY: all zeroes is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: ss is valid for len bytes.
    unsafe {
        libc::getsockname(
            fd,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    // SAFETY: sin_port and sin6_port sit at the same offset.
    let sin = unsafe { &*(&ss as *const _ as *const libc::sockaddr_in) };
    u16::from_be(sin.sin_port)
}

fn listen_accept(a: &str) -> io::Result<()> {
    let l = std::net::TcpListener::bind(SocketAddr::new(ip(a), 0))?;
    let port = l.local_addr()?.port();
    println!(r#"{{"op":"bp-listening","port":{port}}}"#);
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    l.set_nonblocking(true)?;
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        match l.accept() {
            Ok((mut c, peer)) => {
                c.set_nonblocking(false)?;
                c.write_all(b"corral-bp-inbound")?;
                println!(r#"{{"op":"bp-accepted","peer":"{peer}"}}"#);
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}

// --- cgroups ---------------------------------------------------------------------------

fn cgroup_of(pid: &str) -> String {
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    own.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("v2")
        .to_string()
}

fn parent_cgroup_dir() -> String {
    // SAFETY: plain syscall.
    let ppid = unsafe { libc::getppid() };
    format!("{}{}", super::cgroup2_root(), cgroup_of(&ppid.to_string()))
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// clone3 into the parent's cgroup; the child connects to `a` and exits
/// with 0 or the errno. Gives the child's exit code.
fn clone_into_parent(a: &SocketAddr) -> io::Result<i32> {
    let dir = CString::new(parent_cgroup_dir()).expect("no NUL");
    // SAFETY: valid path.
    let cg = cvt(unsafe {
        libc::open(
            dir.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    } as i64)?;
    // SAFETY: a fresh fd.
    let cg = unsafe { OwnedFd::from_raw_fd(cg as RawFd) };
    // Everything the child uses is built before the clone.
    let (ss, len) = raw_sa(a, 0);
    let fam = family(a);
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cg.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without a stack behaves like fork; the child only
    // makes raw syscalls on pre-built data and exits.
    let pid = cvt(unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            size_of::<CloneArgs>(),
        )
    })?;
    if pid == 0 {
        // SAFETY: raw syscalls only, then _exit.
        unsafe {
            let fd = libc::socket(fam, libc::SOCK_STREAM, 0);
            let rc = libc::connect(fd, (&ss as *const libc::sockaddr_storage).cast(), len);
            let code = if rc == 0 {
                0
            } else {
                *libc::__errno_location()
            };
            libc::_exit(code);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid as i32, &mut status, 0) };
    Ok(libc::WEXITSTATUS(status))
}

// --- MPTCP ---------------------------------------------------------------------------

/// An MPTCP listener on 0.0.0.0:PORT and a client connecting to `a` (both
/// in this process); after a moment, the remote ends of every established
/// TCP socket (MPTCP subflows are TCP sockets) from /proc/net/tcp.
fn mptcp_pair(a: &SocketAddr) -> io::Result<Vec<String>> {
    let l = sock(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_MPTCP)?;
    let any = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), a.port());
    let (ss, len) = raw_sa(&any, 0);
    let sp = (&ss as *const libc::sockaddr_storage).cast();
    // SAFETY: ss valid for len; plain syscalls on our socket.
    cvt(unsafe { libc::bind(l.as_raw_fd(), sp, len) } as i64)?;
    // SAFETY: as above.
    cvt(unsafe { libc::listen(l.as_raw_fd(), 4) } as i64)?;
    let c = sock(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_MPTCP)?;
    connect_fd(c.as_raw_fd(), a, 0)?;
    let null = std::ptr::null_mut();
    // SAFETY: plain syscall on our listener.
    let s = cvt(unsafe { libc::accept(l.as_raw_fd(), null, null.cast()) } as i64)?;
    // SAFETY: a fresh fd.
    let s = unsafe { OwnedFd::from_raw_fd(s as RawFd) };
    // Time for the path managers to announce and join.
    std::thread::sleep(Duration::from_millis(1500));
    let (buf, n) = (MARK.as_ptr().cast(), MARK.len());
    // SAFETY: buf valid for n bytes.
    cvt(unsafe { libc::send(c.as_raw_fd(), buf, n, 0) } as i64)?;
    std::thread::sleep(Duration::from_millis(300));
    let peers = established_tcp_peers();
    drop((s, c, l));
    Ok(peers)
}

fn established_tcp_peers() -> Vec<String> {
    let t = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    t.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (rem, st) = (f.get(2)?, f.get(3)?);
            if *st != "01" {
                return None;
            }
            let (ip, port) = rem.split_once(':')?;
            let ip = u32::from_str_radix(ip, 16).ok()?.to_le_bytes();
            let port = u16::from_str_radix(port, 16).ok()?;
            Some(SocketAddr::new(IpAddr::from(ip), port).to_string())
        })
        .collect()
}

// --- the dispatcher ----------------------------------------------------------------

pub fn step(args: &[String], i: usize) -> usize {
    let a = |k: usize| args[i + k].as_str();
    match a(0) {
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
        "bp-uring-connect" => {
            emit_with(
                "bp-uring-connect",
                uring_connect(a(1), &sa(a(2), a(3))),
                &format!(r#""mode":"{}""#, a(1)),
            );
            i + 4
        }
        "bp-uring-sendmsg" => {
            emit_with(
                "bp-uring-sendmsg",
                uring_sendmsg(a(1), &sa(a(2), a(3))),
                &format!(r#""mode":"{}""#, a(1)),
            );
            i + 4
        }
        "bp-uring-socket-connect" => {
            emit(
                "bp-uring-socket-connect",
                uring_socket_connect(&sa(a(1), a(2))),
            );
            i + 3
        }
        "bp-tfo" => {
            let t = sa(a(1), a(2));
            let r = sock(family(&t), libc::SOCK_STREAM, 0)
                .and_then(|s| sendto_fd(s.as_raw_fd(), b"corral-bp-tfo", libc::MSG_FASTOPEN, &t));
            emit("bp-tfo", r);
            i + 3
        }
        "bp-sendmmsg" => {
            let (r, n) = sendmmsg(&sa(a(1), a(2)), &sa(a(3), a(4)));
            emit_with("bp-sendmmsg", r, &format!(r#""sent":{n}"#));
            i + 5
        }
        "bp-udp-connect-sendto" => {
            let c = sa(a(1), a(2));
            let t = sa(a(3), a(4));
            match sock(family(&c), libc::SOCK_DGRAM, 0) {
                Ok(s) => {
                    emit("bp-udp-connect", connect_fd(s.as_raw_fd(), &c, 0));
                    // SAFETY: buf valid for its length.
                    let sent = cvt(unsafe {
                        libc::send(s.as_raw_fd(), b"corral-bp-c".as_ptr().cast(), 11, 0)
                    } as i64);
                    emit("bp-udp-send", sent.map(drop));
                    emit(
                        "bp-udp-sendto-other",
                        sendto_fd(s.as_raw_fd(), b"corral-bp-o", 0, &t),
                    );
                }
                Err(e) => emit("bp-udp-connect", Err(e)),
            }
            i + 5
        }
        "bp-v6sock-v4addr" => {
            // An IPv6 UDP socket given an AF_INET destination.
            let t = sa(a(1), a(2));
            let r = sock(libc::AF_INET6, libc::SOCK_DGRAM, 0)
                .and_then(|s| sendto_fd(s.as_raw_fd(), b"corral-bp-v6v4", 0, &t));
            emit("bp-v6sock-v4addr", r);
            i + 3
        }
        "bp-connect6" => {
            let t = sa(a(1), a(3));
            let name = CString::new(a(2)).expect("ifname");
            // SAFETY: NUL-terminated name.
            let scope = unsafe { libc::if_nametoindex(name.as_ptr()) };
            let r = sock(libc::AF_INET6, libc::SOCK_STREAM, 0)
                .and_then(|s| connect_fd(s.as_raw_fd(), &t, scope));
            emit_with("bp-connect6", r, &format!(r#""scope":{scope}"#));
            i + 4
        }
        "bp-connect-proto" => {
            let proto: i32 = a(1).parse().expect("protocol");
            let t = sa(a(2), a(3));
            let r = sock(family(&t), libc::SOCK_STREAM, proto)
                .and_then(|s| connect_fd(s.as_raw_fd(), &t, 0));
            emit("bp-connect-proto", r);
            i + 4
        }
        "bp-sendto-proto" => {
            let proto: i32 = a(1).parse().expect("protocol");
            let t = sa(a(2), a(3));
            let r = sock(family(&t), libc::SOCK_DGRAM, proto)
                .and_then(|s| sendto_fd(s.as_raw_fd(), b"corral-bp-proto", 0, &t));
            emit("bp-sendto-proto", r);
            i + 4
        }
        "bp-bound-connect" => {
            let b = SocketAddr::new(ip(a(1)), 0);
            let t = sa(a(2), a(3));
            let r = sock(family(&t), libc::SOCK_STREAM, 0).and_then(|s| {
                let (ss, len) = raw_sa(&b, 0);
                // SAFETY: ss valid for len.
                cvt(unsafe {
                    libc::bind(
                        s.as_raw_fd(),
                        (&ss as *const libc::sockaddr_storage).cast(),
                        len,
                    )
                } as i64)?;
                connect_fd(s.as_raw_fd(), &t, 0)
            });
            emit("bp-bound-connect", r);
            i + 4
        }
        "bp-connect-host" => {
            let port: u16 = a(2).parse().expect("port");
            let results: Vec<String> = match (a(1), port).to_socket_addrs() {
                Ok(addrs) => addrs
                    .map(|t| {
                        let r = sock(family(&t), libc::SOCK_STREAM, 0)
                            .and_then(|s| connect_fd(s.as_raw_fd(), &t, 0));
                        let e = r.err().and_then(|e| e.raw_os_error()).unwrap_or(0);
                        format!(r#"{{"addr":"{}","errno":{e}}}"#, t.ip())
                    })
                    .collect(),
                Err(e) => vec![format!(
                    r#"{{"resolve_error":{}}}"#,
                    json_str(&e.to_string())
                )],
            };
            println!(
                r#"{{"op":"bp-connect-host","results":[{}]}}"#,
                results.join(",")
            );
            i + 3
        }
        "bp-raw-udp" => {
            emit("bp-raw-udp", raw_udp(&sa(a(1), a(2))));
            i + 3
        }
        "bp-raw-connect" => {
            let t = SocketAddr::new(ip(a(1)), 0);
            let r = sock(family(&t), libc::SOCK_RAW, libc::IPPROTO_UDP)
                .and_then(|s| connect_fd(s.as_raw_fd(), &t, 0));
            emit("bp-raw-connect", r);
            i + 2
        }
        "bp-packet-udp" => {
            emit("bp-packet-udp", packet_udp(&sa(a(1), a(2))));
            i + 3
        }
        "bp-ping" => {
            let t = SocketAddr::new(ip(a(1)), 0);
            let r = sock(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP)
                .and_then(|s| sendto_fd(s.as_raw_fd(), &echo_request(), 0, &t));
            emit("bp-ping", r);
            i + 2
        }
        "bp-ping-connect" => {
            let t = SocketAddr::new(ip(a(1)), 0);
            let r = sock(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP)
                .and_then(|s| connect_fd(s.as_raw_fd(), &t, 0));
            emit("bp-ping-connect", r);
            i + 2
        }
        "bp-lsrr" => {
            emit("bp-lsrr", lsrr(a(1), &sa(a(2), a(3))));
            i + 4
        }
        "bp-retopts" => {
            emit("bp-retopts", retopts(a(1), &sa(a(2), a(3))));
            i + 4
        }
        "bp-srh" => {
            emit("bp-srh", srh(a(1), &sa(a(2), a(3))));
            i + 4
        }
        "bp-vsock-socket" => {
            emit(
                "bp-vsock-socket",
                sock(libc::AF_VSOCK, libc::SOCK_STREAM, 0).map(drop),
            );
            i + 1
        }
        "bp-hold" => {
            let (dom, ty) = match a(1) {
                "tcp" => (libc::AF_INET, libc::SOCK_STREAM),
                "udp" => (libc::AF_INET, libc::SOCK_DGRAM),
                "tcp6" => (libc::AF_INET6, libc::SOCK_STREAM),
                "udp6" => (libc::AF_INET6, libc::SOCK_DGRAM),
                other => panic!("bp-hold {other}"),
            };
            let r = sock(dom, ty, 0).map(|s| slot_put(a(2), s));
            emit("bp-hold", r);
            i + 3
        }
        "bp-recvfd" => {
            emit("bp-recvfd", recv_fd(a(1)).map(|fd| slot_put(a(2), fd)));
            i + 3
        }
        "bp-getfd" => {
            let r = getfd(a(1).parse().expect("pid"), a(2).parse().expect("fd"))
                .map(|fd| slot_put(a(3), fd));
            emit("bp-getfd", r);
            i + 4
        }
        "bp-fd-connect" => {
            emit("bp-fd-connect", connect_fd(slot(a(1)), &sa(a(2), a(3)), 0));
            i + 4
        }
        "bp-fd-sendto" => {
            emit(
                "bp-fd-sendto",
                sendto_fd(slot(a(1)), b"corral-bp-fd", 0, &sa(a(2), a(3))),
            );
            i + 4
        }
        "bp-listen-accept" => {
            emit("bp-listen-accept", listen_accept(a(1)));
            i + 2
        }
        "bp-listen-auto" => {
            let r = sock(libc::AF_INET, libc::SOCK_STREAM, 0).and_then(|s| {
                // SAFETY: plain syscall on our socket.
                cvt(unsafe { libc::listen(s.as_raw_fd(), 1) } as i64)?;
                Ok(local_port(s.as_raw_fd()))
            });
            let port = *r.as_ref().unwrap_or(&0);
            emit_with("bp-listen-auto", r.map(drop), &format!(r#""port":{port}"#));
            i + 1
        }
        "bp-cgroup" => {
            println!(
                r#"{{"op":"bp-cgroup","cgroup":{}}}"#,
                json_str(&cgroup_of("self"))
            );
            i + 1
        }
        "bp-escape" => {
            let r = std::fs::write(format!("{}/cgroup.procs", parent_cgroup_dir()), "0");
            emit("bp-escape", r);
            i + 1
        }
        "bp-clone-into-parent" => {
            let r = clone_into_parent(&sa(a(1), a(2)));
            let child = *r.as_ref().unwrap_or(&-1);
            emit_with(
                "bp-clone-into-parent",
                r.map(drop),
                &format!(r#""child_errno":{child}"#),
            );
            i + 3
        }
        "bp-mptcp-pair" => {
            let r = mptcp_pair(&sa(a(1), a(2)));
            let peers: Vec<String> = r
                .as_ref()
                .map_or(Vec::new(), |p| p.iter().map(|x| json_str(x)).collect());
            emit_with(
                "bp-mptcp-pair",
                r.map(drop),
                &format!(r#""tcp_peers":[{}]"#, peers.join(",")),
            );
            i + 3
        }
        other => panic!("unknown bypass step {other}"),
    }
}
