//! What an event is and what was decided, as types both ends of the stream
//! share (daemon, `corral tail`, the audit log's readers, the tests): the
//! wire spelling is the serde name, so a kind added here is a kind
//! `--kind` and `GET /v1/events?kind=` accept, and a misspelt one is an
//! error on both.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Net,
    Unix,
    File,
    Protect,
    Syscall,
    Lease,
    Anomaly,
    Policy,
    Operator,
    Audit,
    /// Events a reader did not get (ring full, subscriber behind); every
    /// subscriber gets these, whatever it filtered.
    Lost,
}

impl EventKind {
    /// Every kind a subscriber can filter on (all but `lost`).
    pub const FILTERABLE: [EventKind; 10] = [
        EventKind::Net,
        EventKind::Unix,
        EventKind::File,
        EventKind::Protect,
        EventKind::Syscall,
        EventKind::Lease,
        EventKind::Anomaly,
        EventKind::Policy,
        EventKind::Operator,
        EventKind::Audit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventKind::Net => "net",
            EventKind::Unix => "unix",
            EventKind::File => "file",
            EventKind::Protect => "protect",
            EventKind::Syscall => "syscall",
            EventKind::Lease => "lease",
            EventKind::Anomaly => "anomaly",
            EventKind::Policy => "policy",
            EventKind::Operator => "operator",
            EventKind::Audit => "audit",
            EventKind::Lost => "lost",
        }
    }

    /// A kernel or launcher judgement of an agent's operation (what
    /// denials, audits and kills are counted and learnt from).
    pub fn is_judged(self) -> bool {
        matches!(
            self,
            EventKind::Net
                | EventKind::Unix
                | EventKind::File
                | EventKind::Protect
                | EventKind::Syscall
        )
    }

    /// The filterable kinds' names, for `--kind`'s help and errors.
    pub fn filterable_names() -> Vec<&'static str> {
        Self::FILTERABLE.iter().map(|k| k.name()).collect()
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event kind `{0}`")]
pub struct UnknownKind(pub String);

impl FromStr for EventKind {
    type Err = UnknownKind;
    /// The filterable kinds only: `lost` reaches every subscriber anyway.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::FILTERABLE
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownKind(s.to_string()))
    }
}

/// What the kernel (or the launcher) did with a judged operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventVerdict {
    /// Refused (EPERM/EACCES).
    Deny,
    /// Allowed; it would have been refused (audit mode).
    Audit,
    /// The process was killed (`kill` mode).
    Kill,
}

impl EventVerdict {
    pub fn name(self) -> &'static str {
        match self {
            EventVerdict::Deny => "deny",
            EventVerdict::Audit => "audit",
            EventVerdict::Kill => "kill",
        }
    }
}

impl fmt::Display for EventVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an operation was judged the way it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventReason {
    /// A written `deny` entry decided.
    DenyRule,
    /// No entry allows it: default deny.
    NoRule,
    /// A socket kind no rule can judge.
    Unsupported,
    /// Corral's own ground, refused to every identity.
    SelfProtection,
    /// Refused because what should decide could not (no launcher answered,
    /// a path that could not be established).
    FailClosed,
    /// Landlock refused what the current policy would allow (file
    /// permissions, or a launch-time limit).
    NotByPolicy,
}

impl EventReason {
    pub fn name(self) -> &'static str {
        match self {
            EventReason::DenyRule => "deny-rule",
            EventReason::NoRule => "no-rule",
            EventReason::Unsupported => "unsupported",
            EventReason::SelfProtection => "self-protection",
            EventReason::FailClosed => "fail-closed",
            EventReason::NotByPolicy => "not-by-policy",
        }
    }
}

impl fmt::Display for EventReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire spelling is the serde name, `name()` and `FromStr` alike.
    #[test]
    fn names_round_trip_through_json() {
        for k in EventKind::FILTERABLE.into_iter().chain([EventKind::Lost]) {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.name()));
            assert_eq!(serde_json::from_str::<EventKind>(&json).unwrap(), k);
        }
        for k in EventKind::FILTERABLE {
            assert_eq!(k.name().parse::<EventKind>(), Ok(k));
        }
        assert!("lost".parse::<EventKind>().is_err());
        assert!("nett".parse::<EventKind>().is_err());
        for v in [EventVerdict::Deny, EventVerdict::Audit, EventVerdict::Kill] {
            assert_eq!(serde_json::to_string(&v).unwrap(), format!("\"{v}\""));
        }
        use EventReason::*;
        for r in [
            DenyRule,
            NoRule,
            Unsupported,
            SelfProtection,
            FailClosed,
            NotByPolicy,
        ] {
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
    }
}
