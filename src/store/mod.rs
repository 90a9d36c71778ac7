//! The content-addressed store (default `./cache`). Files and maps are in `file.rs`, `verify` in
//! `verify.rs`; this file is the store's layout and records (~550 lines of code, then its tests).
//!
//! ```text
//! cache/
//!   objects/ab/cdef…      blobs named by their blake3 hash (hex); immutable
//!   actions/<key>.json    action cache: stage key -> output hashes + metrics
//!   progress/<key>.json   checkpoints saved so far by an unfinished long stage (train)
//!   runs/<run-id>/        run records (see run/)
//!   pins/<hash>           objects `gc` must keep even when no run references them
//!   index/<manifest>--<stage>.json   the key material a stage had last time (`pipe status` diffs it)
//!   locks/                flock files: one per stage key being computed, one for the store
//!   tmp/                  temp files, renamed into place when complete; each name starts with
//!                         the writing process's pid, so `gc` leaves a live process's files alone
//!   damaged/              records that could not be read, set aside (kept for inspection)
//! ```
//!
//! Every write is atomic: temp file in `tmp/`, fsync, rename, fsync of the directory. A `kill -9`
//! at any instant leaves either the old state or the new one, plus at worst a stray temp file that
//! `pipe gc` removes. Objects are made read-only before they are renamed into place, and re-hashed
//! whenever they are read, so a corrupted object is reported, never used. A damaged record (action,
//! progress) is set aside into `damaged/` with a warning and treated as absent.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub use crate::hash::{Hash, Key, OutputName, Outputs, outputs};

/// Action records larger than this are refused unread: a few KB is typical, and a record is read
/// whole.
pub const MAX_RECORD_BYTES: u64 = 4 << 20;

/// The same bound for progress records, which hold every logged iteration of a training stage:
/// about 50 bytes each, so 600,000 iterations at `log_interval: 1` make about 30 MB.
pub const MAX_PROGRESS_BYTES: u64 = 128 << 20;

/// What a finished stage produced (the action cache entry).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ActionRecord {
    pub key: Key,
    pub stage: String,
    pub kind: RecordKind,
    /// The canonical key material (what went into the key), for `pipe status` and lineage.
    pub key_material: serde_json::Value,
    pub outputs: Outputs,
    pub metrics: serde_json::Value,
    pub created: String,
}

/// Checkpoints saved so far by a long stage that has not finished.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    pub checkpoints: Vec<SavedCheckpoint>,
    /// Eval history so far: (iter, train_loss, val_loss).
    pub evals: Vec<(u64, f32, f32)>,
    /// Logged iterations so far (every `log_interval`), up to the last checkpoint. Absent in
    /// records written before there were any.
    #[serde(default)]
    pub steps: Vec<TrainStep>,
}

impl Progress {
    /// Keeps the history that a trainer resuming from the checkpoint of iteration `iter` (the
    /// state after that iteration's evaluation) does not compute again: evaluations up to `iter`,
    /// logged iterations before it. `None` (no checkpoint left): nothing.
    pub fn keep_until(&mut self, iter: Option<u64>) {
        self.evals.retain(|e| iter.is_some_and(|i| e.0 <= i));
        self.steps.retain(|s| iter.is_some_and(|i| s.iter < i));
    }
}

/// One logged training iteration: the loss of its last micro-batch, its learning rate and the
/// gradient norm (`None` when not computed: `grad_clip: 0`). Stored as `[iter, loss, lr,
/// grad_norm]`: a progress record holds every one of a stage's, so it is kept compact.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    from = "(u64, f32, f64, Option<f32>)",
    into = "(u64, f32, f64, Option<f32>)"
)]
pub struct TrainStep {
    pub iter: u64,
    pub loss: f32,
    pub lr: f64,
    pub grad_norm: Option<f32>,
}

