//! What refers to the store's objects: the one definition that `pipe gc` (what it keeps) and
//! train's retention (which superseded checkpoints it may delete) both read. [`References::gather`]
//! walks every place a reference can be; [`References::kept_by_gc`] and
//! [`References::outside_of`] are the two questions asked of it.
//!
//! Run logs are read straight from disk (no lock probing: retention asks while runs are live), a
//! torn last line is ignored, and a run whose plan is damaged still counts: its log says what it
//! made.

use crate::run::{RunEvent, RunStatus, finished_status, logged_events, read_plan};
use crate::store::{Hash, Key, RecordKind, Store};
use anyhow::Result;
use std::collections::{BTreeMap, BTreeSet};

/// A checkpoint a run logged.
struct LoggedCheckpoint {
    hash: Hash,
    /// The key of the stage that logged it: that of the last `stage_started` of its stage in the
    /// same log (none when it cannot be attributed).
    key: Option<Key>,
    /// Whether its run has succeeded (so it will not be resumed).
    run_succeeded: bool,
}

/// Every reference to the store's objects, by where it is.
pub struct References {
    /// Outputs of finished stages, in every run's log.
    finished_outputs: BTreeSet<Hash>,
    logged_checkpoints: Vec<LoggedCheckpoint>,
    pins: BTreeSet<Hash>,
    /// The checkpoints of each unfinished train stage's progress record.
    progress: Vec<(Key, Vec<Hash>)>,
    /// Each action record's outputs (stage results and downloads).
    actions: Vec<(RecordKind, Vec<Hash>)>,
}

impl References {
    pub fn gather(store: &Store) -> Result<References> {
        let mut refs = References {
            finished_outputs: BTreeSet::new(),
            logged_checkpoints: Vec::new(),
            pins: store.pins()?.into_iter().collect(),
            progress: Vec::new(),
            actions: Vec::new(),
        };
        if let Ok(rd) = std::fs::read_dir(store.root.join("runs")) {
            for dir in rd.filter_map(|e| e.ok()).map(|e| e.path()) {
                let events = logged_events(&dir);
                // As `RunRecord::load` reads it: a run whose plan cannot be read is damaged, never
                // succeeded, so its checkpoints stay.
                let run_succeeded = finished_status(&events) == Some(RunStatus::Succeeded)
                    && read_plan(&dir).is_ok();
                let mut key_of: BTreeMap<String, Key> = BTreeMap::new();
                for e in events {
                    match e {
                        RunEvent::StageStarted { stage, key, .. } => {
                            key_of.insert(stage, key);
                        }
                        RunEvent::StageFinished { outputs, .. } => {
                            refs.finished_outputs.extend(outputs.into_values())
                        }
                        RunEvent::Checkpoint { stage, hash, .. } => {
                            refs.logged_checkpoints.push(LoggedCheckpoint {
                                hash,
                                key: key_of.get(&stage).cloned(),
                                run_succeeded,
                            })
                        }
                        _ => {}
                    }
                }
            }
        }
        for k in store.progress_keys()? {
            let hashes = store.progress(&k)?.checkpoints.into_iter().map(|c| c.hash);
            refs.progress.push((k, hashes.collect()));
        }
        for a in store.actions()? {
            refs.actions
                .push((a.kind, a.outputs.into_values().collect()));
        }
        Ok(refs)
    }

    /// What gc keeps: outputs of finished stages in any run, checkpoints logged by runs (all of
    /// them with `keep_checkpoints`, else only those of runs that may still be resumed),
    /// checkpoints of unfinished stages, pinned objects, and downloaded sources. A stage result
    /// no run names is not kept (gc then removes its record too).
    pub fn kept_by_gc(&self, keep_checkpoints: bool) -> BTreeSet<Hash> {
        let mut keep = self.finished_outputs.clone();
        keep.extend(
            self.logged_checkpoints
                .iter()
                .filter(|c| keep_checkpoints || !c.run_succeeded)
                .map(|c| c.hash.clone()),
        );
        keep.extend(self.pins.iter().cloned());
        keep.extend(self.progress.iter().flat_map(|(_, h)| h.iter().cloned()));
        keep.extend(
            self.actions
                .iter()
                .filter(|(kind, _)| *kind == RecordKind::Download)
                .flat_map(|(_, h)| h.iter().cloned()),
        );
        keep
    }

