//! Unpacking an x86 bzImage into the uncompressed ELF `vmlinux` Firecracker boots.
//!
//! A bzImage is a real-mode setup part (`setup_sects` 512-byte sectors after the boot
//! sector) followed by the protected-mode part, which carries the compressed kernel. The
//! setup header (boot protocol ≥ 2.08) says where: `payload_offset` (0x248) and
//! `payload_length` (0x24c), relative to the start of the protected-mode part. The payload
//! is the compressed `vmlinux.bin` (an ELF, possibly followed by relocation data, which ELF
//! loaders ignore), and its last four bytes are the uncompressed length, little-endian.
//!
//! [`extract_vmlinux`] takes that route first. When it fails (no `HdrS` magic, an old
//! protocol, a corrupt header), it falls back to what the kernel's own
//! `scripts/extract-vmlinux` does: scan the whole file for each compression magic and try to
//! decompress from every hit until one yields an ELF. Formats: gzip, xz, lzma, bzip2, lz4
//! (the kernel's "legacy" lz4 framing, which Debian 12 kernels use) and zstd; lzo payloads
//! are recognised and reported as unsupported.
//!
//! Output is written to a temporary file beside `out` and renamed into place, so `out` is
//! either absent or complete.

use std::fmt;
use std::fs;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::KernelError;

/// The first bytes of every ELF file.
pub(crate) const ELF_MAGIC: &[u8] = b"\x7fELF";

/// How a kernel payload is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Xz,
    Lzma,
    Bzip2,
    Lz4,
    Zstd,
    Lzo,
}

impl Compression {
    /// Every format, in the order `scripts/extract-vmlinux` tries them.
    pub const ALL: [Compression; 7] = [
        Compression::Gzip,
        Compression::Xz,
        Compression::Bzip2,
        Compression::Lzma,
        Compression::Lzo,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// The bytes a stream of this format starts with.
    pub fn magic(self) -> &'static [u8] {
        match self {
            Compression::Gzip => b"\x1f\x8b\x08",
            Compression::Xz => b"\xfd7zXZ\x00",
            Compression::Bzip2 => b"BZh",
            Compression::Lzma => b"\x5d\x00\x00",
            Compression::Lzo => b"\x89LZO",
            Compression::Lz4 => b"\x02\x21\x4c\x18",
            Compression::Zstd => b"\x28\xb5\x2f\xfd",
        }
    }

    /// The lowercase name (`lz4`), as the kernel's `CONFIG_KERNEL_*` options spell it.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Lzma => "lzma",
            Compression::Bzip2 => "bzip2",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
            Compression::Lzo => "lzo",
        }
    }

    /// The format whose magic `data` starts with.
    pub fn detect(data: &[u8]) -> Option<Compression> {
        Compression::ALL
            .into_iter()
            .find(|c| data.starts_with(c.magic()))
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the ELF was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The input was already an ELF and was copied.
    AlreadyElf,
    /// The payload located by the bzImage setup header.
    SetupHeader,
    /// A compression magic found by scanning the file.
    Scan,
}

/// What [`extract_vmlinux`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extraction {
    /// How the ELF was obtained.
    pub route: Route,
    /// The payload's compression (`None` when the input was already an ELF).
    pub compression: Option<Compression>,
    /// Where the compressed payload starts in the input file.
    pub payload_offset: Option<u64>,
    /// The size of the written `vmlinux`.
    pub size: u64,
}

/// The fields of the x86 boot protocol's setup header that locate the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupHeader {
    /// Number of 512-byte setup sectors (0 means 4).
    pub setup_sects: u8,
    /// Boot protocol version (`0x020f` is 2.15).
    pub protocol: u16,
    /// The payload's offset in the file (already adjusted for the setup part).
    pub payload_offset: u64,
    /// The payload's length in bytes.
    pub payload_length: u64,
    /// The kernel version from the header's version string, when present.
    pub version: Option<String>,
}

const OFF_SETUP_SECTS: usize = 0x1f1;
const OFF_BOOT_FLAG: usize = 0x1fe;
const OFF_HEADER_MAGIC: usize = 0x202;
const OFF_PROTOCOL: usize = 0x206;
const OFF_KERNEL_VERSION: usize = 0x20e;
const OFF_PAYLOAD_OFFSET: usize = 0x248;
const OFF_PAYLOAD_LENGTH: usize = 0x24c;
const HEADER_END: usize = 0x250;

