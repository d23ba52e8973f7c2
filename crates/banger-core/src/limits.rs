//! Bounds on a VM's resources, checked by the CLI and again by the daemon before anything is
//! made or stored.
//!
//! Two layers:
//!
//! - [`VmLimits::BANGER`]: banger's own caps, the same on every host and every backend, so the
//!   CLI can check them before it calls the daemon:
//!   - **vCPUs ≤ 255**: an x86 guest without interrupt remapping addresses its CPUs by 8-bit
//!     xAPIC ids, 255 being the broadcast id.
//!   - **memory ≤ 1 TiB**: far above any development VM; keeps every size far from overflow.
//!   - **disk sizes ≤ 16 TiB**: VM disks are sparse files in the state dir, and 16 TiB is the
//!     largest file ext4 holds with 4 KiB blocks (and the largest ext4 `resize2fs` can grow
//!     without the `64bit` feature); a larger disk would fail halfway through preparation.
//! - Each VMM backend's own limits (`banger_vmm::Vmm::limits`), at most banger's: Firecracker
//!   takes at most 32 vCPUs (`vcpu_count` in its API). The daemon checks those once it knows
//!   the VM's backend.
//!
//! Every message says the real limit and who sets it.

use crate::size::ByteSize;

/// The largest value a resource may take, and who sets that limit (for messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    pub max: u64,
    /// Completes "the most ...": e.g. `"Firecracker accepts"`.
    pub set_by: &'static str,
}

/// The largest CPU count, memory and disk sizes a VM may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmLimits {
    pub vcpus: Bound,
    pub memory_mib: Bound,
    pub disk_bytes: Bound,
}

const TIB: u64 = 1 << 40;

impl VmLimits {
    /// banger's own caps (see the module docs).
    pub const BANGER: VmLimits = VmLimits {
        vcpus: Bound {
            max: 255,
            set_by: "an x86 guest can address without interrupt remapping",
        },
        memory_mib: Bound {
            max: TIB >> 20,
            set_by: "banger gives a VM",
        },
        disk_bytes: Bound {
            max: 16 * TIB,
            set_by: "ext4 holds in one file with 4 KiB blocks",
        },
    };

    /// The tighter of `self` and [`VmLimits::BANGER`], field by field.
    pub fn within_banger(self) -> VmLimits {
        let min = |a: Bound, b: Bound| if a.max <= b.max { a } else { b };
        VmLimits {
            vcpus: min(self.vcpus, Self::BANGER.vcpus),
            memory_mib: min(self.memory_mib, Self::BANGER.memory_mib),
            disk_bytes: min(self.disk_bytes, Self::BANGER.disk_bytes),
        }
    }
}

/// A resource outside its bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} must be between {min} and {max} (the most {set_by}), got {got}")]
pub struct LimitError {
    /// `"cpus"`, `"memory"`, `"disk size"`, `"work disk size"`.
    pub what: &'static str,
    pub min: String,
    pub max: String,
    pub set_by: &'static str,
    pub got: String,
}

/// Resources as requested: only what was given. Signed where JSON or a flag may carry a
/// negative number, so that it reaches this check instead of wrapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Requested {
    pub cpus: Option<i64>,
    pub memory_mib: Option<i64>,
    pub disk_bytes: Option<u64>,
    pub work_disk_bytes: Option<u64>,
}

/// Checks every given resource against `limits`: at least 1 vCPU, 1 MiB and 1 byte, at most
/// the limits' maxima.
pub fn check(req: &Requested, limits: &VmLimits) -> Result<(), LimitError> {
    if let Some(c) = req.cpus
        && !(1..=limits.vcpus.max as i64).contains(&c)
    {
        return Err(LimitError {
            what: "cpus",
            min: "1".into(),
            max: limits.vcpus.max.to_string(),
            set_by: limits.vcpus.set_by,
            got: c.to_string(),
        });
    }
    if let Some(m) = req.memory_mib
        && !(1..=limits.memory_mib.max as i64).contains(&m)
    {
        return Err(LimitError {
            what: "memory",
            min: ByteSize::mib(1).to_string(),
            max: ByteSize::mib(limits.memory_mib.max).to_string(),
            set_by: limits.memory_mib.set_by,
            got: if m > 0 {
                // Both as the user wrote it (MiB) and readable.
                format!("{m} MiB ({})", ByteSize((m as u64).saturating_mul(1 << 20)))
            } else {
                format!("{m} MiB")
            },
        });
    }
    for (what, v) in [
        ("disk size", req.disk_bytes),
        ("work disk size", req.work_disk_bytes),
    ] {
        if let Some(b) = v
            && !(1..=limits.disk_bytes.max).contains(&b)
        {
            return Err(LimitError {
                what,
                min: "1 byte".into(),
                max: ByteSize(limits.disk_bytes.max).to_string(),
                set_by: limits.disk_bytes.set_by,
                got: format!("{b} bytes ({})", ByteSize(b)),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(cpus: Option<i64>, mem: Option<i64>, disk: Option<u64>) -> Requested {
        Requested {
            cpus,
            memory_mib: mem,
            disk_bytes: disk,
            work_disk_bytes: None,
        }
    }

    #[test]
    fn bounds_are_inclusive() {
        let l = VmLimits::BANGER;
        assert!(check(&req(Some(1), Some(1), Some(1)), &l).is_ok());
        assert!(check(&req(Some(255), Some(1 << 20), Some(16 << 40)), &l).is_ok());
        assert!(check(&Requested::default(), &l).is_ok());
        for bad in [
            req(Some(0), None, None),
            req(Some(-1), None, None),
            req(Some(256), None, None),
            req(Some(i64::MAX), None, None),
            req(Some(i64::MIN), None, None),
            req(None, Some(0), None),
            req(None, Some(-512), None),
            req(None, Some((1 << 20) + 1), None),
            req(None, Some(i64::MAX), None),
            req(None, None, Some(0)),
            req(None, None, Some((16 << 40) + 1)),
            req(None, None, Some(u64::MAX)),
        ] {
            assert!(check(&bad, &l).is_err(), "{bad:?}");
        }
        let work = Requested {
            work_disk_bytes: Some(0),
            ..Default::default()
        };
        assert_eq!(check(&work, &l).unwrap_err().what, "work disk size");
    }

    #[test]
    fn messages_say_the_real_limit() {
        let fc = VmLimits {
            vcpus: Bound {
                max: 32,
                set_by: "Firecracker accepts",
            },
            ..VmLimits::BANGER
        };
        let e = check(&req(Some(33), None, None), &fc).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cpus must be between 1 and 32 (the most Firecracker accepts), got 33"
        );
        let e = check(&req(None, Some(2 << 20), None), &fc).unwrap_err();
        assert_eq!(
            e.to_string(),
            "memory must be between 1 MiB and 1 TiB (the most banger gives a VM), got 2097152 MiB (2 TiB)"
        );
        let e = check(&req(None, None, Some(u64::MAX)), &fc).unwrap_err();
        assert!(
            e.to_string().contains("and 16 TiB (the most ext4 holds"),
            "{e}"
        );
    }

    #[test]
    fn within_banger_takes_the_tighter_bound() {
        let loose = VmLimits {
            vcpus: Bound {
                max: 4096,
                set_by: "x",
            },
            memory_mib: Bound {
                max: 16,
                set_by: "tiny",
            },
            disk_bytes: VmLimits::BANGER.disk_bytes,
        };
        let l = loose.within_banger();
        assert_eq!(l.vcpus, VmLimits::BANGER.vcpus);
        assert_eq!(l.memory_mib.max, 16);
    }
}
