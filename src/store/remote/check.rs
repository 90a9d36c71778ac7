//! `pipe remote check`: probes a remote (initialised, conditional puts, get, delete) and
//! removes what killed pushes left in a shared folder.

use super::{Remote, STALE_UPLOAD};
use anyhow::{Context, Result, anyhow};
use object_store::ObjectStoreExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

impl Remote {
    /// `pipe remote check`: the marker, then put (create-if-absent), a second put that must be
    /// refused, get, and delete of a probe object; for a shared folder, the removal of staging
    /// files left by pushes killed over a day ago. Each step's outcome, in order; stops at the
    /// first failure.
    pub fn check(&self) -> Vec<(String, Result<()>)> {
        let path = self
            .root
            .clone()
            .join("pipe-check")
            .join(crate::store::temp_name("probe"));
        let body = format!("pipe remote check {}\n", crate::clock::utc_now());
        let mut out = Vec::new();
        let steps: [(&str, u8); 6] = [
            ("initialised (pipe-remote.json, by `pipe remote init`)", 0),
            ("put (create-if-absent)", 1),
            ("second put refused (conditional puts work)", 2),
            ("get (same bytes)", 3),
            ("delete", 4),
            ("no stale partial uploads", 5),
        ];
        for (name, step) in steps {
            let r: Result<()> = match step {
                0 => self.ready(),
                5 => self.remove_stale_uploads(),
                _ => self.runtime.block_on(async {
                    match step {
                        1 => self
                            .put_if_absent(&path, body.clone().into_bytes().into())
                            .await
                            .map_err(|e| self.loud(&format!("writing {path}"), e)),
                        2 => match self
                            .put_if_absent(&path, body.clone().into_bytes().into())
                            .await
                        {
                            Err(object_store::Error::AlreadyExists { .. })
                            | Err(object_store::Error::Precondition { .. }) => Ok(()),
                            Ok(()) => Err(anyhow!(
                                "remote {}: a create-if-absent put replaced an existing object; \
                                 this store does not support conditional puts, so two writers of \
                                 one key could overwrite each other",
                                self.url
                            )),
                            Err(e) => Err(self.loud(&format!("writing {path}"), e)),
                        },
                        3 => {
                            let got = match self.store.get(&path).await {
                                Ok(r) => r.bytes().await,
                                Err(e) => Err(e),
                            }
                            .map_err(|e| self.loud(&format!("reading {path}"), e))?;
                            if got.as_ref() == body.as_bytes() {
                                Ok(())
                            } else {
                                Err(anyhow!(
                                    "remote {}: {path} read back different bytes",
                                    self.url
                                ))
                            }
                        }
                        _ => self
                            .store
                            .delete(&path)
                            .await
                            .map_err(|e| self.loud(&format!("deleting {path}"), e)),
                    }
                }),
            };
            let failed = r.is_err();
            out.push((name.to_string(), r));
            if failed {
                break;
            }
        }
        out
    }

    /// A shared folder's staging files (`name#N`) older than a day: a push killed mid-write left
    /// them. Removed, with a line each. S3 keeps no such files; its unfinished multipart uploads
    /// are aborted by the client on failure, and after a `kill -9` by the bucket's lifecycle rule
    /// (README).
    fn remove_stale_uploads(&self) -> Result<()> {
        let Some(folder) = &self.folder else {
            return Ok(());
        };
        let now = SystemTime::now();
        for sub in ["objects", "actions"] {
            for entry in walk(&folder.join(sub)) {
                let name = entry.file_name().map(|n| n.to_string_lossy().to_string());
                let staged = name.is_some_and(|n| {
                    n.rsplit_once('#').is_some_and(|(_, d)| {
                        !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())
                    })
                });
                let old = std::fs::symlink_metadata(&entry)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > STALE_UPLOAD);
                if staged && old {
                    std::fs::remove_file(&entry)
                        .with_context(|| format!("removing {}", entry.display()))?;
                    println!("  removed a stale partial upload: {}", entry.display());
                }
            }
        }
        Ok(())
    }
}

/// The files under `dir`, two levels deep at most (the store's layout), symlinks not followed.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            if let Ok(inner) = std::fs::read_dir(e.path()) {
                out.extend(
                    inner
                        .flatten()
                        .filter(|f| f.file_type().is_ok_and(|t| t.is_file()))
                        .map(|f| f.path()),
                );
            }
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    out
}