impl From<(u64, f32, f64, Option<f32>)> for TrainStep {
    fn from((iter, loss, lr, grad_norm): (u64, f32, f64, Option<f32>)) -> Self {
        TrainStep {
            iter,
            loss,
            lr,
            grad_norm,
        }
    }
}

impl From<TrainStep> for (u64, f32, f64, Option<f32>) {
    fn from(s: TrainStep) -> Self {
        (s.iter, s.loss, s.lr, s.grad_norm)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SavedCheckpoint {
    pub iter: u64,
    pub hash: Hash,
    /// nanoGPT would have written this one to ckpt.pt (improved val loss, or always_save_checkpoint).
    pub keep: bool,
}

#[derive(Clone, Debug)]
pub struct Store {
    pub root: PathBuf,
}

mod file;
mod record;
pub mod remote;
mod verify;

use file::{MAP_HASH_WINDOW, TempFile, WRITE_BUFFER, owner_alive, unique_suffix};
pub use file::{Mapped, ObjectWriter, open_regular, read_bounded, temp_name, write_atomic};
pub use record::{RecordKind, download_key};

pub fn hash_bytes(bytes: &[u8]) -> Hash {
    Hash::of(bytes)
}
pub use verify::{Repair, VerifyReport};

/// An exclusive advisory lock (flock) released when dropped or when the process dies, so a
/// killed `pipe` never leaves a lock behind.
pub struct Lock {
    _file: File,
}

impl Store {
    /// Opens (creating if needed) a store at `root`.
    pub fn open(root: &Path) -> Result<Store> {
        let store = Store::at(root);
        for d in [
            "objects", "actions", "progress", "runs", "locks", "tmp", "index", "damaged",
        ] {
            fs::create_dir_all(store.root.join(d)).with_context(|| format!("cannot create the store at {} (use --cache DIR or PIPE_CACHE to put it elsewhere)", store.root.display()))?;
        }
        Ok(store)
    }

    /// A store handle that creates nothing (for validation and read-only commands).
    pub fn at(root: &Path) -> Store {
        // Absolute, because paths into the store are handed to commands run in other folders.
        let root = std::env::current_dir()
            .map(|cwd| cwd.join(root))
            .unwrap_or_else(|_| root.to_path_buf());
        Store { root }
    }

    fn material_path(&self, manifest: &str, stage: &str) -> PathBuf {
        self.root
            .join("index")
            .join(format!("{manifest}--{stage}.json"))
    }

    /// Remembers the key material a manifest's stage had last time, so `pipe status` can say what
    /// changed.
    pub fn put_last_material(
        &self,
        manifest: &str,
        stage: &str,
        m: &serde_json::Value,
    ) -> Result<()> {
        write_atomic(
            &self.tmp(),
            &self.material_path(manifest, stage),
            &serde_json::to_vec(m)?,
        )
    }

    pub fn last_material(&self, manifest: &str, stage: &str) -> Result<Option<serde_json::Value>> {
        match fs::read(self.material_path(manifest, stage)) {
            Ok(b) => Ok(serde_json::from_slice(&b).ok()),
            Err(_) => Ok(None),
        }
    }

    /// Pins protect objects from `gc`: one empty file per pinned hash in `pins/`.
    /// Pins or unpins `hash`; whether that changed anything (false: it already was so).
    pub fn set_pin(&self, hash: &Hash, on: bool) -> Result<bool> {
        let p = self.root.join("pins").join(hash.as_str());
        if on {
            let was = p.exists();
            fs::create_dir_all(self.root.join("pins"))?;
            write_atomic(&self.tmp(), &p, b"")?;
            Ok(!was)
        } else {
            match fs::remove_file(p) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e.into()),
            }
        }
    }

    pub fn pins(&self) -> Result<Vec<Hash>> {
        let Ok(rd) = fs::read_dir(self.root.join("pins")) else {
            return Ok(Vec::new());
        };
        Ok(rd
            .filter_map(|e| e.ok())
            .filter_map(|e| Hash::parse(&e.file_name().to_string_lossy()).ok())
            .collect())
    }

    fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn object_path(&self, hash: &Hash) -> PathBuf {
        let hex = hash.as_str();
        self.root.join("objects").join(&hex[..2]).join(&hex[2..])
    }

    /// Stores a blob; returns its hash. Existing objects are not rewritten.
    pub fn put(&self, bytes: &[u8]) -> Result<Hash> {
        let hash = hash_bytes(bytes);
        let path = self.object_path(&hash);
        if !path.exists() {
            tracing::debug!(%hash, bytes = bytes.len(), "store object");
            let mut t = TempFile::create(&self.tmp())?;
            t.write(bytes)?;
            t.commit(&path, true)?;
        }
        Ok(hash)
    }

    /// Stores a file's content, streaming: it is hashed while it is copied into a temp file.
    pub fn put_file(&self, path: &Path) -> Result<Hash> {
        let mut src = File::open(path).with_context(|| format!("reading {}", path.display()))?;
        let mut t = TempFile::create(&self.tmp())?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = src
                .read(&mut buf)
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            t.write(&buf[..n])?;
        }
        let hash = Hash::from(hasher.finalize());
        let dest = self.object_path(&hash);
        if !dest.exists() {
            t.commit(&dest, true)?;
        }
        Ok(hash)
    }

    /// Stores the file that `write` creates at the path it is given, for formats written with
    /// seeks (a zip). The path is in the store's tmp folder under this process's name, so a crash
    /// leaves it to [`Store::clean_tmp`]; it is removed once stored.
    pub fn put_written(&self, what: &str, write: impl FnOnce(&Path) -> Result<()>) -> Result<Hash> {
        fs::create_dir_all(self.tmp())?;
        let path = self.tmp().join(temp_name(what));
        let stored = write(&path).and_then(|_| self.put_file(&path));
        let _ = fs::remove_file(&path);
        stored
    }

    /// A writer for a new object: bytes are hashed as they are written to a temp file, and
    /// `commit` moves the file into place under its hash. Dropped uncommitted, it leaves nothing.
    pub fn writer(&self) -> Result<ObjectWriter<'_>> {
        Ok(ObjectWriter {
            store: self,
            temp: TempFile::create(&self.tmp())?,
            hasher: blake3::Hasher::new(),
            buf: Vec::with_capacity(WRITE_BUFFER),
            len: 0,
        })
    }

    /// Maps an object into memory, read-only, after checking its hash once (blake3 on all cores).
    /// The bytes stay in the page cache, not in this process's heap: memory does not grow with
    /// the object's size.
    pub fn map(&self, hash: &Hash) -> Result<Mapped> {
        let path = self.object_path(hash);
        let file = File::open(&path).with_context(|| format!("object {hash} is missing from the store {} (was it removed by hand? rerun the stage that made it)", self.root.display()))?;
        // SAFETY: objects are read-only once committed and never rewritten in place (a new
        // version is a new file, renamed over the old name), so the mapped bytes do not change.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("mapping {}", path.display()))?;
        let mapped = Mapped { map };
        // Hashed in windows whose pages are dropped once hashed: checking a file larger than
        // memory never holds it all (the pages stay in the page cache, not in this process).
        let mut hasher = blake3::Hasher::new();
        let len = mapped.map.len();
        for start in (0..len).step_by(MAP_HASH_WINDOW) {
            let r = start..(start + MAP_HASH_WINDOW).min(len);
            hasher.update_rayon(&mapped.map[r.clone()]);
            mapped.release(r);
        }
        let actual = Hash::from(hasher.finalize());
        if actual != *hash {
            bail!(
                "object {hash} in {} is corrupted (its content hashes to {actual}); run `pipe verify`, which removes it, then rerun",
                self.root.display()
            );
        }
        Ok(mapped)
    }

    /// Reads a blob and checks its hash.
    pub fn get(&self, hash: &Hash) -> Result<Vec<u8>> {
        let path = self.object_path(hash);
        let bytes = fs::read(&path).with_context(|| format!("object {hash} is missing from the store {} (was it removed by hand? rerun the stage that made it)", self.root.display()))?;
        let actual = hash_bytes(&bytes);
        if actual != *hash {
            bail!(
                "object {hash} in {} is corrupted (its content hashes to {actual}); run `pipe verify`, which removes it, then rerun",
                self.root.display()
            );
        }
        Ok(bytes)
    }

    /// Copies an object to `dest` (a private copy that a command may change freely), streaming,
    /// and checks the object's hash on the way.
    pub fn copy_out(&self, hash: &Hash, dest: &Path) -> Result<()> {
        let src = self.object_path(hash);
        let mut r = File::open(&src).with_context(|| {
            format!(
                "object {hash} is missing from the store {} (rerun the stage that made it)",
                self.root.display()
            )
        })?;
        let mut w = File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = r
                .read(&mut buf)
                .with_context(|| format!("reading {}", src.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            w.write_all(&buf[..n])
                .with_context(|| format!("writing {}", dest.display()))?;
        }
        if Hash::from(hasher.finalize()) != *hash {
            let _ = fs::remove_file(dest);
            bail!(
                "object {hash} in {} is corrupted; run `pipe verify`, which removes it, then rerun",
                self.root.display()
            );
        }
        Ok(())
    }

    /// The blake3 hash of a file's content, streamed.
    pub fn hash_file(path: &Path) -> Result<Hash> {
        let mut hasher = blake3::Hasher::new();
        // Regular files only: a FIFO or a device would block or never end.
        let (f, _) = open_regular(path).with_context(|| format!("reading {}", path.display()))?;
        hasher
            .update_reader(f)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(hasher.finalize().into())
    }

    /// Moves a damaged record into `damaged/` (where it is kept for inspection) with a warning.
    fn set_aside(&self, path: &Path, why: &str) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let folder = path
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let dest = self
            .root
            .join("damaged")
            .join(format!("{folder}-{name}.{}", unique_suffix()));
        let _ = fs::create_dir_all(self.root.join("damaged"));
        match fs::rename(path, &dest) {
            Ok(()) => tracing::warn!(
                "{} is damaged ({why}); set aside as {} and treated as absent",
                path.display(),
                dest.display()
            ),
            Err(e) => tracing::warn!(
                "{} is damaged ({why}) and could not be set aside: {e}",
                path.display()
            ),
        }
    }

    /// Reads a JSON record; a record that does not parse, that is not a regular file or that is
    /// larger than `limit` ([`MAX_RECORD_BYTES`], [`MAX_PROGRESS_BYTES`]) is set aside and read
    /// as absent.
    fn read_record<T: serde::de::DeserializeOwned>(
        &self,
        path: &Path,
        limit: u64,
    ) -> Result<Option<T>> {
        let bytes = match read_bounded(path, limit) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                self.set_aside(path, &e.to_string());
                return Ok(None);
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        match serde_json::from_slice(&bytes) {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                self.set_aside(path, &format!("not a valid record: {e}"));
                Ok(None)
            }
        }
    }

    pub fn has(&self, hash: &Hash) -> bool {
        self.object_path(hash).exists()
    }

    fn action_path(&self, key: &Key) -> PathBuf {
        self.root.join("actions").join(format!("{key}.json"))
    }

    /// The action record for `key`, if the stage finished before and all its outputs are present.
    /// A damaged record, or one that is not a true record of `key` (`ActionRecord::problem`: a
    /// store can be copied from anywhere), is set aside (with a warning) and counts as a miss.
    pub fn action(&self, key: &Key) -> Result<Option<ActionRecord>> {
        let path = self.action_path(key);
        let rec: Option<ActionRecord> = self.read_record(&path, MAX_RECORD_BYTES)?;
        if let Some(why) = rec.as_ref().and_then(|r| r.problem(key)) {
            self.set_aside(&path, &format!("not a true record of its key: {why}"));
            return Ok(None);
        }
        Ok(rec.filter(|r| r.outputs.values().all(|h| self.has(h))))
    }

    pub fn put_action(&self, rec: &ActionRecord) -> Result<()> {
        write_atomic(
            &self.tmp(),
            &self.action_path(&rec.key),
            &serde_json::to_vec_pretty(rec)?,
        )
    }

    /// Every readable action record (damaged ones are set aside).
    /// Files not named by a key are not records of this version (before keys were typed, GPT-2
    /// downloads were indexed as `download-sha256-<sha>`): they are left alone.
    pub fn actions(&self) -> Result<Vec<ActionRecord>> {
        let mut out = Vec::new();
        for p in self.json_files("actions")? {
            let stem = p.file_stem().map(|s| s.to_string_lossy().to_string());
            if stem.as_deref().map(Key::parse).is_none_or(|k| k.is_err()) {
                continue;
            }
            if let Some(r) = self.read_record(&p, MAX_RECORD_BYTES)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The `.json` files of one of the store's folders.
    fn json_files(&self, folder: &str) -> Result<Vec<PathBuf>> {
        let dir = self.root.join(folder);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        let mut out: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        out.sort();
        Ok(out)
    }

    fn progress_path(&self, key: &Key) -> PathBuf {
        self.root.join("progress").join(format!("{key}.json"))
    }

    /// The checkpoints saved so far for `key` (none if the record is absent or damaged).
    pub fn progress(&self, key: &Key) -> Result<Progress> {
        Ok(self
            .read_record(&self.progress_path(key), MAX_PROGRESS_BYTES)?
            .unwrap_or_default())
    }

    pub fn put_progress(&self, key: &Key, p: &Progress) -> Result<()> {
        write_atomic(
            &self.tmp(),
            &self.progress_path(key),
            &serde_json::to_vec(p)?,
        )
    }

    pub fn clear_progress(&self, key: &Key) -> Result<()> {
        match fs::remove_file(self.progress_path(key)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    pub fn progress_keys(&self) -> Result<Vec<Key>> {
        Ok(self
            .json_files("progress")?
            .iter()
            .filter_map(|p| {
                p.file_stem()
                    .and_then(|s| Key::parse(&s.to_string_lossy()).ok())
            })
            .collect())
    }

    fn lock_file(&self, name: &str) -> Result<File> {
        let path = self.root.join("locks").join(name);
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening lock {}", path.display()))
    }

    /// Blocks until this process holds the lock for computing `key`.
    pub fn lock_key(&self, key: &Key) -> Result<Lock> {
        let f = self.lock_file(&format!("{key}.lock"))?;
        f.lock()?;
        Ok(Lock { _file: f })
    }

    /// Non-blocking: `None` when another process holds it.
    pub fn try_lock_key(&self, key: &Key) -> Result<Option<Lock>> {
        let f = self.lock_file(&format!("{key}.lock"))?;
        match f.try_lock() {
            Ok(()) => Ok(Some(Lock { _file: f })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
        }
    }

    /// Shared store lock held by every run; `gc` takes it exclusively so it never deletes what a
    /// live run is writing.
    pub fn lock_store_shared(&self) -> Result<Lock> {
        let f = self.lock_file("store.lock")?;
        f.lock_shared()?;
        Ok(Lock { _file: f })
    }

    pub fn try_lock_store_exclusive(&self) -> Result<Option<Lock>> {
        let f = self.lock_file("store.lock")?;
        match f.try_lock() {
            Ok(()) => Ok(Some(Lock { _file: f })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
        }
    }

    /// Every object hash in the store.
    pub fn all_objects(&self) -> Result<Vec<Hash>> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(self.root.join("objects")) else {
            return Ok(out);
        };
        for d in rd {
            let d = d?;
            if !d.file_type()?.is_dir() {
                continue;
            }
            let prefix = d.file_name().to_string_lossy().to_string();
            for f in fs::read_dir(d.path())? {
                // Anything else in objects/ (a stray file) is not an object.
                if let Ok(h) = Hash::parse(&format!("{prefix}{}", f?.file_name().to_string_lossy()))
                {
                    out.push(h);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Resolves a unique hash prefix (at least 6 hex digits) to an object hash.
    pub fn resolve_object(&self, prefix: &str) -> Result<Option<Hash>> {
        if !prefix.chars().all(|c| c.is_ascii_hexdigit()) || prefix.is_empty() {
            return Ok(None);
        }
        if prefix.len() < 6 {
            bail!("{prefix:?} is too short: give at least 6 hex digits of the hash");
        }
        let matches: Vec<Hash> = self
            .all_objects()?
            .into_iter()
            .filter(|h| h.as_str().starts_with(prefix))
            .collect();
        match matches.len() {
            0 => Ok(None),
            1 => Ok(Some(matches[0].clone())),
            n => bail!("{prefix} matches {n} objects; give more digits"),
        }
    }

    pub fn remove_object(&self, hash: &Hash) -> Result<u64> {
        let p = self.object_path(hash);
        let size = fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        fs::remove_file(p)?;
        Ok(size)
    }

    pub fn remove_action(&self, key: &Key) -> Result<()> {
        Ok(fs::remove_file(self.action_path(key))?)
    }

    /// Removes leftover temp files: those of processes that are gone (killed), never those of a
    /// live one.
    pub fn clean_tmp(&self) -> Result<usize> {
        let mut n = 0;
        for e in fs::read_dir(self.tmp())? {
            let e = e?;
            if owner_alive(&e.file_name().to_string_lossy()) {
                continue;
            }
            let p = e.path();
            if p.is_dir() {
                fs::remove_dir_all(&p)?
            } else {
                fs::remove_file(&p)?
            }
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_keeps_steps_compact_and_reads_older_records() {
        // A record written before there were steps.
        let old = r#"{"checkpoints":[],"evals":[[0,4.0,4.1]]}"#;
        let p: Progress = serde_json::from_str(old).unwrap();
        assert!(p.steps.is_empty());
        let step = |iter, grad_norm| TrainStep {
            iter,
            loss: 2.5,
            lr: 1e-3,
            grad_norm,
        };
        let mut p = Progress {
            checkpoints: vec![],
            evals: vec![(0, 4.0, 4.1), (20, 3.0, 3.1), (40, 2.0, 2.1)],
            steps: vec![step(0, Some(0.5)), step(10, None), step(20, Some(0.25))],
        };
        let text = serde_json::to_string(&p).unwrap();
        assert!(
            text.contains(r#""steps":[[0,2.5,0.001,0.5],[10,2.5,0.001,null],"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Progress>(&text).unwrap(), p);
        // Resuming from the checkpoint at 20: its evaluation stays, its iteration is redone.
        p.keep_until(Some(20));
        assert_eq!(p.evals.iter().map(|e| e.0).collect::<Vec<_>>(), [0, 20]);
        assert_eq!(p.steps.iter().map(|s| s.iter).collect::<Vec<_>>(), [0, 10]);
        p.keep_until(None);
        assert!(p.evals.is_empty() && p.steps.is_empty());
    }

    #[test]
    fn put_get_and_corruption_detection() {
        let dir = std::env::temp_dir().join(format!("pipe-store-test-{}", unique_suffix()));
        let s = Store::open(&dir).unwrap();
        let h = s.put(b"hello").unwrap();
        assert_eq!(h, hash_bytes(b"hello"));
        assert_eq!(s.get(&h).unwrap(), b"hello");
        assert_eq!(s.put(b"hello").unwrap(), h);
        let path = s.object_path(&h);
        assert!(fs::metadata(&path).unwrap().permissions().readonly());
        let mut perm = fs::metadata(&path).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        fs::set_permissions(&path, perm).unwrap();
        fs::write(&path, b"hellO").unwrap();
        let err = s.get(&h).unwrap_err().to_string();
        assert!(err.contains("corrupted"), "{err}");
        let r = s.verify(Repair::Yes).unwrap();
        assert_eq!((r.objects, r.corrupted), (1, vec![h.clone()]));
        assert!(!s.has(&h));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn put_file_streams_objects_larger_than_its_buffer() {
        let dir = std::env::temp_dir().join(format!("pipe-store-stream-{}", unique_suffix()));
        let s = Store::open(&dir).unwrap();
        let bytes: Vec<u8> = (0..3 * (1 << 20) + 17).map(|i| (i % 251) as u8).collect();
        let src = dir.join("big.bin");
        fs::write(&src, &bytes).unwrap();
        let h = s.put_file(&src).unwrap();
        assert_eq!(h, hash_bytes(&bytes));
        assert_eq!(s.get(&h).unwrap(), bytes);
        assert_eq!(Store::hash_file(&s.object_path(&h)).unwrap(), h);
        let copy = dir.join("copy.bin");
        s.copy_out(&h, &copy).unwrap();
        assert_eq!(fs::read(&copy).unwrap(), bytes);
        let r = s.verify(Repair::Yes).unwrap();
        assert_eq!((r.objects, r.corrupted.len(), r.damaged.len()), (1, 0, 0));
        // Nothing is left in tmp/ by a completed put.
        assert_eq!(fs::read_dir(s.tmp()).unwrap().count(), 0);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn clean_tmp_spares_the_files_of_live_processes() {
        let dir = std::env::temp_dir().join(format!("pipe-store-tmp-{}", unique_suffix()));
        let s = Store::open(&dir).unwrap();
        let mine = s.tmp().join(temp_name("tmp"));
        fs::write(&mine, b"in progress").unwrap();
        // pid 0x7fffffff does not exist: its file is a leftover.
        let dead = s.tmp().join("2147483647.abc.tmp");
        fs::write(&dead, b"left over").unwrap();
        let unnamed = s.tmp().join("download-xyz");
        fs::write(&unnamed, b"old layout").unwrap();
        assert_eq!(s.clean_tmp().unwrap(), 2);
        assert!(mine.exists() && !dead.exists() && !unnamed.exists());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_streamed_object_larger_than_the_buffer_is_hashed_mapped_and_verified() {
        let dir = std::env::temp_dir().join(format!("pipe-store-writer-{}", unique_suffix()));
        let s = Store::open(&dir).unwrap();
        let tokens: Vec<u16> = (0..(3 * WRITE_BUFFER / 2 + 5) as u32)
            .map(|i| (i % 50257) as u16)
            .collect();
        let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        let mut w = s.writer().unwrap();
        // Small writes and one larger than the buffer.
        w.write_all(&bytes[..10]).unwrap();
        w.write_all(&bytes[10..WRITE_BUFFER + 20]).unwrap();
        for c in bytes[WRITE_BUFFER + 20..].chunks(4097) {
            w.write_all(c).unwrap();
        }
        assert_eq!(w.len, bytes.len() as u64);
        let h = w.commit().unwrap();
        assert_eq!(h, hash_bytes(&bytes));
        let m = s.map(&h).unwrap();
        assert_eq!(m.bytes(), &bytes[..]);
        assert_eq!(m.tokens().unwrap(), &tokens[..]);
        drop(m);
        // An abandoned writer leaves nothing behind.
        let mut w = s.writer().unwrap();
        w.write_all(b"half").unwrap();
        drop(w);
        assert_eq!(fs::read_dir(s.tmp()).unwrap().count(), 0);
        // A damaged object is refused by map.
        let path = s.object_path(&h);
        let mut perm = fs::metadata(&path).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        fs::set_permissions(&path, perm).unwrap();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(bytes.len() as u64 - 2).unwrap();
        assert!(s.map(&h).err().unwrap().to_string().contains("corrupted"));
        fs::remove_dir_all(dir).unwrap();
    }
}
