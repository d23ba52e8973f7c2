//! The build identity shared by `banger`, `bangerd` and `banger-agent`.
//!
//! All three binaries link this crate, so they carry the same version, commit and build time;
//! the CLI replaces a running daemon whose identity differs from its own.

use serde::{Deserialize, Serialize};

/// Version, commit and build time of one build of banger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BuildInfo {
    pub version: String,
    pub commit: String,
    /// Seconds since the Unix epoch at which the build was stamped.
    pub build_epoch: u64,
}

impl BuildInfo {
    /// The identity of the running binary.
    pub fn current() -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION").to_string(),
            commit: env!("BANGER_BUILD_COMMIT").to_string(),
            build_epoch: env!("BANGER_BUILD_EPOCH").parse().unwrap_or(0),
        }
    }

    /// Build time as an RFC 3339 UTC timestamp.
    pub fn build_time(&self) -> String {
        format_rfc3339(self.build_epoch)
    }
}

impl std::fmt::Display for BuildInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (commit {}, built {})",
            self.version,
            self.commit,
            self.build_time()
        )
    }
}

/// Formats seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_rfc3339(epoch: u64) -> String {
    let days = epoch / 86_400;
    let rem = epoch % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_points() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_rfc3339(1_795_371_045), "2026-11-22T18:10:45Z");
    }

    #[test]
    fn current_build_is_stamped() {
        let b = BuildInfo::current();
        assert!(!b.version.is_empty());
        assert!(!b.commit.is_empty());
    }
}
