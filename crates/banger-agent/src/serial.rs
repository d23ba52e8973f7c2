//! An async byte stream over a pollable character device.
//!
//! The guest's virtio-serial port (`/dev/virtio-ports/banger.agent`) is one bidirectional byte
//! stream. It is opened non-blocking and driven through the tokio reactor, so reading (waiting
//! for the host's next request) never blocks writing a response. A terminal device (a console
//! port or a pty in tests) is switched to raw mode so no byte is translated.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A failure opening or preparing a serial device.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("cannot open serial device {}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot switch {} to raw mode", path.display())]
    Raw { path: PathBuf, source: io::Error },
    #[error("cannot make {} non-blocking", path.display())]
    NonBlocking { path: PathBuf, source: io::Error },
    #[error("cannot poll {} (not a pollable device?)", path.display())]
    Register { path: PathBuf, source: io::Error },
}

/// A character device read and written asynchronously.
#[derive(Debug)]
pub struct SerialStream {
    fd: AsyncFd<File>,
}

impl SerialStream {
    /// Opens the device at `path` read-write, non-blocking, without making it a controlling
    /// terminal, and in raw mode if it is a terminal.
    pub fn open(path: &Path) -> Result<Self, SerialError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(|source| SerialError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Self::from_file(file, path)
    }

    /// Wraps an already open pollable file (a device, a pty, a pipe or socket end). It is made
    /// non-blocking and, if a terminal, raw. `path` names it in errors.
    pub fn from_file(file: File, path: &Path) -> Result<Self, SerialError> {
        make_raw(&file).map_err(|source| SerialError::Raw {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_pollable(file, path)
    }

    /// Wraps an already open pollable file as it is, terminal modes untouched (the master of
    /// an exec session's pty, whose line discipline the process expects). It is made
    /// non-blocking. `path` names it in errors.
    pub fn from_pollable(file: File, path: &Path) -> Result<Self, SerialError> {
        set_nonblocking(&file).map_err(|source| SerialError::NonBlocking {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: `file` owns its descriptor, which stays open and unchanged until the AsyncFd
        // drops `file`; `SerialStream` never hands out the file or replaces its descriptor.
        let fd = unsafe { AsyncFd::register(file) }.map_err(|e| SerialError::Register {
            path: path.to_path_buf(),
            source: io::Error::from(e),
        })?;
        Ok(Self { fd })
    }
}

/// Switches a terminal to raw mode (no echo, no line editing, no newline translation). Files
/// that are not terminals are left alone. On a pty master this sets the pair's (slave's) mode.
pub fn make_raw(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is an open descriptor owned by `file` for the duration of this call;
    // isatty only inspects it.
    if unsafe { libc::isatty(fd) } != 1 {
        return Ok(());
    }
    let mut termios = MaybeUninit::<libc::termios>::uninit();
    // SAFETY: `fd` is open and `termios` points to writable memory of the right size.
    if unsafe { libc::tcgetattr(fd, termios.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: tcgetattr returned 0, so it fully initialised `termios`.
    let mut termios = unsafe { termios.assume_init() };
    // SAFETY: `termios` is a valid, initialised termios structure.
    unsafe { libc::cfmakeraw(&mut termios) };
    // SAFETY: `fd` is open and `termios` is a valid termios structure read by the call.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &termios) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_nonblocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is an open descriptor owned by `file`; F_GETFL takes no argument.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_NONBLOCK != 0 {
        return Ok(());
    }
    // SAFETY: `fd` is open; F_SETFL takes an int flag set.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl AsyncRead for SerialStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|inner| inner.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for SerialStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|inner| inner.get_ref().write(buf)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A character device has no half-close; closing happens on drop.
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream as StdUnixStream;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn carries_bytes_both_ways() {
        // A socket end is pollable like a character device.
        let (a, b) = StdUnixStream::pair().unwrap();
        let mut a =
            SerialStream::from_file(File::from(std::os::fd::OwnedFd::from(a)), Path::new("a"))
                .unwrap();
        b.set_nonblocking(true).unwrap();
        let mut b = tokio::net::UnixStream::from_std(b).unwrap();

        a.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");

        b.write_all(b"pong").await.unwrap();
        a.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");

        drop(b);
        assert_eq!(a.read(&mut got).await.unwrap(), 0);
    }

    #[test]
    fn open_names_the_missing_device() {
        let err = SerialStream::open(Path::new("/nonexistent/banger.agent")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/banger.agent"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn regular_file_is_not_pollable() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let err = SerialStream::open(f.path()).unwrap_err();
        assert!(matches!(err, SerialError::Register { .. }), "{err}");
    }
}
