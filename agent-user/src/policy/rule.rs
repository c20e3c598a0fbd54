//! The grammar of single values: rule strings, identity names, unix paths.
//!
//! Everything here is pure (no I/O, no file positions): errors carry a byte
//! offset into the value so the caller can turn it into line:col.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::Proto;

/// A rule string, parsed but not yet resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RuleSpec {
    pub proto: Proto,
    pub target: Target,
    pub port_lo: u16,
    pub port_hi: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// `*`: every address of both families.
    Any,
    /// A network address (host bits zero); IPv4-mapped IPv6 already turned
    /// into IPv4, because that is the table the kernel judges them by.
    Net { addr: IpAddr, prefix_len: u8 },
    /// A host name; `at` is its byte offset in the rule string.
    Host { name: String, at: usize },
}

/// A problem in a value, `at` bytes into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ValueError {
    pub at: usize,
    pub message: String,
}

fn err<T>(at: usize, message: impl Into<String>) -> Result<T, ValueError> {
    Err(ValueError {
        at,
        message: message.into(),
    })
}

const GRAMMAR: &str = "expected PROTO://ADDR[/PREFIX]:PORTS, e.g. `tcp://10.0.0.0/8:443`";

/// Parses `PROTO://ADDR[/PREFIX]:PORTS`.
pub(crate) fn parse_rule(text: &str) -> Result<RuleSpec, ValueError> {
    let Some((proto_s, rest)) = text.split_once("://") else {
        return err(0, format!("bad rule `{text}`: {GRAMMAR}"));
    };
    let proto = match proto_s {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => {
            return err(
                0,
                format!("bad proto `{proto_s}` in `{text}`: expected tcp or udp"),
            );
        }
    };
    let addr_at = proto_s.len() + 3;

    // Ports never contain ':', so the last one separates them, provided it
    // is not inside an IPv6 address's brackets.
    let bracket_end = rest.starts_with('[').then(|| rest.find(']'));
    if let Some(None) = bracket_end {
        return err(addr_at, format!("unclosed `[` in `{text}`"));
    }
    let colon = rest
        .rfind(':')
        .filter(|&c| bracket_end.flatten().is_none_or(|b| c > b));
    let Some(colon) = colon else {
        return err(
            addr_at + rest.len(),
            format!("missing port in `{text}`: {GRAMMAR} (`:*` means any port)"),
        );
    };
    let (cidr, ports) = (&rest[..colon], &rest[colon + 1..]);
    let ports_at = addr_at + colon + 1;
    let target = match parse_target(cidr) {
        Ok(Target::Host { name, at }) => Target::Host {
            name,
            at: at + addr_at,
        },
        Ok(t) => t,
        Err(mut e) => {
            e.at += addr_at;
            return Err(e);
        }
    };
    let (port_lo, port_hi) = parse_ports(ports).map_err(|mut e| {
        e.at += ports_at;
        e
    })?;
    Ok(RuleSpec {
        proto,
        target,
        port_lo,
        port_hi,
    })
}

/// `ADDR[/PREFIX]`; offsets in errors are relative to `cidr`.
fn parse_target(cidr: &str) -> Result<Target, ValueError> {
    let (addr_s, prefix_s) = match cidr.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (cidr, None),
    };
    if addr_s.is_empty() {
        return err(
            0,
            format!("missing address in `{cidr}` (`*` means any address)"),
        );
    }
    if addr_s == "*" {
        if prefix_s.is_some() {
            return err(
                0,
                format!("bad CIDR `{cidr}`: `*` is already every address; drop the /prefix"),
            );
        }
        return Ok(Target::Any);
    }
    let addr = if let Some(inner) = addr_s.strip_prefix('[') {
        let Some(inner) = inner.strip_suffix(']') else {
            let why = if cidr.contains('/') {
                "the prefix goes after the bracket, e.g. `[2001:db8::]/32`"
            } else {
                "nothing may follow the `]` but a /prefix"
            };
            return err(0, format!("bad CIDR `{cidr}`: {why}"));
        };
        match inner.parse::<Ipv6Addr>() {
            Ok(a) => IpAddr::V6(a),
            Err(_) => return err(1, format!("bad IPv6 address `{inner}`")),
        }
    } else if let Ok(a) = addr_s.parse::<Ipv4Addr>() {
        IpAddr::V4(a)
    } else if addr_s.contains(':') {
        return err(
            0,
            format!(
                "bad address `{addr_s}`: an IPv6 address goes in brackets, e.g. `[2001:db8::1]`"
            ),
        );
    } else if addr_s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return err(0, format!("bad IPv4 address `{addr_s}`"));
    } else if is_host_name(addr_s) {
        if prefix_s.is_some() {
            return err(
                0,
                format!(
                    "bad CIDR `{cidr}`: a host name takes no /prefix (each address it resolves to becomes a /32 or /128 rule)"
                ),
            );
        }
        return Ok(Target::Host {
            name: addr_s.to_string(),
            at: 0,
        });
    } else {
        return err(
            0,
            format!(
                "bad address `{addr_s}`: expected an IPv4 address, a bracketed IPv6 address, `*` or a host name"
            ),
        );
    };

    network_of(cidr, addr, prefix_s)
}

