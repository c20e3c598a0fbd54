//! Reading the text of the audit records the observer uses. Values the
//! kernel calls untrusted (paths, comm, exe) come quoted, or as hex when
//! they hold a space, quote or control byte; both are decoded here.

use agent_common::file::{ACCESS_EXEC, ACCESS_READ, ACCESS_WRITE};

/// `audit(SECONDS.MILLIS:SERIAL)`: records of one syscall share a serial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub wall_ms: u64,
    pub serial: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Record {
    /// AUDIT_LANDLOCK_ACCESS: one refused access.
    Access {
        domain: u64,
        /// `ACCESS_*` bits of the filesystem blockers; 0 for non-file ones.
        access: u32,
        blockers: String,
        path: Option<String>,
    },
    /// AUDIT_LANDLOCK_DOMAIN `status=allocated`: written once, with the
    /// domain's first logged denial; `pid`/`comm` are its creator's at the
    /// time it called `landlock_restrict_self`.
    Allocated {
        domain: u64,
        pid: u32,
        comm: String,
    },
    /// `status=deallocated`: the domain's true denial count, logged or not.
    Deallocated {
        domain: u64,
        denials: u64,
    },
    /// AUDIT_SYSCALL: the process behind the records of its serial.
    Syscall {
        pid: u32,
        comm: String,
        nr: u32,
        exit: i64,
    },
    /// AUDIT_PATH: a name the syscall was given, as given.
    Path {
        name: String,
    },
    /// AUDIT_CWD: what relative names are relative to.
    Cwd {
        cwd: String,
    },
    EndOfEvent,
}

/// `key=value` pairs, and whether the value was quoted (a quoted value
/// keeps its spaces); words without `=` are skipped.
fn fields(s: &str) -> impl Iterator<Item = (&str, &str, bool)> {
    let mut rest = s;
    std::iter::from_fn(move || {
        loop {
            rest = rest.trim_start();
            if rest.is_empty() {
                return None;
            }
            let word_end = rest.find([' ', '=']).unwrap_or(rest.len());
            if !rest[word_end..].starts_with('=') {
                rest = &rest[word_end..];
                continue;
            }
            let key = &rest[..word_end];
            let after = &rest[word_end + 1..];
            let (val, quoted, next) = match after.strip_prefix('"') {
                Some(q) => {
                    let end = q.find('"').unwrap_or(q.len());
                    (&q[..end], true, q.get(end + 1..).unwrap_or(""))
                }
                None => {
                    let end = after.find(' ').unwrap_or(after.len());
                    (&after[..end], false, &after[end..])
                }
            };
            rest = next;
            return Some((key, val, quoted));
        }
    })
}

/// An untrusted string: quoted text as is, otherwise hex-decoded.
fn untrusted(raw: &str, quoted: bool) -> Option<String> {
    if quoted {
        return Some(raw.to_string());
    }
    if raw == "(null)" || !raw.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..raw.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(raw.get(i..i + 2)?, 16).ok())
        .collect();
    Some(String::from_utf8_lossy(&bytes?).into_owned())
}

fn get<'a>(s: &'a str, key: &str) -> Option<(&'a str, bool)> {
    fields(s)
        .find(|(k, _, _)| *k == key)
        .map(|(_, v, q)| (v, q))
}

fn num<T: std::str::FromStr>(s: &str, key: &str) -> Option<T> {
    get(s, key)?.0.parse().ok()
}

fn text(s: &str, key: &str) -> Option<String> {
    let (v, q) = get(s, key)?;
    untrusted(v, q)
}

/// `ACCESS_*` of Landlock's `fs.*` blocker names (the rest are network or
/// scope blockers, not file access).
pub fn access_of(blockers: &str) -> u32 {
    blockers.split(',').fold(0, |a, b| {
        a | match b {
            "fs.execute" => ACCESS_EXEC,
            "fs.read_file" | "fs.read_dir" => ACCESS_READ,
            b if b.starts_with("fs.") => ACCESS_WRITE,
            _ => 0,
        }
    })
}