fn le16(data: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([data[at], data[at + 1]])
}

fn le32(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

impl SetupHeader {
    /// Parses the header at the start of a bzImage (`data` may be just the first few KiB;
    /// the payload bounds are checked against the whole file by the caller). The error is a
    /// reason for humans.
    pub fn parse(data: &[u8]) -> Result<SetupHeader, String> {
        if data.len() < HEADER_END {
            return Err(format!(
                "file is {} bytes, too short for a setup header",
                data.len()
            ));
        }
        if &data[OFF_HEADER_MAGIC..OFF_HEADER_MAGIC + 4] != b"HdrS" {
            return Err(format!(
                "no \"HdrS\" magic at 0x202 (found {})",
                hex(&data[OFF_HEADER_MAGIC..OFF_HEADER_MAGIC + 4])
            ));
        }
        if le16(data, OFF_BOOT_FLAG) != 0xaa55 {
            return Err(format!(
                "boot flag at 0x1fe is {:#06x}, not 0xaa55",
                le16(data, OFF_BOOT_FLAG)
            ));
        }
        let protocol = le16(data, OFF_PROTOCOL);
        if protocol < 0x0208 {
            return Err(format!(
                "boot protocol {}.{:02} predates payload_offset (2.08)",
                protocol >> 8,
                protocol & 0xff
            ));
        }
        let setup_sects = data[OFF_SETUP_SECTS];
        let sects = if setup_sects == 0 { 4 } else { setup_sects };
        let pm_start = (u64::from(sects) + 1) * 512;
        let payload_offset = pm_start + u64::from(le32(data, OFF_PAYLOAD_OFFSET));
        let payload_length = u64::from(le32(data, OFF_PAYLOAD_LENGTH));
        if payload_length < 4 {
            return Err(format!("payload_length is {payload_length}"));
        }
        let version = match le16(data, OFF_KERNEL_VERSION) {
            0 => None,
            ptr => {
                let at = usize::from(ptr) + 0x200;
                data.get(at..).and_then(|rest| {
                    let end = rest.iter().position(|&b| b == 0 || b == b' ')?;
                    let v = std::str::from_utf8(&rest[..end]).ok()?;
                    (!v.is_empty()).then(|| v.to_string())
                })
            }
        };
        Ok(SetupHeader {
            setup_sects,
            protocol,
            payload_offset,
            payload_length,
            version,
        })
    }
}

/// At most this many hits of one magic are tried by the scan (the lzma magic `5d 00 00` is
/// short and common; each failed try costs little, but not nothing).
const MAX_SCAN_TRIES_PER_FORMAT: usize = 64;

/// Writes the uncompressed ELF kernel inside `bzimage` (or `bzimage` itself when it already
/// is an ELF) to `out`; see the module docs.
pub fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<Extraction, KernelError> {
    let data = fs::read(bzimage).map_err(|source| KernelError::Read {
        path: bzimage.to_path_buf(),
        source,
    })?;
    let staged = StagedFile::new(out);

    if data.starts_with(ELF_MAGIC) {
        fs::write(staged.path(), &data).map_err(|source| KernelError::Write {
            path: staged.path().to_path_buf(),
            source,
        })?;
        staged.publish()?;
        return Ok(Extraction {
            route: Route::AlreadyElf,
            compression: None,
            payload_offset: None,
            size: data.len() as u64,
        });
    }

    let mut attempts = Vec::new();
    match SetupHeader::parse(&data) {
        Ok(header) => match header_payload(&data, &header) {
            Ok((offset, payload)) => match Compression::detect(payload) {
                Some(format) => match decode_to(format, payload, staged.path(), true) {
                    Ok(size) => {
                        staged.publish()?;
                        return Ok(Extraction {
                            route: Route::SetupHeader,
                            compression: Some(format),
                            payload_offset: Some(offset as u64),
                            size,
                        });
                    }
                    Err(why) => attempts.push(format!(
                        "setup header: {format} payload at {offset:#x}: {why}"
                    )),
                },
                None => attempts.push(format!(
                    "setup header: payload at {offset:#x} starts with {}, no known compression",
                    hex(&payload[..payload.len().min(6)])
                )),
            },
            Err(why) => attempts.push(format!("setup header: {why}")),
        },
        Err(why) => attempts.push(format!("setup header: {why}")),
    }

    // The fallback: every magic, everywhere.
    let mut hits = 0;
    for format in Compression::ALL {
        let magic = format.magic();
        let mut from = 0;
        let mut tries = 0;
        while tries < MAX_SCAN_TRIES_PER_FORMAT {
            let Some(pos) = find_bytes(&data[from..], magic) else {
                break;
            };
            let offset = from + pos;
            from = offset + 1;
            tries += 1;
            hits += 1;
            match decode_to(format, &data[offset..], staged.path(), false) {
                Ok(size) => {
                    staged.publish()?;
                    tracing::debug!(path = %bzimage.display(), %format, offset, "vmlinux found by scanning");
                    return Ok(Extraction {
                        route: Route::Scan,
                        compression: Some(format),
                        payload_offset: Some(offset as u64),
                        size,
                    });
                }
                Err(why) => {
                    // Only the first failure per format is worth reporting.
                    if tries == 1 {
                        attempts.push(format!("scan: {format} at {offset:#x}: {why}"));
                    }
                }
            }
        }
    }
    if hits == 0 {
        attempts.push("scan: no compression magic anywhere in the file".to_string());
    }
    Err(KernelError::Extract {
        path: bzimage.to_path_buf(),
        attempts,
    })
}

/// The payload slice named by the header, bounds-checked against the file.
fn header_payload<'a>(data: &'a [u8], header: &SetupHeader) -> Result<(usize, &'a [u8]), String> {
    let start = usize::try_from(header.payload_offset).map_err(|_| "payload offset overflows")?;
    let len = usize::try_from(header.payload_length).map_err(|_| "payload length overflows")?;
    let end = start
        .checked_add(len)
        .filter(|&end| end <= data.len())
        .ok_or_else(|| {
            format!(
                "payload {start:#x}+{len:#x} runs past the end of the file ({:#x} bytes)",
                data.len()
            )
        })?;
    Ok((start, &data[start..end]))
}

