//! What a user's reference means: a VM (every VM route) or an image (create).

use banger_core::names::looks_like_id;
use banger_store::{ImageRow, VmRow};

use crate::error::OpError;
use crate::state::AppState;

/// Finds the VM a user reference means, in the order documented in [`banger_core::names`]:
/// a reference that looks like an id (12 or more hex digits) matches ids only, exactly or as
/// a unique prefix, so an id copied from `vm list` never reaches another VM; otherwise the
/// exact name, then a unique prefix of a name or an id. Several matches are an error.
pub fn resolve<'a>(rows: &'a [VmRow], reference: &str) -> Result<&'a VmRow, OpError> {
    let not_found = || OpError::VmNotFound {
        reference: reference.to_string(),
    };
    if reference.is_empty() {
        return Err(not_found());
    }
    if let Some(r) = rows.iter().find(|r| r.id == reference) {
        return Ok(r);
    }
    let matches: Vec<&VmRow> = if looks_like_id(reference) {
        rows.iter()
            .filter(|r| r.id.starts_with(reference))
            .collect()
    } else {
        if let Some(r) = rows.iter().find(|r| r.name == reference) {
            return Ok(r);
        }
        rows.iter()
            .filter(|r| r.id.starts_with(reference) || r.name.starts_with(reference))
            .collect()
    };
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(not_found()),
        many => Err(OpError::Ambiguous {
            reference: reference.to_string(),
            candidates: many.iter().map(|r| r.name.clone()).collect(),
        }),
    }
}

/// Finds the image a reference means: the exact id; a reference that looks like an id
/// matches ids only (exact or unique prefix); otherwise the exact name, then a unique id
/// prefix. Several matches are an error, never a guess.
pub(super) fn resolve_image<'a>(
    rows: &'a [ImageRow],
    reference: &str,
) -> Result<&'a ImageRow, OpError> {
    let not_found = || OpError::ImageNotFound {
        reference: reference.to_string(),
    };
    if reference.is_empty() {
        return Err(not_found());
    }
    if let Some(r) = rows.iter().find(|r| r.id == reference) {
        return Ok(r);
    }
    if !looks_like_id(reference)
        && let Some(r) = rows.iter().find(|r| r.name == reference)
    {
        return Ok(r);
    }
    let matches: Vec<&ImageRow> = rows
        .iter()
        .filter(|r| r.id.starts_with(reference))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(not_found()),
        many => Err(OpError::ImageAmbiguous {
            reference: reference.to_string(),
            candidates: many.iter().map(|r| r.name.clone()).collect(),
        }),
    }
}

impl AppState {
    pub fn find_vm(&self, reference: &str) -> Result<VmRow, OpError> {
        let rows = self.vm_rows()?;
        resolve(&rows, reference).cloned()
    }
}

#[cfg(test)]
mod tests {
    use banger_core::vm::VmState;

    use super::*;

    fn row(id: &str, name: &str) -> VmRow {
        crate::test_rows::vm_row(id, name, VmState::Stopped, None)
    }

    #[test]
    fn resolution_order() {
        let rows = vec![
            row("abc123", "web"),
            row("abd456", "web-2"),
            row("ff0000", "db"),
        ];
        assert_eq!(
            resolve(&rows, "web").unwrap().id,
            "abc123",
            "exact name wins over prefix"
        );
        assert_eq!(resolve(&rows, "abd").unwrap().name, "web-2");
        assert_eq!(resolve(&rows, "d").unwrap().name, "db");
        assert!(matches!(
            resolve(&rows, "ab"),
            Err(OpError::Ambiguous { .. })
        ));
        assert!(matches!(resolve(&rows, "web-"), Ok(r) if r.name == "web-2"));
        assert!(matches!(
            resolve(&rows, "zzz"),
            Err(OpError::VmNotFound { .. })
        ));
        assert!(matches!(
            resolve(&rows, ""),
            Err(OpError::VmNotFound { .. })
        ));
    }

    #[test]
    fn an_id_from_the_list_never_resolves_to_another_vm() {
        let a = "0123456789ab0000000000000000aaaa";
        // A name that starts with A's listed id (allowed: it has non-hex characters).
        let rows = vec![row(a, "first"), row("ffff0000", "0123456789ab-x")];
        assert_eq!(resolve(&rows, &a[..12]).unwrap().id, a);
        assert_eq!(resolve(&rows, a).unwrap().id, a);
        assert_eq!(
            resolve(&rows, "0123456789ab-x").unwrap().name,
            "0123456789ab-x"
        );
        // A short prefix still matches both: ambiguous, never a guess.
        assert!(matches!(
            resolve(&rows, "0123"),
            Err(OpError::Ambiguous { .. })
        ));
        // An id-like reference is never matched against names.
        let rows = vec![row("aaaa", "0123456789abcdef")];
        assert!(matches!(
            resolve(&rows, "0123456789abcdef"),
            Err(OpError::VmNotFound { .. })
        ));
    }

    #[test]
    fn image_resolution_order() {
        let img = |id: &str, name: &str| ImageRow {
            id: id.into(),
            name: name.into(),
            ..Default::default()
        };
        let rows = vec![
            img("0123456789ab0000", "base"),
            img("abcd", "0123"),
            img("0123ffff00000000", "other"),
        ];
        assert_eq!(resolve_image(&rows, "base").unwrap().id, "0123456789ab0000");
        // An exact name wins over an id prefix...
        assert_eq!(resolve_image(&rows, "0123").unwrap().id, "abcd");
        // ...but an id-like reference is an id only.
        assert_eq!(resolve_image(&rows, "0123456789ab").unwrap().name, "base");
        assert!(resolve_image(&rows, "0123f").is_ok());
        assert!(resolve_image(&rows, "").is_err());
        assert!(matches!(
            resolve_image(&[img("aa1", "x"), img("aa2", "y")], "aa"),
            Err(OpError::ImageAmbiguous { .. })
        ));
    }
}