    /// Everything referenced apart from the history of the train stage with key `key`: its
    /// retention deletes a superseded checkpoint only when it is not in here. That is: outputs of
    /// finished stages, checkpoints that runs logged for any other stage key (one that cannot be
    /// attributed counts as another's), the outputs of every action record, the checkpoints of
    /// every other progress record, and pins.
    pub fn outside_of(&self, key: &Key) -> BTreeSet<Hash> {
        let mut refs = self.finished_outputs.clone();
        refs.extend(
            self.logged_checkpoints
                .iter()
                .filter(|c| c.key.as_ref() != Some(key))
                .map(|c| c.hash.clone()),
        );
        refs.extend(self.pins.iter().cloned());
        refs.extend(
            self.progress
                .iter()
                .filter(|(k, _)| k != key)
                .flat_map(|(_, h)| h.iter().cloned()),
        );
        refs.extend(self.actions.iter().flat_map(|(_, h)| h.iter().cloned()));
        refs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::StageKind;
    use crate::run::StageStatus;
    use crate::store::{ActionRecord, Progress, SavedCheckpoint};
    use serde_json::Value;

    #[test]
    fn retention_and_gc_read_the_same_references() {
        let dir = std::env::temp_dir().join(format!(
            "pipe-refs-{}-{}",
            std::process::id(),
            crate::store::temp_name("t")
        ));
        let store = Store::open(&dir).unwrap();
        let t = || "2026-01-01T00:00:00Z".to_string();
        // Names for the test's objects and keys.
        let h = |s: &str| Hash::of(s.as_bytes());
        let k = |s: &str| Key::from(blake3::hash(s.as_bytes()));
        let started = |stage: &str, key: &str| RunEvent::StageStarted {
            time: t(),
            stage: stage.into(),
            kind: StageKind::Train,
            key: k(key),
        };
        let ckpt = |stage: &str, hash: &str| RunEvent::Checkpoint {
            time: t(),
            stage: stage.into(),
            iter: 1,
            hash: h(hash),
            keep: true,
        };
        let write_log = |id: &str, events: &[RunEvent]| {
            let d = store.root.join("runs").join(id);
            std::fs::create_dir_all(&d).unwrap();
            let text: String = events
                .iter()
                .map(|e| serde_json::to_string(e).unwrap() + "\n")
                .collect();
            std::fs::write(d.join("log.jsonl"), text).unwrap();
        };
        write_log(
            "a",
            &[
                started("train", "K"),
                ckpt("train", "own-logged"),
                started("other", "K2"),
                ckpt("other", "other-key-logged"),
                ckpt("never-started", "unattributed"),
            ],
        );
        write_log(
            "b",
            &[
                // The same stage name under another key in another run.
                started("train", "K3"),
                ckpt("train", "same-name-other-key"),
                RunEvent::StageFinished {
                    time: t(),
                    stage: "train".into(),
                    kind: StageKind::Train,
                    key: k("K3"),
                    status: StageStatus::Executed,
                    outputs: crate::store::outputs([("ckpt", h("finished-output"))]),
                    metrics: Value::Null,
                    seconds: 1.0,
                },
            ],
        );
        let progress = |hash: &str| Progress {
            checkpoints: vec![SavedCheckpoint {
                iter: 1,
                hash: h(hash),
                keep: true,
            }],
            evals: vec![],
            steps: vec![],
        };
        store
            .put_progress(&k("K"), &progress("own-progress"))
            .unwrap();
        store
            .put_progress(&k("K4"), &progress("other-progress"))
            .unwrap();
        store
            .put_action(&ActionRecord {
                key: k("K5"),
                stage: "init".into(),
                kind: crate::store::RecordKind::Stage(crate::manifest::StageKind::Init),
                key_material: Value::Null,
                outputs: crate::store::outputs([("ckpt", h("action-output"))]),
                metrics: Value::Null,
                created: t(),
            })
            .unwrap();
        store
            .put_action(&ActionRecord {
                key: k("K6"),
                stage: "data".into(),
                kind: RecordKind::Download,
                key_material: Value::Null,
                outputs: crate::store::outputs([("text", h("downloaded"))]),
                metrics: Value::Null,
                created: t(),
            })
            .unwrap();
        // A run that succeeded: its logged checkpoints will not be resumed.
        write_log(
            "c",
            &[
                started("train", "K7"),
                ckpt("train", "succeeded-run-ckpt"),
                RunEvent::RunFinished {
                    time: t(),
                    status: RunStatus::Succeeded,
                },
            ],
        );
        std::fs::write(store.root.join("runs/c/plan.json"), "{}").unwrap();
        // The same, with a plan that cannot be read: a damaged run, whose checkpoints stay.
        write_log(
            "d",
            &[
                started("train", "K8"),
                ckpt("train", "damaged-run-ckpt"),
                RunEvent::RunFinished {
                    time: t(),
                    status: RunStatus::Succeeded,
                },
            ],
        );
        std::fs::write(store.root.join("runs/d/plan.json"), "{\"trunc").unwrap();
        store.set_pin(&h("pinned"), true).unwrap();
        let refs = References::gather(&store).unwrap();
        let set = |names: &[&str]| -> BTreeSet<Hash> { names.iter().map(|s| h(s)).collect() };
        assert_eq!(
            refs.kept_by_gc(false),
            set(&[
                "own-logged",
                "damaged-run-ckpt",
                "other-key-logged",
                "unattributed",
                "same-name-other-key",
                "finished-output",
                "own-progress",
                "other-progress",
                "downloaded",
                "pinned",
            ])
        );
        let mut all = refs.kept_by_gc(false);
        all.insert(h("succeeded-run-ckpt"));
        assert_eq!(refs.kept_by_gc(true), all);
        let refs = refs.outside_of(&k("K"));
        let want: BTreeSet<Hash> = [
            "other-key-logged",
            "unattributed",
            "same-name-other-key",
            "finished-output",
            "other-progress",
            "action-output",
            "downloaded",
            "succeeded-run-ckpt",
            "damaged-run-ckpt",
            "pinned",
        ]
        .iter()
        .map(|s| h(s))
        .collect();
        assert_eq!(refs, want);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