/// Decompresses `input` as `format` into `tmp`, checking that the output is an ELF. With
/// `exact`, `input` is the whole payload and its last four bytes must equal the output
/// length (modulo 2³²), which catches truncated streams. Errors are reasons for humans.
fn decode_to(format: Compression, input: &[u8], tmp: &Path, exact: bool) -> Result<u64, String> {
    let result = decode_inner(format, input, tmp, exact);
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}

fn decode_inner(format: Compression, input: &[u8], tmp: &Path, exact: bool) -> Result<u64, String> {
    let mut reader = decoder(format, input)?;
    let mut head = [0u8; 64];
    reader
        .read_exact(&mut head)
        .map_err(|e| format!("decompression failed: {e}"))?;
    if !head.starts_with(ELF_MAGIC) {
        return Err(format!(
            "decompressed data is not an ELF (starts with {})",
            hex(&head[..8])
        ));
    }
    let file =
        fs::File::create(tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let mut writer = io::BufWriter::with_capacity(1 << 20, file);
    writer
        .write_all(&head)
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    let copied = copy_distinguishing(&mut reader, &mut writer).map_err(|e| e.describe(tmp))?;
    writer
        .flush()
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    let size = head.len() as u64 + copied;
    if exact {
        let trailer = le32(input, input.len() - 4);
        if u64::from(trailer) != size & 0xffff_ffff {
            return Err(format!(
                "decompressed {size} bytes but the payload says {trailer}"
            ));
        }
    }
    Ok(size)
}

enum CopyError {
    Decode(io::Error),
    Write(io::Error),
}

impl CopyError {
    fn describe(self, tmp: &Path) -> String {
        match self {
            CopyError::Decode(e) => format!("decompression failed: {e}"),
            CopyError::Write(e) => format!("cannot write {}: {e}", tmp.display()),
        }
    }
}

/// `io::copy`, but telling a failing decoder from a failing disk.
fn copy_distinguishing(reader: &mut dyn Read, writer: &mut dyn Write) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Decode(e)),
        };
        writer.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
}

