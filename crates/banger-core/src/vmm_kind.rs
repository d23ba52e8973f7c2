//! Which VMM runs a VM: [`VmmKind`], the one representation of a backend's kind used by the
//! config, the store, the API, the daemon and `banger doctor`; and [`VmmChoice`], the config's
//! `vmm` key (`auto` or a kind), resolved against the binaries found by [`choose_vmm`].
//!
//! The lowercase names (`firecracker`, `qemu`, `auto`) are spelled in [`VmmKind::as_str`] and
//! [`VmmChoice::as_str`] only; parsing, serde and messages go through them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::limits::{Bound, VmLimits};

/// Which VMM runs the VMs: Firecracker (needs KVM with hardware virtualization) or QEMU (KVM
/// when usable, else TCG software emulation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum VmmKind {
    Firecracker,
    Qemu,
}

impl VmmKind {
    /// Every kind, in the order `auto` prefers them.
    pub const ALL: [Self; 2] = [Self::Firecracker, Self::Qemu];

    /// The lowercase name used in config, JSON, the store and messages.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Firecracker => "firecracker",
            Self::Qemu => "qemu",
        }
    }

    /// The name of the backend's binary, as looked up on `PATH`.
    pub const fn binary(self) -> &'static str {
        match self {
            Self::Firecracker => "firecracker",
            Self::Qemu => "qemu-system-x86_64",
        }
    }

    /// The largest VM this backend runs, within banger's own caps ([`VmLimits::BANGER`]):
    ///
    /// - Firecracker: at most 32 vCPUs (`MachineConfiguration.vcpu_count` in its API,
    ///   `MAX_SUPPORTED_VCPUS` in its source); its API sets no memory maximum.
    /// - QEMU (`q35`, no IOMMU): at most 255 vCPUs (8-bit xAPIC ids: more needs interrupt
    ///   remapping, and QEMU refuses it under TCG), and at most 990 GiB of memory: `q35` keeps
    ///   2 GiB of RAM below 4 GiB and maps the rest above it, followed by a 32 GiB 64-bit PCI
    ///   hole, which must end inside the 40-bit (1 TiB) physical address space QEMU gives a
    ///   TCG guest. (A KVM guest gets the host's address width, usually wider.)
    pub fn limits(self) -> VmLimits {
        match self {
            Self::Firecracker => VmLimits {
                vcpus: Bound {
                    max: 32,
                    set_by: "Firecracker accepts",
                },
                ..VmLimits::BANGER
            },
            Self::Qemu => VmLimits {
                vcpus: Bound {
                    max: 255,
                    set_by: "QEMU's q35 machine addresses without an IOMMU",
                },
                memory_mib: Bound {
                    max: 990 << 10,
                    set_by: "QEMU's q35 machine fits in a 40-bit guest address space",
                },
                ..VmLimits::BANGER
            },
        }
        .within_banger()
    }
}

impl fmt::Display for VmmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A VMM name that is neither `firecracker` nor `qemu`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown VMM {input:?}: expected {}", quoted(&VmmKind::ALL.map(VmmKind::as_str)))]
pub struct ParseVmmKindError {
    pub input: String,
}

/// `"a" or "b"`.
fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(" or ")
}

impl FromStr for VmmKind {
    type Err = ParseVmmKindError;

    /// Accepts `firecracker` and `qemu`, in any case, surrounding whitespace ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == wanted)
            .ok_or_else(|| ParseVmmKindError {
                input: s.to_string(),
            })
    }
}

/// The config's `vmm` key (or `BANGER_VMM`): a kind, or `auto` (Firecracker when its binary
/// is found, else QEMU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum VmmChoice {
    #[default]
    Auto,
    Kind(VmmKind),
}

impl VmmChoice {
    /// Every value, as written in the config.
    pub const NAMES: [&str; 3] = [
        "auto",
        VmmKind::Firecracker.as_str(),
        VmmKind::Qemu.as_str(),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => Self::NAMES[0],
            Self::Kind(k) => k.as_str(),
        }
    }
}

