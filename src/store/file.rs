//! Files of the store: atomic temp files, streamed object writers and verified memory maps.

use super::{Hash, Store};
use anyhow::{Context, Result, bail};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically (temp in `tmp_dir`, fsync, rename, fsync dir).
pub fn write_atomic(tmp_dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let mut t = TempFile::create(tmp_dir)?;
    t.write(bytes)?;
    t.commit(path, false)
}

/// A file being written in `tmp/`, named after this process (see `clean_tmp`). Until it is
/// committed (renamed into place), dropping it removes it, so a failed write (a full disk, an
/// error) leaves nothing behind.
pub(super) struct TempFile {
    file: File,
    path: PathBuf,
    committed: bool,
}

impl TempFile {
    pub(super) fn create(tmp_dir: &Path) -> Result<TempFile> {
        fs::create_dir_all(tmp_dir)
            .with_context(|| format!("creating the folder {}", tmp_dir.display()))?;
        let path = tmp_dir.join(temp_name("tmp"));
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempFile {
            file,
            path,
            committed: false,
        })
    }

    pub(super) fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .with_context(|| format!("writing {}", self.path.display()))
    }

    /// fsyncs the file and renames it to `dest` (read-only first, for objects).
    pub(super) fn commit(mut self, dest: &Path, read_only: bool) -> Result<()> {
        let tmp = self.path.clone();
        let fail = |what: &str| format!("{what} {} (for {})", tmp.display(), dest.display());
        self.file.sync_all().with_context(|| fail("syncing"))?;
        if read_only {
            let mut perm = self
                .file
                .metadata()
                .with_context(|| fail("reading"))?
                .permissions();
            perm.set_readonly(true);
            self.file
                .set_permissions(perm)
                .with_context(|| fail("making read-only"))?;
        }
        let dir = dest.parent().context("path has no parent")?;
        fs::create_dir_all(dir)
            .with_context(|| format!("creating the folder {}", dir.display()))?;
        fs::rename(&tmp, dest).with_context(|| format!("renaming into {}", dest.display()))?;
        self.committed = true;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing the folder {}", dir.display()))?;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// `<pid>.<unique>.<what>`: a temp entry's name says which process owns it.
pub fn temp_name(what: &str) -> String {
    format!("{}.{}.{what}", std::process::id(), unique_suffix())
}

/// Whether the process that made temp entry `name` is still alive.
pub(super) fn owner_alive(name: &str) -> bool {
    let Some(pid) = name.split('.').next().and_then(|p| p.parse::<i32>().ok()) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

pub(super) fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{t:x}{n:x}")
}

/// How much an `ObjectWriter` gathers before writing to its file.
pub(super) const WRITE_BUFFER: usize = 1 << 20;

/// A new object being written (see `Store::writer`).
pub struct ObjectWriter<'s> {
    pub(super) store: &'s Store,
    pub(super) temp: TempFile,
    pub(super) hasher: blake3::Hasher,
    pub(super) buf: Vec<u8>,
    pub(super) len: u64,
}

impl ObjectWriter<'_> {
    /// Bytes written so far (the remote store's downloads check it).
    #[cfg(feature = "remote")]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Finishes the object: fsync, read-only, rename into place (unless the store already has
    /// it). Returns its hash.
    pub fn commit(mut self) -> Result<Hash> {
        self.flush_buf()?;
        let hash = Hash::from(self.hasher.finalize());
        let dest = self.store.object_path(&hash);
        if !dest.exists() {
            tracing::debug!(%hash, bytes = self.len, "store object (streamed)");
            self.temp.commit(&dest, true)?;
        }
        Ok(hash)
    }

    /// Finishes the object only if its bytes hash to `expected` (a download): otherwise nothing
    /// is stored and the error names both hashes.
    #[cfg(feature = "remote")]
    pub fn commit_expecting(mut self, expected: &Hash) -> Result<Hash> {
        self.flush_buf()?;
        let hash = Hash::from(self.hasher.finalize());
        if hash != *expected {
            bail!("the bytes hash to {hash}, not {expected} (a corrupt copy; it was not stored)");
        }
        self.commit()
    }

    fn flush_buf(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.hasher.update(&self.buf);
            self.temp.write(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

impl Write for ObjectWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + bytes.len() > WRITE_BUFFER {
            self.flush_buf().map_err(std::io::Error::other)?;
        }
        if bytes.len() >= WRITE_BUFFER {
            self.hasher.update(bytes);
            self.temp.write(bytes).map_err(std::io::Error::other)?;
        } else {
            self.buf.extend_from_slice(bytes);
        }
        self.len += bytes.len() as u64;
        Ok(bytes.len())
    }

    /// Buffered bytes go to the file at `commit`; flushing early is not needed for atomicity.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An object mapped into memory, its hash checked (see `Store::map`).
pub struct Mapped {
    pub(super) map: memmap2::Mmap,
}

/// `Store::map` checks an object's hash this many bytes at a time.
pub(super) const MAP_HASH_WINDOW: usize = 16 << 20;

impl Mapped {
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Drops this process's pages of `range` (bytes of the map) once they have been read, so a
    /// large object read from start to end does not stay resident: the bytes stay valid and are
    /// read back from the file (the page cache) if touched again. Pages are whole, so a page that
    /// `range` shares with its neighbours is dropped too; that costs a re-read, nothing more.
    pub fn release(&self, range: std::ops::Range<usize>) {
        let end = range.end.min(self.map.len());
        if range.start >= end {
            return;
        }
        // SAFETY: a read-only shared map of a file that is never written in place (objects are
        // immutable): MADV_DONTNEED only unmaps pages, and reading them again faults the same
        // bytes back in from the file.
        let r = unsafe {
            self.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                range.start,
                end - range.start,
            )
        };
        if let Err(e) = r {
            tracing::debug!("madvise(DONTNEED) failed: {e}");
        }
    }

    /// The bytes as little-endian u16 tokens (nanoGPT's .bin), without copying.
    pub fn tokens(&self) -> Result<&[u16]> {
        if !self.map.len().is_multiple_of(2) {
            bail!("a token file has an odd number of bytes: not a uint16 stream");
        }
        // SAFETY: any two bytes are a valid u16; a page-aligned map has no unaligned prefix
        // (checked below rather than assumed).
        let (prefix, tokens, suffix) = unsafe { self.map.align_to::<u16>() };
        if !prefix.is_empty() || !suffix.is_empty() {
            bail!("a token file's memory map is not aligned for u16");
        }
        Ok(tokens)
    }
}

/// Reads a regular file of at most `limit` bytes. Anything else is refused without blocking: the
/// file is opened non-blocking (a FIFO would otherwise wait for a writer forever) and checked to
/// be a regular file (a device such as /dev/zero never ends) before a byte is read. A refusal is
/// `InvalidData`; a missing file, `NotFound`.
pub fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let (f, len) = open_regular(path)?;
    if len > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{len} bytes, more than the {limit} a record may have"),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    f.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("it grew past {limit} bytes while read"),
        ));
    }
    Ok(bytes)
}

/// Opens `path` for reading if it is a regular file (symlinks followed); its size. A FIFO, a
/// device, a socket or a folder is `InvalidData`, found without blocking.
pub fn open_regular(path: &Path) -> std::io::Result<(File, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a folder"
        } else {
            "not a regular file (a FIFO, device or socket)"
        };
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is {what}", path.display()),
        ));
    }
    Ok((f, meta.len()))
}

#[cfg(not(target_endian = "little"))]
compile_error!("pipe reads token files and checkpoints as little-endian memory maps");
