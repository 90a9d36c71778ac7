//! Sweep records: `sweeps/<id>/sweep.json` in the store names a sweep's variants, each an
//! ordinary run (`runs/<run-id>/`, whose `run_started` names the sweep and the variant's
//! overrides). Every variant's run is created, with its plan, before the first one starts, and
//! the record is written once, atomically, after them: so a sweep killed at any moment is either
//! absent (nothing ran) or names every variant, and `pipe resume SWEEP` finishes each one as
//! `pipe resume RUN` would. A sweep's status is read from its runs.

use crate::run::{RunRecord, RunStatus};
use crate::store::{Store, write_atomic};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SweepRecord {
    pub sweep_id: String,
    /// The manifest's name, and its file.
    pub name: String,
    pub manifest: String,
    pub created: String,
    /// The command line's `--set`, applied to every variant (before its own overrides).
    pub set: Vec<String>,
    pub variants: Vec<Variant>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Variant {
    pub run_id: String,
    /// `stage.key=value`, as `--set` takes them.
    pub overrides: Vec<String>,
}

fn dir(store: &Store, id: &str) -> PathBuf {
    store.root.join("sweeps").join(id)
}

impl SweepRecord {
    /// Writes the record (once, atomically).
    pub fn save(&self, store: &Store) -> Result<()> {
        let d = dir(store, &self.sweep_id);
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        write_atomic(
            &store.root.join("tmp"),
            &d.join("sweep.json"),
            &serde_json::to_vec_pretty(self)?,
        )
    }

    /// The sweep `id`, if there is one (a run id is not a sweep).
    pub fn find(store: &Store, id: &str) -> Result<Option<SweepRecord>> {
        if !crate::manifest::valid_name(id) {
            return Ok(None);
        }
        let path = dir(store, id).join("sweep.json");
        match crate::store::read_bounded(&path, 64 << 20) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("sweep {id}: {} is damaged", path.display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Every sweep in the store, oldest first (ids sort by time); damaged records are skipped
    /// with a warning.
    pub fn list(store: &Store) -> Result<Vec<SweepRecord>> {
        let Ok(rd) = std::fs::read_dir(store.root.join("sweeps")) else {
            return Ok(Vec::new());
        };
        let mut ids: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        ids.sort();
        let mut out = Vec::new();
        for id in ids {
            match SweepRecord::find(store, &id) {
                Ok(Some(s)) => out.push(s),
                Ok(None) => {}
                Err(e) => tracing::warn!("{e:#}"),
            }
        }
        Ok(out)
    }

    /// Each variant's run status, in order (a run whose record is gone reads as damaged).
    pub fn run_statuses(&self, store: &Store) -> Vec<RunStatus> {
        self.variants
            .iter()
            .map(|v| {
                RunRecord::load(store, &v.run_id)
                    .map(|r| r.status)
                    .unwrap_or(RunStatus::Damaged)
            })
            .collect()
    }
}

/// `running` while any variant runs; else `succeeded` when all did, `failed` when one
/// failed (or is damaged), `interrupted` otherwise.
pub fn status_of(runs: &[RunStatus]) -> RunStatus {
    if runs.contains(&RunStatus::Running) {
        RunStatus::Running
    } else if runs.iter().all(|s| *s == RunStatus::Succeeded) {
        RunStatus::Succeeded
    } else if runs
        .iter()
        .any(|s| matches!(s, RunStatus::Failed | RunStatus::Damaged))
    {
        RunStatus::Failed
    } else {
        RunStatus::Interrupted
    }
}

/// A new sweep id: `sweep-` and a run id's form.
pub fn new_sweep_id() -> String {
    format!("sweep-{}", crate::run::new_run_id())
}