/// `addr` with its `/prefix` (the whole address without one), refused when
/// host bits are set beyond the prefix.
fn network_of(cidr: &str, addr: IpAddr, prefix_s: Option<&str>) -> Result<Target, ValueError> {
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix_len = match prefix_s {
        None => max,
        Some(p) => parse_prefix(p, max).map_err(|why| ValueError {
            at: 0,
            message: format!("bad CIDR `{cidr}`: {why}"),
        })?,
    };
    let network = mask(addr, prefix_len);
    if network != addr {
        let shown = match network {
            IpAddr::V4(a) => format!("{a}/{prefix_len}"),
            IpAddr::V6(a) => format!("[{a}]/{prefix_len}"),
        };
        return err(
            0,
            format!(
                "bad CIDR `{cidr}`: host bits are set beyond the /{prefix_len}; the network address is {shown}"
            ),
        );
    }
    let (addr, prefix_len) = unmap(addr, prefix_len);
    Ok(Target::Net { addr, prefix_len })
}

fn parse_prefix(p: &str, max: u8) -> Result<u8, String> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad prefix length `{p}`"));
    }
    match p.parse::<u32>() {
        Ok(n) if n <= u32::from(max) => Ok(n as u8),
        _ => Err(format!("prefix length {p} is over {max}")),
    }
}

/// `*`, `N` or `N-M`; offsets in errors are relative to `ports`.
fn parse_ports(ports: &str) -> Result<(u16, u16), ValueError> {
    if ports == "*" {
        return Ok((0, u16::MAX));
    }
    if ports.is_empty() {
        return err(0, "missing port after `:` (`*` means any port)");
    }
    if let Some((lo_s, hi_s)) = ports.split_once('-') {
        let lo = parse_port(lo_s).map_err(|m| ValueError { at: 0, message: m })?;
        let hi = parse_port(hi_s).map_err(|m| ValueError {
            at: lo_s.len() + 1,
            message: m,
        })?;
        if lo > hi {
            return err(0, format!("bad port range `{ports}`: {lo} is above {hi}"));
        }
        return Ok((lo, hi));
    }
    let port = parse_port(ports).map_err(|m| ValueError { at: 0, message: m })?;
    if port == 0 {
        // Port 0 alone is almost always a typo; the rare real use (an
        // ephemeral-port bind) can say so with a range.
        return err(
            0,
            "port 0 is only allowed in a range or `*` (write `0-0` if you mean it)",
        );
    }
    Ok((port, port))
}

fn parse_port(s: &str) -> Result<u16, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad port `{s}`: expected a number, N-M or `*`"));
    }
    s.parse::<u16>()
        .map_err(|_| format!("bad port `{s}`: ports go up to 65535"))
}

/// RFC 1123 host name syntax; names that look numeric were rejected earlier.
fn is_host_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `addr` with every bit past `prefix_len` cleared.
pub(crate) fn mask(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

/// An IPv4-mapped IPv6 network (`::ffff:a.b.c.d/96+n`) as the IPv4 network
/// it denotes; anything else unchanged.
pub(crate) fn unmap(addr: IpAddr, prefix_len: u8) -> (IpAddr, u8) {
    match addr {
        IpAddr::V6(a) if prefix_len >= 96 => match a.to_ipv4_mapped() {
            Some(v4) => (IpAddr::V4(v4), prefix_len - 96),
            None => (addr, prefix_len),
        },
        _ => (addr, prefix_len),
    }
}

/// Identity names become cgroup-visible labels and a fixed 64-byte kernel
/// field (63 + NUL), hence the narrow alphabet and length.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bad identity name `{name}`: use 1 to 63 characters of a-z, 0-9 and -"
        ))
    }
}

/// Longest path a `sockaddr_un` holds (108 bytes with the NUL).
const UNIX_PATH_MAX: usize = 107;

