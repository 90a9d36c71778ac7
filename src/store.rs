//! The content-addressed store (default `./cache`).
//!
//! ```text
//! cache/
//!   objects/ab/cdef…      blobs named by their blake3 hash (hex); immutable
//!   actions/<key>.json    action cache: stage key -> output hashes + metrics
//!   progress/<key>.json   checkpoints saved so far by an unfinished long stage (train)
//!   runs/<run-id>/        run records (see run.rs)
//!   pins/<hash>           objects `gc` must keep even when no run references them
//!   index/<manifest>--<stage>.json   the key material a stage had last time (`pipe status` diffs it)
//!   locks/                flock files: one per stage key being computed, one for the store
//!   tmp/                  temp files, renamed into place when complete
//! ```
//!
//! Every write is atomic: temp file in `tmp/`, fsync, rename, fsync of the directory. A `kill -9`
//! at any instant leaves either the old state or the new one, plus at worst a stray temp file that
//! `pipe gc` removes. Objects are re-hashed whenever they are read, so a corrupted object is reported,
//! never used.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A blake3 hash in lowercase hex.
pub type Hash = String;

pub fn hash_bytes(bytes: &[u8]) -> Hash {
    blake3::hash(bytes).to_hex().to_string()
}

/// What a finished stage produced (the action cache entry).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ActionRecord {
    pub key: Hash,
    pub stage: String,
    pub kind: String,
    /// The canonical key material (what went into the key), for `pipe status` and lineage.
    pub key_material: serde_json::Value,
    pub outputs: BTreeMap<String, Hash>,
    pub metrics: serde_json::Value,
    pub created: String,
}

/// Checkpoints saved so far by a long stage that has not finished.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    pub checkpoints: Vec<SavedCheckpoint>,
    /// Eval history so far: (iter, train_loss, val_loss).
    pub evals: Vec<(u64, f32, f32)>,
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