/// A streaming decoder for `format` over `input`. Each reads exactly one stream and stops at
/// its end, so bytes after it (the kernel's size trailer, the rest of the bzImage) are left
/// alone.
fn decoder<'a>(format: Compression, input: &'a [u8]) -> Result<Box<dyn Read + 'a>, String> {
    Ok(match format {
        Compression::Gzip => Box::new(flate2::bufread::GzDecoder::new(input)),
        Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new(input)),
        Compression::Lzma => {
            let stream = liblzma::stream::Stream::new_lzma_decoder(u64::MAX)
                .map_err(|e| format!("cannot start an lzma decoder: {e}"))?;
            Box::new(liblzma::bufread::XzDecoder::new_stream(input, stream))
        }
        Compression::Bzip2 => Box::new(bzip2::bufread::BzDecoder::new(input)),
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(input)
                .map_err(|e| format!("cannot start a zstd decoder: {e}"))?
                .single_frame();
            Box::new(BufReader::new(decoder))
        }
        Compression::Lz4 => Box::new(Lz4Legacy::new(input)),
        Compression::Lzo => {
            return Err("lzo-compressed kernels are not supported; \
                        decompress with `lzop -d` first"
                .to_string());
        }
    })
}

/// The magic number that opens the legacy lz4 format (`lz4 -l`), which the kernel uses.
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// Every chunk but the last decompresses to exactly 8 MiB.
const LZ4_LEGACY_CHUNK: usize = 8 << 20;

/// The largest a compressed chunk of `n` bytes can be (lz4's `LZ4_COMPRESSBOUND`).
const fn lz4_compress_bound(n: usize) -> usize {
    n + n / 255 + 16
}

/// A reader for the legacy lz4 format: the magic, then chunks of a little-endian u32
/// compressed size followed by one lz4 block (a repeated magic starts a new concatenated
/// stream). The stream ends when fewer than 4 bytes remain or the next "size" cannot be a
/// chunk (larger than a chunk can compress to, or than what is left): that is how the
/// kernel's trailing 4-byte length, or the rest of the file, is told apart.
#[derive(Debug)]
struct Lz4Legacy<'a> {
    input: &'a [u8],
    pos: usize,
    chunk: Vec<u8>,
    chunk_pos: usize,
    started: bool,
    done: bool,
}

impl<'a> Lz4Legacy<'a> {
    fn new(input: &'a [u8]) -> Self {
        Self {
            input,
            pos: 0,
            chunk: Vec::new(),
            chunk_pos: 0,
            started: false,
            done: false,
        }
    }

