//! Opening an input file through its decompressor. The raw bytes pass through a [`Tap`] that hashes
//! them (blake3, to check the file against the content hash its stage key was made from) and counts
//! them (for the progress bar).

use super::format::Compression;
use std::cell::RefCell;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the raw bytes of a file hashed to, once it has been read to the end.
#[derive(Clone, Default)]
pub struct Tap {
    hasher: Rc<RefCell<blake3::Hasher>>,
}

impl Tap {
    pub fn hash(&self) -> String {
        self.hasher.borrow().finalize().to_hex().to_string()
    }
}

struct TapReader {
    file: File,
    tap: Tap,
    progress: Arc<AtomicU64>,
}

impl Read for TapReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        self.tap.hasher.borrow_mut().update(&buf[..n]);
        self.progress.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

const BUF: usize = 1 << 20;

/// Opens `path`, decompressing as `compression` says. `progress` counts the raw bytes read.
pub fn open(
    path: &Path,
    compression: Compression,
    progress: Arc<AtomicU64>,
) -> io::Result<(Box<dyn BufRead>, Tap)> {
    let tap = Tap::default();
    let raw = TapReader {
        file: File::open(path)?,
        tap: tap.clone(),
        progress,
    };
    Ok((
        decoder(BufReader::with_capacity(BUF, raw), compression)?,
        tap,
    ))
}

/// `raw` read through the decompressor `compression` says.
pub fn decoder<'a>(
    raw: impl BufRead + 'a,
    compression: Compression,
) -> io::Result<Box<dyn BufRead + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(raw),
        Compression::Gzip => Box::new(BufReader::with_capacity(
            BUF,
            flate2::bufread::MultiGzDecoder::new(raw),
        )),
        Compression::Zstd => Box::new(BufReader::with_capacity(BUF, Zstd::new(raw)?)),
    })
}

/// A zstd stream of one or more frames (ruzstd's decoder reads one frame; `zstd -c a b`, `pzstd`
/// and seekable compressors write several), skipping skippable frames, checking each frame's
/// checksum when it has one.
struct Zstd<R: BufRead> {
    decoder: Option<ruzstd::decoding::StreamingDecoder<R, ruzstd::decoding::FrameDecoder>>,
}

fn zstd_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}"))
}

/// What a ruzstd error means, in words: its own messages print Rust's debug form
/// (`BlockContentReadError(Error { kind: UnexpectedEof … })`). A read that hit the end of the
/// input anywhere in the error's chain is a truncated file; a disk error is passed on as it is;
/// anything else is data that is not zstd.
fn zstd_failure(e: &(dyn std::error::Error + 'static)) -> io::Error {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::UnexpectedEof => {
                    return zstd_error("the file ends inside a frame (it is truncated)");
                }
                io::ErrorKind::Other | io::ErrorKind::InvalidData => {}
                kind => return io::Error::new(kind, io.to_string()),
            }
        }
        cause = c.source();
    }
    zstd_error("the data is not valid zstd (the file is damaged)")
}

/// [`zstd_failure`] for the errors a ruzstd reader returns (its error inside an `io::Error`).
fn zstd_read_failure(e: io::Error) -> io::Error {
    match e.get_ref() {
        Some(inner) => zstd_failure(inner),
        None if e.kind() == io::ErrorKind::UnexpectedEof => {
            zstd_error("the file ends inside a frame (it is truncated)")
        }
        None => e,
    }
}

/// Skips skippable frames (magic 0x184D2A50..=0x184D2A5F); false at the end of the stream.
fn skip_to_frame(source: &mut impl BufRead) -> io::Result<bool> {
    loop {
        let head = source.fill_buf()?;
        if head.is_empty() {
            return Ok(false);
        }
        if head.len() < 4 || !(head[0] & 0xF0 == 0x50 && head[1..4] == [0x2A, 0x4D, 0x18]) {
            return Ok(true);
        }
        let mut header = [0u8; 8];
        source.read_exact(&mut header)?;
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as u64;
        let skipped = io::copy(&mut source.by_ref().take(len), &mut io::sink())?;
        if skipped != len {
            return Err(zstd_error("truncated skippable frame"));
        }
    }
}

impl<R: BufRead> Zstd<R> {
    fn new(mut source: R) -> io::Result<Zstd<R>> {
        if !skip_to_frame(&mut source)? {
            return Err(zstd_error("the file is empty (no zstd frame)"));
        }
        Ok(Zstd {
            decoder: Some(
                ruzstd::decoding::StreamingDecoder::new(source).map_err(|e| zstd_failure(&e))?,
            ),
        })
    }
}

impl<R: BufRead> Read for Zstd<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(decoder) = self.decoder.as_mut() else {
                return Ok(0);
            };
            let n = decoder.read(buf).map_err(zstd_read_failure)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            // The frame is done: check its checksum, then go on with the next frame, if any.
            let frame = &decoder.decoder;
            if let (Some(want), Some(got)) = (
                frame.get_checksum_from_data(),
                frame.get_calculated_checksum(),
            ) && want != got
            {
                return Err(zstd_error("checksum mismatch (the file is damaged)"));
            }
            let (mut source, frame) = self.decoder.take().expect("present").into_parts();
            if !skip_to_frame(&mut source)? {
                return Ok(0);
            }
            self.decoder = Some(
                ruzstd::decoding::StreamingDecoder::new_with_decoder(source, frame)
                    .map_err(|e| zstd_failure(&e))?,
            );
        }
    }
}
