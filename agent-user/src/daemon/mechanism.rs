//! What each enforcement mechanism is doing on this host, as status and
//! doctor print it: Corral never pretends to enforce. A leaf, so the
//! features that report themselves need not know who prints them.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MechanismState {
    Enforcing,
    /// A weaker mechanism stands in; the detail says which and why.
    Fallback,
    Unavailable,
}

impl MechanismState {
    pub fn name(self) -> &'static str {
        match self {
            MechanismState::Enforcing => "enforcing",
            MechanismState::Fallback => "fallback",
            MechanismState::Unavailable => "unavailable",
        }
    }

    /// `Enforcing` when `ok`, else `Unavailable`.
    pub fn of(ok: bool) -> MechanismState {
        if ok {
            MechanismState::Enforcing
        } else {
            MechanismState::Unavailable
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Mechanism {
    pub name: &'static str,
    pub state: MechanismState,
    pub detail: String,
}
