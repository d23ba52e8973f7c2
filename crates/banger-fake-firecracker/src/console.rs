//! The guest's serial console.
//!
//! Firecracker connects the guest's serial port to its own stdout (or to the
//! file `PUT /serial` names), so whoever starts it reads the kernel's boot
//! messages there. The fake has no guest; it writes a few plausible lines in
//! the kernel's format instead: at boot (what was configured), at restore from
//! a snapshot, when the host-side agent cannot be started, and at the orderly
//! shutdown that follows `SendCtrlAltDel`.
//!
//! The line texts are pure functions; [`Console`] is the sink, handed its
//! writer by the binary (the library never picks stdout itself).

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// What the guest boots with, as far as its console shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootSummary {
    /// The kernel image path.
    pub kernel: String,
    /// The full kernel command line.
    pub cmdline: String,
    /// vCPU count.
    pub vcpus: u64,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// Block device ids, root first.
    pub drives: Vec<String>,
    /// Network interface ids.
    pub nets: Vec<String>,
    /// The vsock CID and host-side Unix socket, if a vsock device exists.
    pub vsock: Option<(u64, String)>,
}

/// Formats a kernel-log timestamp like `[    1.234567] `.
pub fn stamp(seconds: f64) -> String {
    format!("[{seconds:12.6}] ")
}

/// Lines the guest prints while booting.
pub fn boot_lines(boot: &BootSummary) -> Vec<String> {
    let mut lines = vec![
        format!(
            "{}Linux version 6.1.0 (banger-fake-firecracker) #1 SMP PREEMPT_DYNAMIC (kernel {})",
            stamp(0.0),
            boot.kernel
        ),
        format!("{}Command line: {}", stamp(0.0), boot.cmdline),
        format!(
            "{}smpboot: Allowing {} CPUs, 0 hotplug CPUs; Memory: {}MiB",
            stamp(0.001),
            boot.vcpus,
            boot.mem_mib
        ),
    ];
    for (i, drive) in boot.drives.iter().enumerate() {
        let letter = char::from(b'a' + u8::try_from(i % 26).unwrap_or(0));
        lines.push(format!(
            "{}virtio_blk virtio{i}: [vd{letter}] drive {drive}",
            stamp(0.002)
        ));
    }
    for (i, net) in boot.nets.iter().enumerate() {
        lines.push(format!(
            "{}virtio_net: eth{i}: interface {net}",
            stamp(0.003)
        ));
    }
    if let Some((cid, uds)) = &boot.vsock {
        lines.push(format!(
            "{}NET: Registered PF_VSOCK protocol family (cid {cid}, host {uds})",
            stamp(0.004)
        ));
    }
    lines.push(format!("{}Run /sbin/init as init process", stamp(0.010)));
    lines.push("banger-fake-firecracker: guest running".to_owned());
    lines
}

/// Lines the guest prints when it resumes from a snapshot.
pub fn restore_lines(snapshot: &str, running: bool) -> Vec<String> {
    let mut lines = vec![format!(
        "banger-fake-firecracker: guest restored from snapshot {snapshot}"
    )];
    if running {
        lines.push("banger-fake-firecracker: guest running".to_owned());
    }
    lines
}

/// The line printed when the host-mode agent cannot be started.
pub fn agent_missing_line(reason: &str) -> String {
    format!("banger-fake-firecracker: could not start banger-agent: {reason}")
}

/// Lines the guest prints on its orderly shutdown after Ctrl-Alt-Del.
pub fn shutdown_lines(uptime_seconds: f64) -> Vec<String> {
    vec![
        format!(
            "{}banger-fake-firecracker: Ctrl-Alt-Del received, shutting down",
            stamp(uptime_seconds)
        ),
        format!("{}reboot: Restarting system", stamp(uptime_seconds + 0.01)),
    ]
}

/// Where the console goes, shared by the API handlers and background tasks.
#[derive(Clone)]
pub struct Console {
    inner: Arc<Mutex<Sink>>,
}

struct Sink {
    writer: Box<dyn Write + Send>,
    redirected: Option<PathBuf>,
    booted: Option<Instant>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sink = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("Console")
            .field("redirected", &sink.redirected)
            .finish()
    }
}

impl Console {
    /// A console writing to `writer` (the process stdout, for the binary).
    pub fn new(writer: Box<dyn Write + Send>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Sink {
                writer,
                redirected: None,
                booted: None,
            })),
        }
    }

    /// Sends further output to `path` (created if missing, appended to), as
    /// Firecracker does with `serial_out_path`.
    pub fn redirect(&self, path: &Path) -> io::Result<()> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let mut sink = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        sink.writer = Box::new(file);
        sink.redirected = Some(path.to_owned());
        Ok(())
    }

    /// Marks the guest's boot instant (shutdown timestamps count from it).
    pub fn mark_boot(&self) {
        let mut sink = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        sink.booted.get_or_insert_with(Instant::now);
    }

    /// Seconds since [`Console::mark_boot`], 0 if never marked.
    pub fn uptime(&self) -> f64 {
        let sink = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        sink.booted
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(0.0)
    }

    /// Writes `lines`, each followed by `\r\n` as a serial console does, and flushes.
    pub fn write_lines(&self, lines: &[String]) -> io::Result<()> {
        let mut sink = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for line in lines {
            sink.writer.write_all(line.as_bytes())?;
            sink.writer.write_all(b"\r\n")?;
        }
        sink.writer.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn boot_lines_describe_the_configuration() {
        let lines = boot_lines(&BootSummary {
            kernel: "/k/vmlinux".into(),
            cmdline: "console=ttyS0 root=/dev/vda rw".into(),
            vcpus: 2,
            mem_mib: 1024,
            drives: vec!["root".into(), "work".into()],
            nets: vec!["eth0".into()],
            vsock: Some((3, "/run/v.sock".into())),
        });
        assert!(
            lines[0].starts_with("[    0.000000] Linux version"),
            "{}",
            lines[0]
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("Command line: console=ttyS0 root=/dev/vda rw"))
        );
        assert!(lines.iter().any(|l| l.contains("[vdb] drive work")));
        assert!(lines.iter().any(|l| l.contains("cid 3")));
        assert_eq!(
            lines.last().map(String::as_str),
            Some("banger-fake-firecracker: guest running")
        );
    }

    #[test]
    fn stamps_look_like_the_kernel_log() {
        assert_eq!(stamp(1.5), "[    1.500000] ");
    }

    #[test]
    fn console_writes_crlf_lines_and_redirects() {
        let buf = Shared::default();
        let console = Console::new(Box::new(buf.clone()));
        console
            .write_lines(&["a".into(), "b".into()])
            .expect("write");
        assert_eq!(&*buf.0.lock().expect("lock"), b"a\r\nb\r\n");

        let dir = tempfile::tempdir().expect("tempdir");
        let serial = dir.path().join("serial.out");
        console.redirect(&serial).expect("redirect");
        console.write_lines(&shutdown_lines(2.0)).expect("write");
        let text = std::fs::read_to_string(&serial).expect("serial file");
        assert!(text.contains("reboot: Restarting system"), "{text}");
        assert_eq!(
            buf.0.lock().expect("lock").len(),
            6,
            "nothing more on the old sink"
        );
    }

    #[test]
    fn uptime_counts_from_boot() {
        let console = Console::new(Box::new(io::sink()));
        assert!(console.uptime() < f64::EPSILON);
        console.mark_boot();
        assert!(console.uptime() >= 0.0);
    }
}