/// Writes `bytes` to `path` atomically (temp in `tmp_dir`, fsync, rename, fsync dir).
pub fn write_atomic(tmp_dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    fs::create_dir_all(tmp_dir)?;
    let tmp = tmp_dir.join(format!("{}.{}.tmp", std::process::id(), unique_suffix()));
    {
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    let dir = path.parent().context("path has no parent")?;
    fs::create_dir_all(dir)?;
    fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{t:x}{n:x}")
}

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
            "objects", "actions", "progress", "runs", "locks", "tmp", "index",
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
    pub fn set_pin(&self, hash: &str, on: bool) -> Result<()> {
        let p = self.root.join("pins").join(hash);
        if on {
            fs::create_dir_all(self.root.join("pins"))?;
            write_atomic(&self.tmp(), &p, b"")
        } else {
            match fs::remove_file(p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            }
        }
    }

    pub fn pins(&self) -> Result<Vec<Hash>> {
        let Ok(rd) = fs::read_dir(self.root.join("pins")) else {
            return Ok(Vec::new());
        };
        Ok(rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect())
    }

    fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn object_path(&self, hash: &str) -> PathBuf {
        self.root.join("objects").join(&hash[..2]).join(&hash[2..])
    }

    /// Stores a blob; returns its hash. Existing objects are not rewritten.
    pub fn put(&self, bytes: &[u8]) -> Result<Hash> {
        let hash = hash_bytes(bytes);
        let path = self.object_path(&hash);
        if !path.exists() {
            tracing::debug!(%hash, bytes = bytes.len(), "store object");
            write_atomic(&self.tmp(), &path, bytes)?;
        }
        Ok(hash)
    }

    /// Stores a file's content (read fully; our artifacts fit in memory).
    pub fn put_file(&self, path: &Path) -> Result<Hash> {
        let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        self.put(&bytes)
    }

    /// Reads a blob and checks its hash.
    pub fn get(&self, hash: &str) -> Result<Vec<u8>> {
        let path = self.object_path(hash);
        let bytes = fs::read(&path).with_context(|| format!("object {hash} is missing from the store {} (was it removed by hand? rerun the stage that made it)", self.root.display()))?;
        let actual = hash_bytes(&bytes);
        if actual != hash {
            bail!(
                "object {hash} in {} is corrupted (its content hashes to {actual}); run `pipe verify`, which removes it, then rerun",
                self.root.display()
            );
        }
        Ok(bytes)
    }

    pub fn has(&self, hash: &str) -> bool {
        self.object_path(hash).exists()
    }

    fn action_path(&self, key: &str) -> PathBuf {
        self.root.join("actions").join(format!("{key}.json"))
    }

    /// The action record for `key`, if the stage finished before and all its outputs are present.
    pub fn action(&self, key: &str) -> Result<Option<ActionRecord>> {
        let path = self.action_path(key);
        let Ok(text) = fs::read_to_string(&path) else {
            return Ok(None);
        };
        let rec: ActionRecord = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid action record", path.display()))?;
        if rec.outputs.values().all(|h| self.has(h)) {
            Ok(Some(rec))
        } else {
            Ok(None)
        }
    }

    pub fn put_action(&self, rec: &ActionRecord) -> Result<()> {
        write_atomic(
            &self.tmp(),
            &self.action_path(&rec.key),
            &serde_json::to_vec_pretty(rec)?,
        )
    }

    pub fn actions(&self) -> Result<Vec<ActionRecord>> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(self.root.join("actions")) else {
            return Ok(out);
        };
        for e in rd {
            let p = e?.path();
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            if let Ok(r) = serde_json::from_str(&fs::read_to_string(&p)?) {
                out.push(r);
            }
        }
        Ok(out)
    }

    fn progress_path(&self, key: &str) -> PathBuf {
        self.root.join("progress").join(format!("{key}.json"))
    }

    pub fn progress(&self, key: &str) -> Result<Progress> {
        match fs::read_to_string(self.progress_path(key)) {
            Ok(t) => Ok(serde_json::from_str(&t)?),
            Err(_) => Ok(Progress::default()),
        }
    }

    pub fn put_progress(&self, key: &str, p: &Progress) -> Result<()> {
        write_atomic(
            &self.tmp(),
            &self.progress_path(key),
            &serde_json::to_vec(p)?,
        )
    }

    pub fn clear_progress(&self, key: &str) -> Result<()> {
        match fs::remove_file(self.progress_path(key)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    pub fn progress_keys(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for e in fs::read_dir(self.root.join("progress"))? {
            let name = e?.file_name().to_string_lossy().to_string();
            if let Some(k) = name.strip_suffix(".json") {
                out.push(k.to_string());
            }
        }
        Ok(out)
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
    pub fn lock_key(&self, key: &str) -> Result<Lock> {
        let f = self.lock_file(&format!("{key}.lock"))?;
        f.lock()?;
        Ok(Lock { _file: f })
    }

    /// Non-blocking: `None` when another process holds it.
    pub fn try_lock_key(&self, key: &str) -> Result<Option<Lock>> {
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
                out.push(format!("{prefix}{}", f?.file_name().to_string_lossy()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Re-hashes every object; returns the corrupted ones (and moves them aside into `tmp/`, so
    /// the stages that made them rerun instead of failing).
    pub fn verify(&self) -> Result<(usize, Vec<Hash>)> {
        let all = self.all_objects()?;
        let mut bad = Vec::new();
        for h in &all {
            let bytes = fs::read(self.object_path(h))?;
            if hash_bytes(&bytes) != *h {
                bad.push(h.clone());
            }
        }
        for h in &bad {
            let _ = fs::rename(
                self.object_path(h),
                self.tmp().join(format!("corrupted-{h}")),
            );
        }
        Ok((all.len(), bad))
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
            .filter(|h| h.starts_with(prefix))
            .collect();
        match matches.len() {
            0 => Ok(None),
            1 => Ok(Some(matches[0].clone())),
            n => bail!("{prefix} matches {n} objects; give more digits"),
        }
    }

    pub fn remove_object(&self, hash: &str) -> Result<u64> {
        let p = self.object_path(hash);
        let size = fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        fs::remove_file(p)?;
        Ok(size)
    }

    pub fn remove_action(&self, key: &str) -> Result<()> {
        Ok(fs::remove_file(self.action_path(key))?)
    }

    /// Removes leftover temp files (from killed processes).
    pub fn clean_tmp(&self) -> Result<usize> {
        let mut n = 0;
        for e in fs::read_dir(self.tmp())? {
            let p = e?.path();
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
    fn put_get_and_corruption_detection() {
        let dir = std::env::temp_dir().join(format!("pipe-store-test-{}", unique_suffix()));
        let s = Store::open(&dir).unwrap();
        let h = s.put(b"hello").unwrap();
        assert_eq!(h, hash_bytes(b"hello"));
        assert_eq!(s.get(&h).unwrap(), b"hello");
        assert_eq!(s.put(b"hello").unwrap(), h);
        fs::write(s.object_path(&h), b"hellO").unwrap();
        let err = s.get(&h).unwrap_err().to_string();
        assert!(err.contains("corrupted"), "{err}");
        let (n, bad) = s.verify().unwrap();
        assert_eq!((n, bad), (1, vec![h.clone()]));
        assert!(!s.has(&h));
        fs::remove_dir_all(dir).unwrap();
    }
}
