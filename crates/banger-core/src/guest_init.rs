//! What runs as a guest's PID 1: the image's own systemd, or banger's minimal init (the
//! guest agent). Decided when the image is built, from its tree, and recorded in its bundle
//! manifest and image row; the daemon turns it into the kernel command line.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where the guest agent is in every image (the guest contract).
pub const AGENT_PATH: &str = "/usr/local/bin/banger-agent";

/// The marker an image built with `--init systemd` carries: the agent as init installs
/// systemd and openssh-server on a boot with a network, then hands PID 1 to systemd.
pub const INSTALL_SYSTEMD_MARKER: &str = "/etc/banger/install-systemd";

/// A guest's init.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum GuestInit {
    /// The image's systemd boots it and starts banger's units (images with systemd).
    #[default]
    Systemd,
    /// The agent is PID 1: mounts, network, work disk, sshd if any, reaping, poweroff.
    Banger,
    /// The agent is PID 1 and installs systemd (and openssh-server) with the image's package
    /// manager on a boot with a network; once installed it hands PID 1 to systemd.
    InstallSystemd,
}

impl GuestInit {
    pub const ALL: [Self; 3] = [Self::Systemd, Self::Banger, Self::InstallSystemd];

    /// The name used in JSON, the store, flags and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Systemd => "systemd",
            Self::Banger => "banger",
            Self::InstallSystemd => "install-systemd",
        }
    }

    /// The kernel command line words this init needs after the backend-neutral ones:
    /// nothing for systemd (the kernel finds `/sbin/init`), `init=` the agent otherwise.
    pub fn kernel_args(self) -> Option<String> {
        match self {
            Self::Systemd => None,
            Self::Banger | Self::InstallSystemd => Some(format!("init={AGENT_PATH}")),
        }
    }
}

impl fmt::Display for GuestInit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An init name that is not one of [`GuestInit::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown guest init {input:?} (systemd, banger or install-systemd)")]
pub struct ParseGuestInitError {
    pub input: String,
}

impl FromStr for GuestInit {
    type Err = ParseGuestInitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| ParseGuestInitError {
                input: s.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_and_json() {
        for init in GuestInit::ALL {
            assert_eq!(init.as_str().parse::<GuestInit>().unwrap(), init);
            let json = serde_json::to_string(&init).unwrap();
            assert_eq!(json, format!("\"{init}\""));
        }
        assert!("upstart".parse::<GuestInit>().is_err());
    }

    #[test]
    fn only_banger_s_inits_change_the_kernel_command_line() {
        assert_eq!(GuestInit::Systemd.kernel_args(), None);
        assert_eq!(
            GuestInit::Banger.kernel_args().as_deref(),
            Some("init=/usr/local/bin/banger-agent")
        );
        assert_eq!(
            GuestInit::InstallSystemd.kernel_args(),
            GuestInit::Banger.kernel_args()
        );
    }
}
