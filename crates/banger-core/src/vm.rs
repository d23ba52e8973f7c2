//! Values that describe a VM, shared by the store (which keeps them), the API (which reports
//! them) and the daemon: its lifecycle [`VmState`], its [`VmOrigin`] and its guest [`MacAddr`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Lifecycle state of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum VmState {
    /// Being created: disks prepared, VMM starting.
    Creating,
    Running,
    Stopped,
    /// Creation or start failed; `banger vm delete` removes it.
    Error,
}

impl VmState {
    pub const ALL: [Self; 4] = [Self::Creating, Self::Running, Self::Stopped, Self::Error];

    /// The lowercase name used in JSON, the store and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Error => "error",
        }
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of [`VmState::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown VM state {input:?}")]
pub struct ParseVmStateError {
    pub input: String,
}

impl FromStr for VmState {
    type Err = ParseVmStateError;

    /// Exactly one of the lowercase names.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| ParseVmStateError {
                input: s.to_string(),
            })
    }
}

/// Who asked for a VM, recorded with it: the MCP server only deletes the VMs it created
/// (unless config `mcp.delete_any` says otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum VmOrigin {
    /// A client of the daemon API: the CLI, a script.
    #[default]
    Api,
    /// `banger mcp`, on behalf of a coding agent.
    Mcp,
    /// The daemon's local web UI.
    Web,
}

impl VmOrigin {
    pub const ALL: [Self; 3] = [Self::Api, Self::Mcp, Self::Web];

    /// The lowercase name used in JSON, the store and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Mcp => "mcp",
            Self::Web => "web",
        }
    }
}

impl fmt::Display for VmOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An origin name that is not one of [`VmOrigin::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown VM origin {input:?}")]
pub struct ParseVmOriginError {
    pub input: String,
}

impl FromStr for VmOrigin {
    type Err = ParseVmOriginError;

    /// Exactly one of the lowercase names.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| ParseVmOriginError {
                input: s.to_string(),
            })
    }
}

/// A guest's Ethernet address. Written as six colon-separated pairs of uppercase hex digits
/// (`06:00:AC:1E:00:05`); read in either case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(value_type = String, pattern = "^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$", example = "06:00:AC:1E:00:05")
)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02X}:{b:02X}:{c:02X}:{d:02X}:{e:02X}:{g:02X}")
    }
}

/// Text that is not six colon-separated pairs of hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a MAC address (six colon-separated pairs of hex digits)")]
pub struct ParseMacError {
    pub input: String,
}

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMacError {
            input: s.to_string(),
        };
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut bytes {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(err());
            }
            *b = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Self(bytes))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = ParseMacError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> Self {
        m.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_unknown_ones_are_refused() {
        for s in VmState::ALL {
            assert_eq!(s.as_str().parse::<VmState>(), Ok(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{s}\""));
        }
        assert_eq!(
            "Running".parse::<VmState>().unwrap_err().to_string(),
            "unknown VM state \"Running\""
        );
    }

    #[test]
    fn origins_round_trip_default_to_api_and_unknown_ones_are_refused() {
        for o in VmOrigin::ALL {
            assert_eq!(o.as_str().parse::<VmOrigin>(), Ok(o));
            assert_eq!(serde_json::to_string(&o).unwrap(), format!("\"{o}\""));
        }
        assert_eq!(VmOrigin::default(), VmOrigin::Api);
        assert_eq!(
            "MCP".parse::<VmOrigin>().unwrap_err().to_string(),
            "unknown VM origin \"MCP\""
        );
    }

    #[test]
    fn macs_print_uppercase_and_parse_either_case() {
        let m = MacAddr([0x06, 0, 0xac, 0x1e, 0, 0x05]);
        assert_eq!(m.to_string(), "06:00:AC:1E:00:05");
        assert_eq!("06:00:ac:1e:00:05".parse::<MacAddr>(), Ok(m));
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"06:00:AC:1E:00:05\"");
        for bad in [
            "",
            "06:00:AC:1E:00",
            "06:00:AC:1E:00:05:07",
            "6:00:AC:1E:00:05",
            "zz:00:AC:1E:00:05",
            "+6:00:AC:1E:00:05",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }
}
