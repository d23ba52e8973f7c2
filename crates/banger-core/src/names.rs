//! Naming rules.
//!
//! A VM name reaches the guest hostname, `/etc/hosts`, DNS, the kernel command line and file
//! paths, so it is a DNS label: 1–63 characters of `[a-z0-9-]`, not starting or ending with `-`.
//! Names are never normalised: `Web` is refused, not lowered.
//!
//! Image and kernel names become directory names and command-line arguments: letters, digits,
//! `.`, `-`, `_`, at most 128 characters, never `.` or `..` or anything starting with a dot
//! (hidden files, traversal), and never starting with `-` (it would read as a flag).
//!
//! # Names never look like ids
//!
//! VMs and images have ids of 32 lowercase hex digits; `vm list` and `image list` show their
//! first 12. A VM or image name of [`ID_LIKE_MIN`] or more characters, all `0-9a-f`, is refused
//! ([`looks_like_id`]), so an id copied from a list can never resolve to another object.
//!
//! A reference given by the user (`banger vm show REF`) is resolved in this order:
//!
//! 1. a reference that [`looks_like_id`] is an id, never a name: the object whose id it is, or
//!    the only one whose id starts with it;
//! 2. otherwise the object with exactly that name;
//! 3. otherwise the only object whose name or id starts with it (VMs; images: id prefixes only).
//!
//! Several matches in step 1 or 3 are an error that lists them, never a guess.

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} name must not be empty")]
    Empty { what: &'static str },
    #[error("{what} name {name:?} is {len} characters long; the limit is {max}")]
    TooLong {
        what: &'static str,
        name: String,
        len: usize,
        max: usize,
    },
    #[error("{what} name {name:?} contains {ch:?}; allowed are {allowed}")]
    BadChar {
        what: &'static str,
        name: String,
        ch: char,
        allowed: &'static str,
    },
    #[error("{what} name {name:?} must not start or end with '{edge}'")]
    BadEdge {
        what: &'static str,
        name: String,
        edge: char,
    },
    #[error("{what} name {name:?} must not start with '{edge}'")]
    BadStart {
        what: &'static str,
        name: String,
        edge: char,
    },
    #[error(
        "{what} name {name:?} looks like an id ({ID_LIKE_MIN} or more hex digits), and ids are \
         looked up before names; use a name with a character outside 0-9a-f"
    )]
    LooksLikeId { what: &'static str, name: String },
}

/// The shortest all-hex string taken for an id: the length of the ids `vm list` shows.
pub const ID_LIKE_MIN: usize = 12;

/// Whether `s` reads as an id or an id prefix from a list: [`ID_LIKE_MIN`] or more characters,
/// all lowercase hex digits.
pub fn looks_like_id(s: &str) -> bool {
    s.len() >= ID_LIKE_MIN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `name` is a DNS name of hostname labels: dot-separated labels of 1 to 63 ASCII
/// letters, digits and `-` (not first or last), 253 characters in all (a hostname, a search
/// domain, a routing domain).
pub fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The longest VM name: one DNS label.
pub const VM_NAME_MAX: usize = 63;
/// The longest image or kernel name.
pub const ARTIFACT_NAME_MAX: usize = 128;

/// Checks a VM name against the rules above.
pub fn validate_vm_name(name: &str) -> Result<(), NameError> {
    const WHAT: &str = "VM";
    if name.is_empty() {
        return Err(NameError::Empty { what: WHAT });
    }
    let len = name.chars().count();
    if len > VM_NAME_MAX {
        return Err(NameError::TooLong {
            what: WHAT,
            name: name.to_string(),
            len,
            max: VM_NAME_MAX,
        });
    }
    if let Some(ch) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError::BadChar {
            what: WHAT,
            name: name.to_string(),
            ch,
            allowed: "lowercase letters a-z, digits and '-'",
        });
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(NameError::BadEdge {
            what: WHAT,
            name: name.to_string(),
            edge: '-',
        });
    }
    if looks_like_id(name) {
        return Err(NameError::LooksLikeId {
            what: WHAT,
            name: name.to_string(),
        });
    }
    Ok(())
}

/// Checks an image name (images are looked up by id too, so it must not look like one).
pub fn validate_image_name(name: &str) -> Result<(), NameError> {
    validate_artifact_name("image", name)?;
    if looks_like_id(name) {
        return Err(NameError::LooksLikeId {
            what: "image",
            name: name.to_string(),
        });
    }
    Ok(())
}