/// Unix socket paths are compared byte for byte with what a process passes
/// to connect(), so only one spelling of a path can be allowed: absolute and
/// lexically normal. `@name` is the abstract address `\0name`.
pub(crate) fn check_unix_path(path: &str) -> Result<(), ValueError> {
    if let Some(name) = path.strip_prefix('@') {
        return check_abstract_name(name);
    }
    if !path.starts_with('/') {
        return err(
            0,
            format!(
                "unix socket path `{path}` must be absolute (start with /), or `@name` for an \
                 abstract socket"
            ),
        );
    }
    if let Some(i) = path.find('\0') {
        return err(i, "unix socket path contains a NUL byte");
    }
    if path.len() > UNIX_PATH_MAX {
        // Point at the first character that does not fit.
        let at = (0..=UNIX_PATH_MAX)
            .rev()
            .find(|&i| path.is_char_boundary(i))
            .unwrap_or(0);
        return err(
            at,
            format!(
                "unix socket path is {} bytes, over the {UNIX_PATH_MAX} a sockaddr_un holds",
                path.len()
            ),
        );
    }
    let normal = path[1..]
        .split('/')
        .all(|c| !c.is_empty() && c != "." && c != "..");
    if !normal {
        return err(
            0,
            format!(
                "unix socket path `{path}` is not normalised (no `//`, `.`, `..` or trailing `/`); write `{}`",
                super::text::normalise_file(path)
            ),
        );
    }
    Ok(())
}

