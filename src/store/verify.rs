//! `Store::verify`: the whole store checked, and repaired where it can be.

use super::{ActionRecord, Hash, Key, Progress, Store};
use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::fs;

/// Whether `verify` repairs what it finds, or only reports it (a read-only store).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repair {
    Yes,
    ReportOnly,
}

impl Store {
    /// Checks the whole store and repairs what it can:
    /// - every object is re-hashed; corrupted ones are moved aside into `tmp/` (gc removes them);
    /// - every action record must parse, be a true record of the key its file is named by
    ///   (`ActionRecord::problem`: its outputs are the ones its kind declares), name outputs that
    ///   are present and intact, and have been built from inputs that are intact; a record that
    ///   fails is set aside into `damaged/` (a record built from the intact outputs of one set aside
    ///   stays: a rerun makes the same bytes, so the same key);
    /// - every progress record must parse, and keeps only the checkpoints before the first missing
    ///   or corrupted one (training resumes from the last good one).
    ///
    /// With [`Repair::ReportOnly`] nothing is moved or rewritten, only reported.
    ///
    /// Run records are checked by `maintain::verify`, which calls this.
    pub fn verify(&self, repair: Repair) -> Result<VerifyReport> {
        let fix = repair == Repair::Yes;
        let all = self.all_objects()?;
        let mut report = VerifyReport {
            objects: all.len(),
            ..Default::default()
        };
        for h in &all {
            let path = self.object_path(h);
            if Store::hash_file(&path).is_ok_and(|actual| actual == *h) {
                continue;
            }
            report.corrupted.push(h.clone());
            if fix {
                let aside = self.tmp().join(format!("corrupted-{h}"));
                fs::rename(&path, &aside)
                    .with_context(|| format!("moving the corrupted {} aside", path.display()))?;
            }
        }
        // Action records: one that does not parse or is not a true record of its key, or whose
        // outputs or inputs are corrupted (or outputs missing). A record built from the intact
        // outputs of a record set aside stays: its inputs are the same bytes a rerun makes again.
        let bad: BTreeSet<Hash> = report.corrupted.iter().cloned().collect();
        for path in self.json_files("actions")? {
            let parsed = super::read_bounded(&path, super::MAX_RECORD_BYTES)
                .ok()
                .and_then(|b| serde_json::from_slice::<ActionRecord>(&b).ok());
            let why = match &parsed {
                None => Some("not a valid action record".to_string()),
                Some(rec) => self.record_problem(&path, rec, &bad),
            };
            if let Some(why) = why {
                let done = self.set_aside_if(fix, &path, &why, "the stage will rerun");
                report
                    .damaged
                    .push(format!("action record {}: {why}; {done}", path.display()));
            }
        }
        for key in self.progress_keys()? {
            let path = self.progress_path(&key);
            let Ok(bytes) = super::read_bounded(&path, super::MAX_PROGRESS_BYTES) else {
                continue;
            };
            let Ok(mut p) = serde_json::from_slice::<Progress>(&bytes) else {
                let why = "not a valid progress record";
                let done = self.set_aside_if(fix, &path, why, "training restarts");
                report
                    .damaged
                    .push(format!("progress record {}: {why}; {done}", path.display()));
                continue;
            };
            let good = p
                .checkpoints
                .iter()
                .position(|c| bad.contains(&c.hash) || !self.has(&c.hash))
                .unwrap_or(p.checkpoints.len());
            if good < p.checkpoints.len() {
                let lost = p.checkpoints[good].iter;
                p.checkpoints.truncate(good);
                let last = p.checkpoints.last().map_or(0, |c| c.iter);
                p.keep_until(p.checkpoints.last().map(|c| c.iter));
                if fix {
                    self.put_progress(&key, &p)?;
                }
                report.damaged.push(format!(
                    "progress record {}: the checkpoint at iter {lost} is missing or corrupted; training {} from {}",
                    path.display(),
                    if fix { "resumes" } else { "would resume" },
                    if p.checkpoints.is_empty() { "the start".to_string() } else { format!("iter {last}") }
                ));
            }
        }
        Ok(report)
    }

    /// Sets `path` aside when repairing; says what was done (`then`: what follows from it).
    fn set_aside_if(&self, fix: bool, path: &std::path::Path, why: &str, then: &str) -> String {
        if fix {
            self.set_aside(path, why);
            format!("set aside ({then})")
        } else {
            "left in place (read-only store)".to_string()
        }
    }

    /// Why an action record cannot be trusted, if it cannot.
    fn record_problem(
        &self,
        path: &std::path::Path,
        rec: &ActionRecord,
        bad: &BTreeSet<Hash>,
    ) -> Option<String> {
        let named = path.file_stem().map(|s| s.to_string_lossy().to_string());
        let Some(key) = named.as_deref().and_then(|n| Key::parse(n).ok()) else {
            return Some("its file is not named by a stage key".into());
        };
        if let Some(why) = rec.problem(&key) {
            return Some(format!("not a true record of its key: {why}"));
        }
        for (name, h) in &rec.outputs {
            if bad.contains(h) {
                return Some(format!("its output `{name}` ({}) is corrupted", h.short()));
            }
            if !self.has(h) {
                return Some(format!("its output `{name}` ({}) is missing", h.short()));
            }
        }
        let inputs = rec.key_material.get("inputs").and_then(|v| v.as_object());
        for (role, outs) in inputs.into_iter().flatten() {
            for (name, h) in outs.as_object().into_iter().flatten() {
                if let Some(h) = h.as_str().and_then(|h| Hash::parse(h).ok())
                    && bad.contains(&h)
                {
                    return Some(format!(
                        "it was built from input {role}/{name} ({}), which is corrupted",
                        h.short()
                    ));
                }
            }
        }
        None
    }
}

/// What `Store::verify` found and did.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub objects: usize,
    /// Objects whose content no longer matches their hash (moved aside).
    pub corrupted: Vec<Hash>,
    /// One line per damaged record, saying what was wrong and what was done.
    pub damaged: Vec<String>,
}