/// Checks a kernel name.
pub fn validate_kernel_name(name: &str) -> Result<(), NameError> {
    validate_artifact_name("kernel", name)
}

fn validate_artifact_name(what: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    let len = name.chars().count();
    if len > ARTIFACT_NAME_MAX {
        return Err(NameError::TooLong {
            what,
            name: name.to_string(),
            len,
            max: ARTIFACT_NAME_MAX,
        });
    }
    if let Some(ch) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(NameError::BadChar {
            what,
            name: name.to_string(),
            ch,
            allowed: "letters, digits, '.', '-' and '_'",
        });
    }
    // A leading dot would allow "." and ".." (path traversal) and hidden files; a leading
    // dash reads as a flag to every program the name is handed to.
    if let Some(edge @ ('.' | '-')) = name.chars().next() {
        return Err(NameError::BadStart {
            what,
            name: name.to_string(),
            edge,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_names() {
        let long63 = "x".repeat(63);
        let long64 = "x".repeat(64);
        let cases: &[(&str, bool)] = &[
            ("", false),
            ("a", true),
            ("web", true),
            ("web-1", true),
            ("my-dev-box-2", true),
            (&long63, true),
            (&long64, false),
            ("Web", false),
            ("WEB", false),
            ("wéb", false),
            ("ωmega", false),
            ("web box", false),
            ("web\tbox", false),
            ("web\n", false),
            ("web/box", false),
            ("../etc", false),
            ("web.box", false),
            ("web:1", false),
            ("a=b", false),
            ("\"web\"", false),
            ("'web'", false),
            ("-web", false),
            ("web-", false),
            ("-", false),
            ("123", true),
            ("0", true),
            ("web_box", false),
            ("a--b", true),
            // 12 or more hex digits read as an id.
            ("0123456789ab", false),
            ("deadbeefcafe", false),
            ("0123456789abcdef0123456789abcdef", false),
            ("0123456789a", true),
            ("0123456789ag", true),
            ("0123456789ab-x", true),
            ("000000000000", false),
            ("1234567890123", false),
        ];
        for (name, ok) in cases {
            assert_eq!(
                validate_vm_name(name).is_ok(),
                *ok,
                "name {name:?}: {:?}",
                validate_vm_name(name)
            );
        }
    }

    #[test]
    fn vm_name_errors_say_why() {
        let e = validate_vm_name("Web").unwrap_err().to_string();
        assert!(e.contains("'W'"), "{e}");
        let e = validate_vm_name(&"x".repeat(64)).unwrap_err().to_string();
        assert!(e.contains("64 characters"), "{e}");
        let e = validate_vm_name("-a").unwrap_err().to_string();
        assert!(e.contains("start or end"), "{e}");
        let e = validate_vm_name("0123456789ab").unwrap_err().to_string();
        assert!(e.contains("looks like an id"), "{e}");
    }

    #[test]
    fn ids_are_recognised() {
        assert!(looks_like_id("0123456789ab"));
        assert!(looks_like_id(&"f".repeat(32)));
        assert!(!looks_like_id("0123456789a"));
        assert!(!looks_like_id("0123456789AB"), "ids are lowercase");
        assert!(!looks_like_id("0123456789ab-"));
        assert!(!looks_like_id(""));
    }

    #[test]
    fn artifact_names() {
        let cases: &[(&str, bool)] = &[
            ("debian-bookworm", true),
            ("Debian_12.5", true),
            ("6.1.0-28-cloud-amd64", true),
            ("", false),
            (".", false),
            ("..", false),
            (".hidden", false),
            ("a/b", false),
            ("../x", false),
            ("a b", false),
            ("a:b", false),
            ("ünicode", false),
            ("-rf", false),
            ("--help", false),
            ("-", false),
            ("a-", true),
        ];
        for (name, ok) in cases {
            assert_eq!(validate_image_name(name).is_ok(), *ok, "image {name:?}");
            assert_eq!(validate_kernel_name(name).is_ok(), *ok, "kernel {name:?}");
        }
        assert!(validate_image_name(&"a".repeat(129)).is_err());
        // Images are looked up by id too; kernels only by name.
        assert!(validate_image_name("0123456789abcdef").is_err());
        assert!(validate_kernel_name("0123456789abcdef").is_ok());
        let e = validate_kernel_name("-x").unwrap_err().to_string();
        assert_eq!(e, "kernel name \"-x\" must not start with '-'");
    }
}