/// An abstract socket name (after the `@`): 1 to 107 bytes of printable
/// ASCII without spaces, matched exactly (the kernel takes the name's length
/// from the address length, so no other spelling reaches the same socket).
fn check_abstract_name(name: &str) -> Result<(), ValueError> {
    if name.is_empty() {
        return err(0, "abstract unix socket `@` needs a name after the @");
    }
    if let Some(i) = name.bytes().position(|b| !b.is_ascii_graphic()) {
        return err(
            1 + i,
            "abstract unix socket names may only hold printable ASCII without spaces",
        );
    }
    if name.len() > UNIX_PATH_MAX {
        return err(
            1 + UNIX_PATH_MAX,
            format!(
                "abstract unix socket name is {} bytes, over the {UNIX_PATH_MAX} a sockaddr_un holds",
                name.len()
            ),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str, p: u8) -> Target {
        Target::Net {
            addr: s.parse().expect("test address"),
            prefix_len: p,
        }
    }

    fn ok(text: &str) -> RuleSpec {
        parse_rule(text).unwrap_or_else(|e| panic!("{text}: {e:?}"))
    }

    fn bad(text: &str) -> ValueError {
        match parse_rule(text) {
            Ok(r) => panic!("{text} parsed as {r:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_the_documented_forms() {
        let r = ok("tcp://10.20.0.0/16:443");
        assert_eq!(
            (r.proto, r.target, r.port_lo, r.port_hi),
            (Proto::Tcp, net("10.20.0.0", 16), 443, 443)
        );
        let r = ok("udp://127.0.0.53:53");
        assert_eq!((r.proto, r.target), (Proto::Udp, net("127.0.0.53", 32)));
        let r = ok("tcp://[2001:db8::]/32:8000-8080");
        assert_eq!(
            (r.target, r.port_lo, r.port_hi),
            (net("2001:db8::", 32), 8000, 8080)
        );
        let r = ok("tcp://127.0.0.1:*");
        assert_eq!((r.port_lo, r.port_hi), (0, 65535));
        assert_eq!(ok("tcp://*:443").target, Target::Any);
        assert_eq!(ok("tcp://[2001:db8::1]:22").target, net("2001:db8::1", 128));
        assert_eq!(ok("tcp://0.0.0.0/0:1-2").target, net("0.0.0.0", 0));
        assert_eq!(
            ok("tcp://api.internal.example:443").target,
            Target::Host {
                name: "api.internal.example".into(),
                at: 6
            }
        );
        assert_eq!(ok("udp://1.2.3.4:0-0").port_lo, 0);
    }

    #[test]
    fn mapped_ipv6_becomes_ipv4() {
        assert_eq!(ok("tcp://[::ffff:10.0.0.1]:1").target, net("10.0.0.1", 32));
        assert_eq!(
            ok("tcp://[::ffff:10.0.0.0]/104:1").target,
            net("10.0.0.0", 8)
        );
        assert_eq!(ok("tcp://[::ffff:0:0]/96:1").target, net("0.0.0.0", 0));
        // Shorter than /96 covers more than the mapped range: stays IPv6.
        assert_eq!(ok("tcp://[::]/80:1").target, net("::", 80));
    }

    #[test]
    fn rejects_with_a_reason_and_a_position() {
        let e = bad("tcp://10.20.0.0/33:443");
        assert_eq!(
            e.message,
            "bad CIDR `10.20.0.0/33`: prefix length 33 is over 32"
        );
        assert_eq!(e.at, 6);
        let e = bad("tcp://10.20.1.0/16:443");
        assert!(
            e.message.contains("the network address is 10.20.0.0/16"),
            "{}",
            e.message
        );
        let e = bad("tcp://[2001:db8::1]/32:443");
        assert!(e.message.contains("is [2001:db8::]/32"), "{}", e.message);
        let e = bad("icmp://1.2.3.4:1");
        assert_eq!((e.at, e.message.starts_with("bad proto `icmp`")), (0, true));
        let e = bad("tcp://1.2.3.4:9000-80");
        assert_eq!(
            (e.at, e.message.as_str()),
            (14, "bad port range `9000-80`: 9000 is above 80")
        );
        let e = bad("tcp://1.2.3.4:80-70000");
        assert_eq!(e.at, 17);
        assert!(bad("tcp://1.2.3.4:0").message.contains("port 0"));
        assert!(bad("tcp://1.2.3.4").message.starts_with("missing port"));
        assert!(bad("tcp://1.2.3.4:").message.starts_with("missing port"));
        assert!(
            bad("tcp://[2001:db8::1]")
                .message
                .starts_with("missing port")
        );
        assert!(bad("tcp://2001:db8::1:80").message.contains("brackets"));
        assert!(
            bad("tcp://[2001:db8::/32]:80")
                .message
                .contains("after the bracket")
        );
        assert!(bad("tcp://*/8:80").message.contains("drop the /prefix"));
        assert!(
            bad("tcp://10.0.0.256:80")
                .message
                .starts_with("bad IPv4 address")
        );
        assert!(
            bad("tcp://host.example/24:80")
                .message
                .contains("host name takes no /prefix")
        );
        assert!(bad("tcp://bad_host:80").message.starts_with("bad address"));
        assert!(
            bad("tcp://10.0.0.0/+8:80")
                .message
                .contains("bad prefix length")
        );
        assert!(bad("10.0.0.1:80").message.starts_with("bad rule"));
        assert!(bad("tcp://:80").message.starts_with("missing address"));
        assert!(bad("tcp://[zz]:80").message.starts_with("bad IPv6 address"));
    }

    #[test]
    fn names() {
        assert!(check_name("support-agent").is_ok());
        assert!(check_name(&"a".repeat(63)).is_ok());
        assert!(check_name(&"a".repeat(64)).is_err());
        assert!(check_name("").is_err());
        assert!(check_name("Support").is_err());
        assert!(check_name("a_b").is_err());
    }

    #[test]
    fn unix_paths() {
        assert!(check_unix_path("/run/nscd/socket").is_ok());
        let long = format!("/{}", "a".repeat(106));
        assert!(check_unix_path(&long).is_ok());
        assert!(
            check_unix_path(&format!("{long}b")).is_err_and(|e| e.message.contains("108 bytes"))
        );
        assert!(check_unix_path("run/x").is_err_and(|e| e.message.contains("absolute")));
        for p in [
            "/run//x",
            "/run/./x",
            "/run/../x",
            "/run/x/",
            "/run/x/.",
            "/",
        ] {
            assert!(
                check_unix_path(p).is_err_and(|e| e.message.contains("not normalised")),
                "{p}"
            );
        }
        assert!(check_unix_path("/a/b/../c").is_err_and(|e| e.message.ends_with("write `/a/c`")));
    }

    #[test]
    fn abstract_unix_names() {
        assert!(check_unix_path("@corral-test").is_ok());
        assert!(check_unix_path("@/tmp/.X11-unix/X0").is_ok());
        assert!(check_unix_path(&format!("@{}", "a".repeat(107))).is_ok());
        assert!(
            check_unix_path(&format!("@{}", "a".repeat(108)))
                .is_err_and(|e| e.message.contains("108 bytes") && e.at == 108)
        );
        assert!(check_unix_path("@").is_err_and(|e| e.message.contains("needs a name")));
        assert!(
            check_unix_path("@a b").is_err_and(|e| e.at == 2 && e.message.contains("printable"))
        );
        assert!(check_unix_path("@a\u{e9}").is_err_and(|e| e.message.contains("printable")));
        assert!(check_unix_path("x").is_err_and(|e| e.message.contains("`@name`")));
    }
}