    fn next_chunk(&mut self) -> io::Result<()> {
        loop {
            let rest = &self.input[self.pos..];
            if rest.len() < 4 {
                if !self.started {
                    return Err(invalid("no lz4 legacy magic"));
                }
                self.done = true;
                return Ok(());
            }
            let word = le32(rest, 0);
            if word == LZ4_LEGACY_MAGIC {
                self.pos += 4;
                self.started = true;
                continue;
            }
            if !self.started {
                return Err(invalid("no lz4 legacy magic"));
            }
            let size = word as usize;
            if size == 0 || size > lz4_compress_bound(LZ4_LEGACY_CHUNK) || size > rest.len() - 4 {
                self.done = true;
                return Ok(());
            }
            let block = &rest[4..4 + size];
            self.chunk.resize(LZ4_LEGACY_CHUNK, 0);
            let n = lz4_flex::block::decompress_into(block, &mut self.chunk).map_err(|e| {
                invalid(&format!("lz4 chunk at {:#x} ({size} bytes): {e}", self.pos))
            })?;
            self.chunk.truncate(n);
            self.chunk_pos = 0;
            self.pos += 4 + size;
            return Ok(());
        }
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

impl Read for Lz4Legacy<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk_pos == self.chunk.len() {
            if self.done {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = buf.len().min(self.chunk.len() - self.chunk_pos);
        buf[..n].copy_from_slice(&self.chunk[self.chunk_pos..self.chunk_pos + n]);
        self.chunk_pos += n;
        Ok(n)
    }
}

/// A temporary file beside the destination (`.<name>.partial`), removed on drop unless it
/// was renamed into place.
#[derive(Debug)]
struct StagedFile {
    tmp: PathBuf,
    dest: PathBuf,
    published: bool,
}

impl StagedFile {
    fn new(dest: &Path) -> Self {
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "vmlinux".to_string());
        let tmp = dest.with_file_name(format!(".{name}.partial"));
        Self {
            tmp,
            dest: dest.to_path_buf(),
            published: false,
        }
    }

    fn path(&self) -> &Path {
        &self.tmp
    }

    fn publish(mut self) -> Result<(), KernelError> {
        fs::rename(&self.tmp, &self.dest).map_err(|source| KernelError::Rename {
            from: self.tmp.clone(),
            to: self.dest.clone(),
            source,
        })?;
        self.published = true;
        Ok(())
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Where `needle` first occurs in `haystack` (`None` for an empty needle). Also used to
/// scan an uncompressed kernel for its version banner.
pub(crate) fn find_bytes(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= haystack.len() {
        let pos = haystack[i..=haystack.len() - needle.len()]
            .iter()
            .position(|&b| b == first)?;
        let at = i + pos;
        if &haystack[at..at + needle.len()] == needle {
            return Some(at);
        }
        i = at + 1;
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tiny fake ELF: the magic, a 64-bit little-endian ident, then filler that
    /// compresses well but is not trivially uniform.
    pub(crate) fn fake_elf(len: usize) -> Vec<u8> {
        let mut elf = b"\x7fELF\x02\x01\x01\x00".to_vec();
        let mut x: u32 = 12345;
        while elf.len() < len {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            elf.push(b"abcdefgh"[(x >> 16) as usize % 8]);
        }
        elf
    }

    pub(crate) fn compress(format: Compression, data: &[u8]) -> Vec<u8> {
        let mut out = match format {
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                e.write_all(data).unwrap();
                // gzip's own trailer ends in the length: the kernel appends nothing.
                return e.finish().unwrap();
            }
            Compression::Xz => {
                let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Lzma => {
                let opts = liblzma::stream::LzmaOptions::new_preset(6).unwrap();
                let stream = liblzma::stream::Stream::new_lzma_encoder(&opts).unwrap();
                let mut e = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Bzip2 => {
                let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(data, 19).unwrap(),
            Compression::Lz4 => {
                let mut out = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
                for chunk in data.chunks(LZ4_LEGACY_CHUNK) {
                    let block = lz4_flex::block::compress(chunk);
                    out.extend_from_slice(&(block.len() as u32).to_le_bytes());
                    out.extend_from_slice(&block);
                }
                out
            }
            Compression::Lzo => unreachable!("no lzo encoder in tests"),
        };
        // The kernel's `size_append`.
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }

    /// A synthetic bzImage: boot sector + `setup_sects` sectors of setup with a 2.15 header
    /// whose payload fields point at `payload` inside the protected-mode part, which also
    /// holds some decompressor-like bytes before and after it.
    pub(crate) fn fake_bzimage(payload: &[u8], version: &str) -> Vec<u8> {
        let setup_sects: u8 = 7;
        let pm_start = (usize::from(setup_sects) + 1) * 512;
        let mut image = vec![0u8; pm_start];
        image[OFF_SETUP_SECTS] = setup_sects;
        image[OFF_BOOT_FLAG..OFF_BOOT_FLAG + 2].copy_from_slice(&0xaa55u16.to_le_bytes());
        image[OFF_HEADER_MAGIC..OFF_HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
        image[OFF_PROTOCOL..OFF_PROTOCOL + 2].copy_from_slice(&0x020fu16.to_le_bytes());
        let version_at = 0x400;
        let banner = format!("{version} (builder@host) #1 SMP\0");
        image[version_at..version_at + banner.len()].copy_from_slice(banner.as_bytes());
        image[OFF_KERNEL_VERSION..OFF_KERNEL_VERSION + 2]
            .copy_from_slice(&((version_at - 0x200) as u16).to_le_bytes());
        let prefix = vec![0x90u8; 0x300]; // the decompressor's code, say
        image[OFF_PAYLOAD_OFFSET..OFF_PAYLOAD_OFFSET + 4]
            .copy_from_slice(&(prefix.len() as u32).to_le_bytes());
        image[OFF_PAYLOAD_LENGTH..OFF_PAYLOAD_LENGTH + 4]
            .copy_from_slice(&(payload.len() as u32).to_le_bytes());
        image.extend_from_slice(&prefix);
        image.extend_from_slice(payload);
        image.extend_from_slice(&[0xccu8; 0x200]);
        image
    }

    fn roundtrip(format: Compression) {
        let tmp = tempfile::tempdir().unwrap();
        let elf = fake_elf(300_000);
        let image = fake_bzimage(&compress(format, &elf), "6.1.0-test");
        let input = tmp.path().join("vmlinuz");
        fs::write(&input, &image).unwrap();
        let out = tmp.path().join("vmlinux");
        let ex = extract_vmlinux(&input, &out).unwrap();
        assert_eq!(ex.route, Route::SetupHeader, "{format}");
        assert_eq!(ex.compression, Some(format));
        assert_eq!(ex.payload_offset, Some(8 * 512 + 0x300));
        assert_eq!(ex.size, elf.len() as u64);
        assert!(fs::read(&out).unwrap() == elf, "{format}: output differs");
        assert_eq!(
            fs::read_dir(tmp.path()).unwrap().count(),
            2,
            "no partial file left"
        );
    }

    #[test]
    fn extracts_gzip_payload() {
        roundtrip(Compression::Gzip);
    }

    #[test]
    fn extracts_zstd_payload() {
        roundtrip(Compression::Zstd);
    }

    #[test]
    fn extracts_lz4_legacy_payload() {
        roundtrip(Compression::Lz4);
    }

    #[test]
    fn extracts_lz4_payload_of_several_chunks() {
        let tmp = tempfile::tempdir().unwrap();
        let elf = fake_elf(LZ4_LEGACY_CHUNK * 2 + 1000);
        let input = tmp.path().join("vmlinuz");
        fs::write(&input, fake_bzimage(&compress(Compression::Lz4, &elf), "6")).unwrap();
        let out = tmp.path().join("vmlinux");
        let ex = extract_vmlinux(&input, &out).unwrap();
        assert_eq!(ex.size, elf.len() as u64);
        assert!(fs::read(&out).unwrap() == elf);
    }

    #[test]
    fn extracts_xz_payload() {
        roundtrip(Compression::Xz);
    }

    #[test]
    fn extracts_lzma_payload() {
        roundtrip(Compression::Lzma);
    }

    #[test]
    fn extracts_bzip2_payload() {
        roundtrip(Compression::Bzip2);
    }

    #[test]
    fn parses_the_setup_header() {
        let image = fake_bzimage(b"\x1f\x8b\x08payload", "6.1.0-56-cloud-amd64");
        let header = SetupHeader::parse(&image).unwrap();
        assert_eq!(header.setup_sects, 7);
        assert_eq!(header.protocol, 0x020f);
        assert_eq!(header.payload_offset, 8 * 512 + 0x300);
        assert_eq!(header.payload_length, 10);
        assert_eq!(header.version.as_deref(), Some("6.1.0-56-cloud-amd64"));
    }

    #[test]
    fn header_errors_say_what_was_found() {
        let mut image = fake_bzimage(b"\x1f\x8b\x08payload", "6");
        image[OFF_PROTOCOL..OFF_PROTOCOL + 2].copy_from_slice(&0x0204u16.to_le_bytes());
        let e = SetupHeader::parse(&image).unwrap_err();
        assert!(e.contains("2.04"), "{e}");
        image[OFF_HEADER_MAGIC] = b'X';
        let e = SetupHeader::parse(&image).unwrap_err();
        assert!(e.contains("HdrS") && e.contains("58 64 72 53"), "{e}");
        let e = SetupHeader::parse(&image[..100]).unwrap_err();
        assert!(e.contains("too short"), "{e}");
    }

    #[test]
    fn zero_setup_sects_means_four() {
        let mut image = fake_bzimage(b"\x1f\x8b\x08payload", "6");
        image[OFF_SETUP_SECTS] = 0;
        assert_eq!(
            SetupHeader::parse(&image).unwrap().payload_offset,
            5 * 512 + 0x300
        );
    }

    #[test]
    fn falls_back_to_scanning_when_the_header_is_broken() {
        let tmp = tempfile::tempdir().unwrap();
        let elf = fake_elf(100_000);
        let mut image = fake_bzimage(&compress(Compression::Zstd, &elf), "6");
        image[OFF_HEADER_MAGIC..OFF_HEADER_MAGIC + 4].copy_from_slice(b"NOPE");
        let input = tmp.path().join("vmlinuz");
        fs::write(&input, &image).unwrap();
        let out = tmp.path().join("vmlinux");
        let ex = extract_vmlinux(&input, &out).unwrap();
        assert_eq!(ex.route, Route::Scan);
        assert_eq!(ex.compression, Some(Compression::Zstd));
        assert_eq!(ex.payload_offset, Some(8 * 512 + 0x300));
        assert!(fs::read(&out).unwrap() == elf);
    }

    #[test]
    fn falls_back_to_scanning_when_the_payload_fields_lie() {
        let tmp = tempfile::tempdir().unwrap();
        let elf = fake_elf(100_000);
        let mut image = fake_bzimage(&compress(Compression::Lz4, &elf), "6");
        image[OFF_PAYLOAD_LENGTH..OFF_PAYLOAD_LENGTH + 4]
            .copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        let input = tmp.path().join("vmlinuz");
        fs::write(&input, &image).unwrap();
        let out = tmp.path().join("vmlinux");
        let ex = extract_vmlinux(&input, &out).unwrap();
        assert_eq!(ex.route, Route::Scan);
        assert_eq!(ex.compression, Some(Compression::Lz4));
        assert!(fs::read(&out).unwrap() == elf);
    }

    #[test]
    fn an_elf_is_copied() {
        let tmp = tempfile::tempdir().unwrap();
        let elf = fake_elf(5000);
        let input = tmp.path().join("vmlinux-in");
        fs::write(&input, &elf).unwrap();
        let out = tmp.path().join("vmlinux");
        let ex = extract_vmlinux(&input, &out).unwrap();
        assert_eq!(ex.route, Route::AlreadyElf);
        assert_eq!(ex.compression, None);
        assert_eq!(fs::read(&out).unwrap(), elf);
    }

    #[test]
    fn a_payload_that_is_not_an_elf_is_refused_and_nothing_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let image = fake_bzimage(&compress(Compression::Gzip, &[b'M'; 5000]), "6");
        let input = tmp.path().join("vmlinuz");
        fs::write(&input, &image).unwrap();
        let out = tmp.path().join("vmlinux");
        let err = extract_vmlinux(&input, &out).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("not an ELF"), "{msg}");
        assert!(
            msg.contains("setup header: gzip payload at 0x1300"),
            "{msg}"
        );
        assert!(msg.contains(&input.display().to_string()), "{msg}");
        assert!(!out.exists());
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_wrong_size_trailer_fails_the_header_route() {
        let tmp = tempfile::tempdir().unwrap();
        let elf = fake_elf(200_000);
        let mut payload = compress(Compression::Zstd, &elf);
        // Claim a different uncompressed size in the trailer.
        let n = payload.len();
        payload[n - 4..].copy_from_slice(&1234u32.to_le_bytes());
        let input = tmp.path().join("vmlinuz");
        fs::write(&input, fake_bzimage(&payload, "6")).unwrap();
        let out = tmp.path().join("vmlinux");
        // The header route refuses; the scan (which has no trailer to check) then succeeds:
        // exactly what extract-vmlinux would do with such a file.
        let ex = extract_vmlinux(&input, &out).unwrap();
        assert_eq!(ex.route, Route::Scan);
    }

    #[test]
    fn random_bytes_fail_with_every_attempt_listed() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("junk");
        fs::write(&input, vec![0x11u8; 4096]).unwrap();
        let err = extract_vmlinux(&input, &tmp.path().join("out")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("no \"HdrS\" magic"), "{msg}");
        assert!(msg.contains("no compression magic anywhere"), "{msg}");
    }

    #[test]
    fn lzo_is_reported_as_unsupported() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("vmlinuz");
        fs::write(
            &input,
            fake_bzimage(b"\x89LZO\x00\x0d\x0a\x1a\x0a....", "6"),
        )
        .unwrap();
        let err = extract_vmlinux(&input, &tmp.path().join("out")).unwrap_err();
        assert!(
            err.to_string()
                .contains("lzo-compressed kernels are not supported"),
            "{err}"
        );
    }

    #[test]
    fn detects_compression_by_magic() {
        for format in Compression::ALL {
            let mut data = format.magic().to_vec();
            data.extend_from_slice(b"rest");
            assert_eq!(Compression::detect(&data), Some(format));
        }
        assert_eq!(Compression::detect(b"\x7fELF"), None);
    }

    #[test]
    fn find_bytes_finds_the_first_match() {
        assert_eq!(find_bytes(b"xxabcabc", b"abc"), Some(2));
        assert_eq!(find_bytes(b"aab", b"ab"), Some(1));
        assert_eq!(find_bytes(b"ab", b"abc"), None);
        assert_eq!(find_bytes(b"xyz", b"a"), None);
    }
}
