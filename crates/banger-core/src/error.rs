//! One way to show an error: every level of its cause chain, joined by `: `.
//!
//! banger's errors follow one rule (cloud-hypervisor's): a message says what failed and
//! with what (which path, which VM, which command), and never repeats its source, which the
//! chain adds. So the renderer joins the levels as they are; it does not try to spot a
//! message that already contains its cause. A `#[error(transparent)]` wrapper shows its
//! inner error and reports the inner error's source, so it adds no level of its own.
//!
//! The CLI's `banger: ...` line, `banger doctor`'s details, the daemon's API error bodies and
//! its log lines all render through [`chain`].

use std::error::Error;

/// The error and each of its causes, outermost first, joined by `: `.
pub fn chain(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Inner {
        #[error("cannot read /x")]
        Read(#[source] io::Error),
    }

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("VM web: disk preparation failed")]
        Disk(#[source] Inner),
        #[error(transparent)]
        Through(#[from] Inner),
    }

    fn denied() -> io::Error {
        io::Error::from(io::ErrorKind::PermissionDenied)
    }

    #[test]
    fn joins_every_level_once() {
        let err = Outer::Disk(Inner::Read(denied()));
        assert_eq!(
            chain(&err),
            "VM web: disk preparation failed: cannot read /x: permission denied"
        );
    }

    #[test]
    fn a_transparent_wrapper_adds_no_level() {
        let err = Outer::from(Inner::Read(denied()));
        assert_eq!(chain(&err), "cannot read /x: permission denied");
    }

    #[test]
    fn an_error_without_causes_is_its_message() {
        assert_eq!(chain(&denied()), "permission denied");
    }

    #[test]
    fn a_repeated_message_is_not_hidden() {
        // The renderer shows what the errors say: a message that repeats its source shows
        // the cause twice, which is why no message may.
        #[derive(Debug, thiserror::Error)]
        #[error("cannot open: {source}")]
        struct Repeats {
            source: io::Error,
        }
        let err = Repeats { source: denied() };
        assert_eq!(
            chain(&err),
            "cannot open: permission denied: permission denied"
        );
    }
}
