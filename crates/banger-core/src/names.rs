//! Naming rules.
//!
//! A VM name reaches the guest hostname, `/etc/hosts`, DNS, the kernel command line and file
//! paths, so it is a DNS label: 1–63 characters of `[a-z0-9-]`, not starting or ending with `-`.
//! Names are never normalised: `Web` is refused, not lowered.
//!
//! Image and kernel names become directory names: letters, digits, `.`, `-`, `_`, at most 128
//! characters, and never `.` or `..` or anything starting with a dot.

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
    Ok(())
}

/// Checks an image name.
pub fn validate_image_name(name: &str) -> Result<(), NameError> {
    validate_artifact_name("image", name)
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
    // A leading dot would allow "." and ".." (path traversal) and hidden files.
    if name.starts_with('.') {
        return Err(NameError::BadEdge {
            what,
            name: name.to_string(),
            edge: '.',
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_names() {
        let long63 = "a".repeat(63);
        let long64 = "a".repeat(64);
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
        ];
        for (name, ok) in cases {
            assert_eq!(validate_image_name(name).is_ok(), *ok, "image {name:?}");
            assert_eq!(validate_kernel_name(name).is_ok(), *ok, "kernel {name:?}");
        }
        assert!(validate_image_name(&"a".repeat(129)).is_err());
    }
}
