use std::fmt;

use super::Event;

/// The human one-line form of `corral tail`.
impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = &self.lost {
            return write!(f, "{} LOST {} events ({})", self.time, l.count, l.source);
        }
        if self.daemon_line(f)? {
            return Ok(());
        }
        let o = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
        write!(
            f,
            "{} {} {} {} pid={} comm={} ",
            self.time,
            self.verdict.map_or("-", |v| v.name()).to_uppercase(),
            self.kind,
            o(&self.identity),
            self.tgid.map_or("-".into(), |p| p.to_string()),
            o(&self.comm),
        )?;
        self.target(f)?;
        match (&self.rule, &self.reason) {
            (Some(r), _) => write!(f, " by {r}")?,
            (None, Some(r)) => write!(f, " ({r})")?,
            _ => {}
        }
        if let Some(ls) = self.leases.as_ref().filter(|l| !l.is_empty()) {
            let shown: Vec<String> = ls
                .iter()
                .map(|l| format!("{}({})", l.id, l.scopes.join(",")))
                .collect();
            write!(f, " leases={}", shown.join(","))?;
        }
        Ok(())
    }
}

impl Event {
    /// The daemon's own events (policy, audit, operator, lease, anomaly);
    /// `false` when this is none of them.
    fn daemon_line(&self, f: &mut fmt::Formatter<'_>) -> Result<bool, fmt::Error> {
        let o = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
        if let Some(p) = &self.policy {
            write!(
                f,
                "{} POLICY reload ({}) {} generation={} errors={}",
                self.time,
                p["trigger"].as_str().unwrap_or("?"),
                if p["ok"] == true { "ok" } else { "FAILED" },
                p["generation"],
                p["errors"]
            )?;
            return Ok(true);
        }
        if let Some(a) = &self.audit {
            write!(
                f,
                "{} AUDIT {} ({})",
                self.time,
                a["action"].as_str().unwrap_or("?"),
                a["error"].as_str().unwrap_or("?")
            )?;
            match a["action"].as_str() {
                Some("write-recovered") => write!(
                    f,
                    ": {} records were not written since {}",
                    a["not_written"],
                    a["since"].as_str().unwrap_or("?")
                ),
                _ => write!(f, ": the audit log is not written; enforcement goes on"),
            }?;
            return Ok(true);
        }
        if let Some(a) = &self.operator {
            write!(
                f,
                "{} OPERATOR {} {} uid={} pid={} status={}",
                self.time,
                a["method"].as_str().unwrap_or("?"),
                a["route"].as_str().unwrap_or("?"),
                a["uid"],
                a["pid"],
                a["status"]
            )?;
            return Ok(true);
        }
        if let Some(d) = self.lease.as_ref().or(self.anomaly.as_ref()) {
            write!(
                f,
                "{} {} {} {}",
                self.time,
                self.kind.name().to_uppercase(),
                o(&self.identity),
                d["action"].as_str().unwrap_or("?")
            )?;
            if let Some(id) = d["lease"].as_str() {
                write!(f, " lease={id}")?;
            }
            for k in [
                "reason",
                "path",
                "denials",
                "threshold_to_frozen_us",
                "leases",
            ] {
                if !d[k].is_null() {
                    write!(f, " {k}={}", d[k])?;
                }
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// What a judged operation was aimed at.
    fn target(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(n) = self.net.as_ref().filter(|n| n.op == "create") {
            // socket() itself: no address yet, the kind is the target.
            write!(f, "socket {} {} {}", n.family, n.sock_type, n.protocol)?;
        } else if let Some(n) = &self.net {
            let addr = if n.family == "inet6" {
                format!("[{}]", n.addr)
            } else {
                n.addr.clone()
            };
            write!(f, "{} {}://{}:{}", n.op, n.protocol, addr, n.port)?;
        }
        if let Some(u) = &self.unix {
            write!(f, "{} unix:{}", u.op, u.path)?;
        }
        if let Some(x) = &self.syscall {
            write!(f, "{} (#{}) {}", x.name, x.nr, x.layer)?;
            if let Some(e) = &x.errno {
                write!(f, " {e}")?;
            }
            if let Some(d) = &x.detail {
                write!(f, " [{d}]")?;
            }
        }
        if let Some(x) = &self.file {
            if let Some(op) = &x.op {
                write!(f, "{op} ")?;
            }
            write!(f, "{} {} ({} {})", x.access, x.path, x.layer, x.errno)?;
        }
        if let Some(x) = &self.protect {
            write!(f, "{}", x.op)?;
            if x.target_is_daemon {
                write!(f, " of the corral daemon")?;
            }
            if let Some(t) = x.target_pid {
                write!(f, " pid={t}")?;
            }
            write!(f, " arg={}", x.arg)?;
        }
        Ok(())
    }
}