impl fmt::Display for VmmChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `vmm` value that is not one of [`VmmChoice::NAMES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("vmm {input:?} is not one of {}", VmmChoice::NAMES.join(", "))]
pub struct ParseVmmChoiceError {
    pub input: String,
}

impl FromStr for VmmChoice {
    type Err = ParseVmmChoiceError;

    /// Exactly `auto`, `firecracker` or `qemu` (the config's spelling).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == Self::Auto.as_str() {
            return Ok(Self::Auto);
        }
        VmmKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .map(Self::Kind)
            .ok_or_else(|| ParseVmmChoiceError {
                input: s.to_string(),
            })
    }
}

impl TryFrom<String> for VmmChoice {
    type Error = ParseVmmChoiceError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<VmmChoice> for String {
    fn from(c: VmmChoice) -> Self {
        c.as_str().to_string()
    }
}

/// Why [`choose_vmm`] found no backend for new VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoVmm {
    #[error("neither firecracker nor qemu-system-x86_64 was found")]
    NoneFound,
    #[error("vmm = {kind}, but no {} binary was found", kind.binary())]
    NotFound { kind: VmmKind },
}

/// Which backend new VMs get, given the `choice` and whether each backend's binary was found
/// (`found(kind)`). `auto` prefers Firecracker. Shared by the daemon (which decides) and
/// `banger doctor` (which reports), so both agree.
pub fn choose_vmm(choice: VmmChoice, found: impl Fn(VmmKind) -> bool) -> Result<VmmKind, NoVmm> {
    match choice {
        VmmChoice::Auto => VmmKind::ALL
            .into_iter()
            .find(|&k| found(k))
            .ok_or(NoVmm::NoneFound),
        VmmChoice::Kind(kind) if found(kind) => Ok(kind),
        VmmChoice::Kind(kind) => Err(NoVmm::NotFound { kind }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmm_kind_round_trips() {
        for kind in VmmKind::ALL {
            assert_eq!(kind.to_string().parse::<VmmKind>(), Ok(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{kind}\""));
            assert_eq!(serde_json::from_str::<VmmKind>(&json).unwrap(), kind);
        }
        assert_eq!(" QEMU ".parse::<VmmKind>(), Ok(VmmKind::Qemu));
        let err = "kvmtool".parse::<VmmKind>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown VMM \"kvmtool\": expected \"firecracker\" or \"qemu\""
        );
        assert!(serde_json::from_str::<VmmKind>("\"Qemu\"").is_err());
    }

    #[test]
    fn vmm_choice_round_trips_and_refuses_the_rest() {
        for name in VmmChoice::NAMES {
            let c: VmmChoice = name.parse().unwrap();
            assert_eq!(c.as_str(), name);
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(serde_json::from_str::<VmmChoice>(&json).unwrap(), c);
        }
        assert_eq!(VmmChoice::default(), VmmChoice::Auto);
        let e = "kvmtool".parse::<VmmChoice>().unwrap_err().to_string();
        assert_eq!(e, "vmm \"kvmtool\" is not one of auto, firecracker, qemu");
        assert!("Auto".parse::<VmmChoice>().is_err());
    }

    #[test]
    fn vmm_choice() {
        use VmmKind::{Firecracker as Fc, Qemu};
        let both = |_| true;
        let only = |k: VmmKind| move |x| x == k;
        assert_eq!(choose_vmm(VmmChoice::Auto, both), Ok(Fc));
        assert_eq!(choose_vmm(VmmChoice::Auto, only(Qemu)), Ok(Qemu));
        assert_eq!(
            choose_vmm(VmmChoice::Auto, |_| false),
            Err(NoVmm::NoneFound)
        );
        assert_eq!(choose_vmm(VmmChoice::Kind(Qemu), both), Ok(Qemu));
        let e = choose_vmm(VmmChoice::Kind(Fc), only(Qemu)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "vmm = firecracker, but no firecracker binary was found"
        );
        let e = choose_vmm(VmmChoice::Kind(Qemu), only(Fc)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "vmm = qemu, but no qemu-system-x86_64 binary was found"
        );
    }

    #[test]
    fn backend_limits() {
        let fc = VmmKind::Firecracker.limits();
        assert_eq!(fc.vcpus.max, 32);
        assert_eq!(fc.memory_mib, VmLimits::BANGER.memory_mib);
        assert_eq!(fc.disk_bytes, VmLimits::BANGER.disk_bytes);
        let q = VmmKind::Qemu.limits();
        assert_eq!(q.vcpus.max, 255);
        assert_eq!(q.memory_mib.max, 990 * 1024);
        for l in [fc, q] {
            assert!(l.vcpus.max <= VmLimits::BANGER.vcpus.max);
            assert!(l.memory_mib.max <= VmLimits::BANGER.memory_mib.max);
        }
    }
}