/// Parses one record of `ty` (`netlink::AUDIT_*`): its stamp and body.
pub fn parse(ty: u16, body: &[u8]) -> Option<(Stamp, Record)> {
    use super::netlink::*;
    let s = std::str::from_utf8(body).ok()?.trim_end_matches('\0');
    let rest = s.strip_prefix("audit(")?;
    let close = rest.find("):")?;
    let (time, serial) = rest[..close].split_once(':')?;
    let (sec, ms) = time.split_once('.')?;
    let stamp = Stamp {
        wall_ms: sec.parse::<u64>().ok()? * 1000 + ms.parse::<u64>().ok()?,
        serial: serial.parse().ok()?,
    };
    let s = &rest[close + 2..];
    let domain = || get(s, "domain").and_then(|(v, _)| u64::from_str_radix(v, 16).ok());
    let rec = match ty {
        AUDIT_LANDLOCK_ACCESS => {
            let blockers = get(s, "blockers")?.0.to_string();
            Record::Access {
                domain: domain()?,
                access: access_of(&blockers),
                path: text(s, "path").or_else(|| text(s, "name")),
                blockers,
            }
        }
        AUDIT_LANDLOCK_DOMAIN => match get(s, "status")?.0 {
            "allocated" => Record::Allocated {
                domain: domain()?,
                pid: num(s, "pid")?,
                comm: text(s, "comm").unwrap_or_default(),
            },
            "deallocated" => Record::Deallocated {
                domain: domain()?,
                denials: num(s, "denials")?,
            },
            _ => return None,
        },
        AUDIT_SYSCALL => Record::Syscall {
            pid: num(s, "pid")?,
            comm: text(s, "comm").unwrap_or_default(),
            nr: num(s, "syscall")?,
            exit: num(s, "exit").unwrap_or(0),
        },
        AUDIT_PATH => Record::Path {
            name: text(s, "name")?,
        },
        AUDIT_CWD => Record::Cwd {
            cwd: text(s, "cwd")?,
        },
        AUDIT_EOE => Record::EndOfEvent,
        _ => return None,
    };
    Some((stamp, rec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::llaudit::netlink::*;

    #[test]
    fn reads_the_records_of_one_denial() {
        let (st, r) = parse(
            AUDIT_LANDLOCK_ACCESS,
            b"audit(1796535326.548:5391): domain=14ac828dc blockers=fs.read_file path=\"/etc/host name\" dev=\"vda\" ino=611",
        )
        .unwrap();
        assert_eq!(
            st,
            Stamp {
                wall_ms: 1_796_535_326_548,
                serial: 5391
            }
        );
        assert_eq!(
            r,
            Record::Access {
                domain: 0x14ac828dc,
                access: ACCESS_READ,
                blockers: "fs.read_file".into(),
                path: Some("/etc/host name".into()),
            }
        );
        let (_, r) = parse(
            AUDIT_LANDLOCK_DOMAIN,
            b"audit(1.1:2): domain=ab status=allocated mode=enforcing pid=17172 uid=0 exe=\"/x\" comm=\"c0AB\"",
        )
        .unwrap();
        assert_eq!(
            r,
            Record::Allocated {
                domain: 0xab,
                pid: 17172,
                comm: "c0AB".into()
            }
        );
        let (_, r) = parse(
            AUDIT_SYSCALL,
            b"audit(1.1:2): arch=c000003e syscall=257 success=no exit=-13 a0=ffffff9c items=1 ppid=1 pid=9 auid=4294967295 comm=636174 exe=\"/usr/bin/cat\" key=(null)",
        )
        .unwrap();
        assert_eq!(
            r,
            Record::Syscall {
                pid: 9,
                comm: "cat".into(),
                nr: 257,
                exit: -13
            }
        );
        let (_, r) = parse(
            AUDIT_PATH,
            b"audit(1.1:2): item=0 name=\"kb/link\" inode=5 nametype=NORMAL",
        )
        .unwrap();
        assert_eq!(
            r,
            Record::Path {
                name: "kb/link".into()
            }
        );
        assert!(parse(AUDIT_PATH, b"audit(1.1:2): item=1 name=(null) inode=5").is_none());
        let (_, r) = parse(
            AUDIT_LANDLOCK_DOMAIN,
            b"audit(1.1:3): domain=ab status=deallocated denials=4",
        )
        .unwrap();
        assert_eq!(
            r,
            Record::Deallocated {
                domain: 0xab,
                denials: 4
            }
        );
    }

    #[test]
    fn hex_paths_and_blocker_sets() {
        let (_, r) = parse(
            AUDIT_LANDLOCK_ACCESS,
            b"audit(1.1:2): domain=1 blockers=fs.execute,fs.read_file path=2F746D702F6120 dev=\"vda\" ino=1",
        )
        .unwrap();
        let Record::Access { access, path, .. } = r else {
            panic!()
        };
        assert_eq!(access, ACCESS_EXEC | ACCESS_READ);
        assert_eq!(path.as_deref(), Some("/tmp/a "));
        assert_eq!(access_of("fs.make_reg"), ACCESS_WRITE);
        assert_eq!(access_of("net.connect_tcp"), 0);
    }

    #[test]
    fn garbage_is_not_a_record() {
        for b in [&b""[..], b"audit(", b"audit(1.1:x): domain=1", b"\xff\xfe"] {
            assert!(parse(AUDIT_LANDLOCK_ACCESS, b).is_none());
        }
    }
}
