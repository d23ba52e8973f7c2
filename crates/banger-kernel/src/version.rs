//! Ordering kernel versions the way package managers do.
//!
//! [`compare_versions`] is Debian's `verrevcmp` (the comparison `dpkg --compare-versions` and
//! `sort -V` agree on for kernel versions): runs of digits compare as numbers, so
//! `6.1.0-28-cloud-amd64 < 6.1.0-40-cloud-amd64` and `6.10 > 6.9`; other characters compare
//! with letters before punctuation and `~` before everything, even the end (`6.1~rc1 < 6.1`).

use std::cmp::Ordering;

/// Compares two kernel versions; see the module docs. Versions that the algorithm finds
/// equal but that differ as strings (`6.01` and `6.1`) are ordered bytewise, so the order is
/// total and a choice among candidates never depends on the order they were listed in.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    verrevcmp(a.as_bytes(), b.as_bytes()).then_with(|| a.cmp(b))
}

/// The weight of a non-digit character: `~` sorts first, then the end of the string (and
/// digits, which end a non-digit run), then letters, then everything else.
fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

fn is_digit(c: Option<&u8>) -> bool {
    c.is_some_and(u8::is_ascii_digit)
}

fn verrevcmp(a: &[u8], b: &[u8]) -> Ordering {
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        // A run of non-digits, compared character by character.
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let (ac, bc) = (order(a.get(i).copied()), order(b.get(j).copied()));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        // A run of digits, compared as a number: skip leading zeros, then the longer run is
        // larger, and between runs of the same length the first differing digit decides.
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while is_digit(a.get(i)) && is_digit(b.get(j)) {
            if first_diff == Ordering::Equal {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if is_digit(a.get(i)) {
            return Ordering::Greater;
        }
        if is_digit(b.get(j)) {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_abi_numbers_compare_numerically() {
        assert_eq!(
            compare_versions("6.1.0-28-cloud-amd64", "6.1.0-40-cloud-amd64"),
            Ordering::Less
        );
        assert_eq!(
            compare_versions("6.1.0-40-cloud-amd64", "6.1.0-28-cloud-amd64"),
            Ordering::Greater
        );
        assert_eq!(
            compare_versions("6.1.0-9-amd64", "6.1.0-10-amd64"),
            Ordering::Less
        );
    }

    #[test]
    fn minor_versions_compare_numerically() {
        assert_eq!(compare_versions("6.10", "6.9"), Ordering::Greater);
        assert_eq!(compare_versions("6.9", "6.10"), Ordering::Less);
        assert_eq!(compare_versions("5.15.0", "5.4.0"), Ordering::Greater);
        assert_eq!(compare_versions("6.1.102", "6.1.99"), Ordering::Greater);
        assert_eq!(compare_versions("6.1", "6.1.0"), Ordering::Less);
    }

    #[test]
    fn equal_and_tie_break() {
        assert_eq!(compare_versions("6.1.0", "6.1.0"), Ordering::Equal);
        // Numerically equal but different strings: still a strict, stable order.
        assert_ne!(compare_versions("6.01", "6.1"), Ordering::Equal);
        assert_eq!(
            compare_versions("6.01", "6.1"),
            compare_versions("6.1", "6.01").reverse()
        );
    }

    #[test]
    fn tilde_and_letters() {
        assert_eq!(compare_versions("6.1~rc1", "6.1"), Ordering::Less);
        assert_eq!(compare_versions("6.1-rc1", "6.1"), Ordering::Greater);
        assert_eq!(compare_versions("6.1.0a", "6.1.0+"), Ordering::Less);
        assert_eq!(
            compare_versions("6.1.0-cloud", "6.1.0-amd64"),
            Ordering::Greater
        );
    }

    #[test]
    fn sorting_picks_the_highest() {
        let mut v = vec![
            "6.1.0-40-cloud-amd64",
            "6.10.0",
            "6.1.0-28-cloud-amd64",
            "6.9.12",
            "5.10.0-30-amd64",
        ];
        v.sort_by(|a, b| compare_versions(a, b));
        assert_eq!(
            v,
            [
                "5.10.0-30-amd64",
                "6.1.0-28-cloud-amd64",
                "6.1.0-40-cloud-amd64",
                "6.9.12",
                "6.10.0"
            ]
        );
    }
}
