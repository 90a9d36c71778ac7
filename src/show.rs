//! `pipe show`: runs, one run's DAG, or an artifact's lineage. Also the store-wide commands that
//! read run records: `forget`, `gc`, `verify` and `push`.

use crate::exec::{RunSummary, StageResult};
use crate::manifest::Manifest;
use crate::run::{RunEvent, RunRecord, RunStatus, StageStatus, list_run_ids};
use crate::store::{Hash, RecordKind, Repair, Store};
use anyhow::{Result, bail};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// One run's DAG as recorded: each stage's latest event.
pub fn run_summary(store: &Store, id: &str) -> Result<RunSummary> {
    let rec = RunRecord::load(store, id)?;
    if let Some(why) = &rec.damage {
        bail!(
            "run {} is damaged: {why}.\n  help: `pipe verify` sets it aside; `pipe forget {}` deletes it",
            rec.id,
            rec.id
        );
    }
    let manifest: Manifest = serde_json::from_value(rec.plan.clone())
        .map_err(|e| anyhow::anyhow!("run {}: its plan.json is not a plan: {e}", rec.id))?;
    let mut by_stage: BTreeMap<String, StageResult> = BTreeMap::new();
    for s in &manifest.stages {
        by_stage.insert(
            s.name.clone(),
            StageResult {
                name: s.name.clone(),
                kind: s.kind.name().into(),
                status: StageStatus::Pending,
                key: None,
                outputs: BTreeMap::new(),
                metrics: Value::Null,
                error: None,
                reasons: vec![],
                job_id: None,
                job_log: None,
            },
        );
    }
    for e in &rec.events {
        match e {
            RunEvent::RunStarted { .. } => {
                // A resume starts over: stages are re-evaluated (most come back cached).
            }
            RunEvent::StageSubmitted {
                stage, job_id, log, ..
            } => {
                if let Some(r) = by_stage.get_mut(stage) {
                    r.status = StageStatus::Pending;
                    r.job_id = Some(job_id.clone());
                    r.job_log = Some(log.clone());
                    r.error = None;
                }
            }
            RunEvent::StageStarted { stage, key, .. } => {
                if let Some(r) = by_stage.get_mut(stage) {
                    r.status = StageStatus::Running;
                    r.key = Some(key.clone());
                    r.error = None;
                }
            }
            RunEvent::StageFinished {
                stage,
                key,
                status,
                outputs,
                metrics,
                ..
            } => {
                if let Some(r) = by_stage.get_mut(stage) {
                    r.status = *status;
                    r.key = Some(key.clone());
                    r.outputs = outputs.clone();
                    r.metrics = metrics.clone();
                    r.error = None;
                }
            }
            RunEvent::StageFailed {
                stage, key, error, ..
            } => {
                if let Some(r) = by_stage.get_mut(stage) {
                    r.status = StageStatus::Failed;
                    r.key = key.clone();
                    r.error = Some(error.clone());
                }
            }
            RunEvent::StageSkipped { stage, reason, .. } => {
                if let Some(r) = by_stage.get_mut(stage) {
                    r.status = StageStatus::Skipped;
                    r.error = Some(reason.clone());
                }
            }
            RunEvent::Checkpoint {
                stage, iter, hash, ..
            } => {
                if let Some(r) = by_stage.get_mut(stage) {
                    r.metrics = json!({ "last_checkpoint_iter": iter, "last_checkpoint": hash });
                }
            }
            RunEvent::Eval { .. } | RunEvent::RunFinished { .. } => {}
        }
    }
    // A stage still "running" in a run nobody runs any more was interrupted.
    if rec.status == RunStatus::Interrupted {
        for r in by_stage.values_mut() {
            if r.status == StageStatus::Running {
                r.status = StageStatus::Interrupted;
            }
        }
    }
    let stages = manifest
        .stages
        .iter()
        .map(|s| by_stage.remove(&s.name).expect("present"))
        .collect();
    Ok(RunSummary {
        run_id: rec.id,
        name: manifest.name,
        manifest: manifest.path.display().to_string(),
        status: rec.status,
        stages,
    })
}

pub fn runs_json(store: &Store) -> Result<Value> {
    let mut runs = Vec::new();
    for id in list_run_ids(store)? {
        let rec = RunRecord::load(store, &id)?;
        let started = rec.started().map(str::to_string);
        let duration = rec.active_seconds();
        let mut run = json!({
            "run_id": rec.id,
            "name": rec.plan.get("name"),
            "manifest": rec.plan.get("path"),
            "status": rec.status,
            "started": started,
            "duration_seconds": duration,
        });
        if let Some(why) = &rec.damage {
            run["error"] = json!(why);
        }
        runs.push(run);
    }
    let sweeps: Vec<Value> = crate::sweep::SweepRecord::list(store)?
        .iter()
        .map(|s| sweep_json(store, s))
        .collect();
    Ok(json!({ "runs": runs, "sweeps": sweeps }))
}

/// A sweep as `show` lists it: its id, name, status, and each variant's run, status and
/// overrides.
pub fn sweep_json(store: &Store, s: &crate::sweep::SweepRecord) -> Value {
    let statuses = s.run_statuses(store);
    let runs: Vec<Value> = s
        .variants
        .iter()
        .zip(&statuses)
        .map(|(v, st)| json!({ "run_id": v.run_id, "status": st, "overrides": v.overrides }))
        .collect();
    json!({
        "sweep_id": s.sweep_id,
        "name": s.name,
        "manifest": s.manifest,
        "created": s.created,
        "status": crate::sweep::status_of(&statuses),
        "runs": runs,
    })
}

/// One sweep's table: each variant's run, status and overrides.
pub fn print_sweep(v: &Value) {
    let runs = v["runs"].as_array().cloned().unwrap_or_default();
    println!(
        "sweep {} ({}: {} variants): {}",
        v["sweep_id"].as_str().unwrap_or(""),
        v["name"].as_str().unwrap_or(""),
        runs.len(),
        v["status"].as_str().unwrap_or("")
    );
    println!("  {:<22} {:<12} OVERRIDES", "RUN", "STATUS");
    for r in runs {
        let overrides: Vec<&str> = r["overrides"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        println!(
            "  {:<22} {:<12} {}",
            r["run_id"].as_str().unwrap_or(""),
            r["status"].as_str().unwrap_or(""),
            overrides.join(" ")
        );
    }
}

pub fn print_runs(v: &Value) {
    let runs = v["runs"].as_array().cloned().unwrap_or_default();
    if runs.is_empty() {
        println!("no runs yet (start one with `pipe run pipelines/<manifest>.yaml`)");
        return;
    }
    println!(
        "{:<22} {:<28} {:<12} {:<21} {:>9}",
        "RUN", "NAME", "STATUS", "STARTED", "DURATION"
    );
    for r in runs {
        let dur = r["duration_seconds"]
            .as_u64()
            .map(fmt_duration)
            .unwrap_or_default();
        println!(
            "{:<22} {:<28} {:<12} {:<21} {:>9}",
            r["run_id"].as_str().unwrap_or(""),
            r["name"].as_str().unwrap_or(""),
            r["status"].as_str().unwrap_or(""),
            r["started"].as_str().unwrap_or(""),
            dur
        );
    }
    let sweeps = v["sweeps"].as_array().cloned().unwrap_or_default();
    if !sweeps.is_empty() {
        println!(
            "\n{:<32} {:<28} {:<12} {:>8}",
            "SWEEP", "NAME", "STATUS", "VARIANTS"
        );
        for s in sweeps {
            println!(
                "{:<32} {:<28} {:<12} {:>8}",
                s["sweep_id"].as_str().unwrap_or(""),
                s["name"].as_str().unwrap_or(""),
                s["status"].as_str().unwrap_or(""),
                s["runs"].as_array().map_or(0, |r| r.len())
            );
        }
    }
}

pub fn fmt_duration(s: u64) -> String {
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

pub fn print_summary(s: &RunSummary) {
    println!(
        "run {}  {}  ({})  {}",
        s.run_id,
        s.name,
        s.manifest,
        s.status.as_str().to_uppercase()
    );
    for st in &s.stages {
        let key = st.key.as_ref().map(|k| k.short()).unwrap_or("-");
        println!(
            "  {:<14} {:<9} {:<12} key {}",
            st.name, st.kind, st.status, key
        );
        for (name, h) in &st.outputs {
            println!("      {name:<18} {}", h.short());
        }
        if let Some(m) = st.metrics.as_object() {
            let shown: Vec<String> = m
                .iter()
                .filter_map(|(k, v)| match v {
                    Value::Number(_) => Some(format!("{k}={}", fmt_num(v))),
                    Value::String(s) if k == "device" || k == "cpu_isa" => Some(format!("{k}={s}")),
                    _ => None,
                })
                .collect();
            if !shown.is_empty() {
                println!("      metrics: {}", shown.join(", "));
            }
        }
        if let Some(job) = &st.job_id {
            let log = st.job_log.as_deref().unwrap_or("-");
            println!("      slurm job {job}, log {log}");
        }
        if let Some(e) = &st.error {
            println!("      error: {}", e.lines().next().unwrap_or(""));
        }
        for r in &st.reasons {
            println!("      because: {r}");
        }
    }
}

fn fmt_num(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if v.is_f64() => format!("{f:.4}"),
        _ => v.to_string(),
    }
}

/// The stages and inputs that produced `hash`, recursively.
pub fn lineage(store: &Store, hash: &Hash) -> Result<Value> {
    let actions = store.actions()?;
    fn producer(actions: &[crate::store::ActionRecord], hash: &Hash, depth: usize) -> Value {
        let Some(rec) = actions
            .iter()
            .find(|a| a.outputs.values().any(|h| h == hash) && a.kind != RecordKind::Download)
        else {
            return json!({ "artifact": hash, "produced_by": null });
        };
        let output = rec
            .outputs
            .iter()
            .find(|(_, h)| *h == hash)
            .map(|(n, _)| n.clone());
        let mut inputs = Vec::new();
        if let Some(ins) = rec
            .key_material
            .get("inputs")
            .and_then(Value::as_object)
            .filter(|_| depth < 32)
        {
            for (role, outs) in ins {
                let outs = outs.as_object().cloned().unwrap_or_default();
                let first = outs.values().next().and_then(Value::as_str);
                let up = match first.map(Hash::parse) {
                    Some(Ok(h)) => producer(actions, &h, depth + 1),
                    _ => json!({ "produced_by": null }),
                };
                inputs.push(
                    json!({ "role": role, "outputs": outs, "produced_by": up["produced_by"] }),
                );
            }
        }
        json!({
            "artifact": hash,
            "produced_by": {
                "stage": rec.stage, "kind": rec.kind, "key": rec.key, "output": output,
                "params": rec.key_material.get("params"), "sources": rec.key_material.get("sources"),
                "created": rec.created, "inputs": inputs,
            }
        })
    }
    if !store.has(hash) {
        bail!("no object {hash} in the store");
    }
    Ok(producer(&actions, hash, 0))
}

/// Prints a lineage tree; a stage that several consumers share is printed once, and referred
/// back to after that.
pub fn print_lineage(v: &Value) {
    println!("{}", v["artifact"].as_str().unwrap_or(""));
    print_producer(&v["produced_by"], 0, &mut BTreeSet::new());
}

fn print_producer(p: &Value, indent: usize, seen: &mut BTreeSet<String>) {
    let pad = " ".repeat(indent);
    if p.is_null() {
        println!(
            "{pad}  (not produced by a recorded stage: a source, checkpoint or removed record)"
        );
        return;
    }
    let key = p["key"].as_str().unwrap_or("");
    let first_time = seen.insert(key.to_string());
    println!(
        "{pad}  <- {} `{}` (output {}), key {}, {}{}",
        p["kind"].as_str().unwrap_or(""),
        p["stage"].as_str().unwrap_or(""),
        p["output"].as_str().unwrap_or("?"),
        &key[..12.min(key.len())],
        p["created"].as_str().unwrap_or(""),
        if first_time { "" } else { " (shown above)" }
    );
    if !first_time {
        return;
    }
    if let Some(params) = p["params"].as_object() {
        let s: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("{pad}     params: {}", s.join(" "));
    }
    if !p["sources"].is_null() {
        println!("{pad}     sources: {}", p["sources"]);
    }
    for inp in p["inputs"].as_array().cloned().unwrap_or_default() {
        println!("{pad}     input {}:", inp["role"].as_str().unwrap_or(""));
        print_producer(&inp["produced_by"], indent + 6, seen);
    }
}

/// Deletes a run's record (refusing while it runs).
pub fn forget(store: &Store, id: &str) -> Result<String> {
    let rec = RunRecord::load(store, id)?;
    if rec.status == RunStatus::Running {
        bail!("run {} is running; stop it first", rec.id);
    }
    let dir = store.root.join("runs").join(&rec.id);
    std::fs::remove_dir_all(&dir)
        .map_err(|e| anyhow::anyhow!("removing {}: {e}", dir.display()))?;
    Ok(rec.id)
}

/// `pipe verify`: the store's objects and records (`Store::verify`), then the run records. A run
/// whose plan cannot be read is reported, and set aside into `damaged/` when its log names nothing
/// (a run that made outputs stays, so gc keeps them, until `pipe forget`). Log lines torn by a
/// kill are normal and ignored when reading.
pub fn verify(store: &Store, repair: Repair) -> Result<crate::store::VerifyReport> {
    let mut report = store.verify(repair)?;
    for id in list_run_ids(store)? {
        let rec = RunRecord::load(store, &id)?;
        if let Some(why) = rec.damage {
            let dir = store.root.join("runs").join(&id);
            if repair == Repair::ReportOnly {
                report
                    .damaged
                    .push(format!("run {id}: {why}; left in place (read-only store)"));
            } else if rec.events.is_empty() {
                let dest = store.root.join("damaged").join(format!("run-{id}"));
                std::fs::create_dir_all(store.root.join("damaged"))?;
                std::fs::rename(&dir, &dest).map_err(|e| {
                    anyhow::anyhow!("moving {} to {}: {e}", dir.display(), dest.display())
                })?;
                report
                    .damaged
                    .push(format!("run {id}: {why}; set aside as {}", dest.display()));
            } else {
                // Its log still names outputs that gc must keep: report it, leave it for `forget`.
                report.damaged.push(format!(
                    "run {id}: {why}; it cannot be shown or resumed (`pipe forget {id}` deletes it)"
                ));
            }
        }
    }
    Ok(report)
}

/// What `gc` removed (or, with `--dry-run`, would remove) and kept.
pub struct GcReport {
    pub removed: usize,
    pub bytes: u64,
    pub kept: usize,
    pub actions_removed: usize,
    /// A dry run made while a run was live: that run's newest objects may show as removable
    /// until it records them.
    pub during_a_run: bool,
}

/// `pipe gc`. It needs the store to itself; a dry run, which changes nothing, also looks while
/// runs are live (under the shared lock they hold too).
pub fn gc(store: &Store, dry_run: bool, keep_checkpoints: bool) -> Result<GcReport> {
    let (_lock, during_a_run) = match store.try_lock_store_exclusive()? {
        Some(lock) => (lock, false),
        None if dry_run => (store.lock_store_shared()?, true),
        None => bail!(
            "a pipe run is using the store {}; run gc when it has finished (`pipe gc --dry-run` shows what it would remove)",
            store.root.display()
        ),
    };
    let keep = crate::refs::References::gather(store)?.kept_by_gc(keep_checkpoints);
    let mut report = GcReport {
        removed: 0,
        bytes: 0,
        kept: 0,
        actions_removed: 0,
        during_a_run,
    };
    for h in store.all_objects()? {
        if keep.contains(&h) {
            report.kept += 1;
        } else {
            report.removed += 1;
            report.bytes += std::fs::metadata(store.object_path(&h))
                .map(|m| m.len())
                .unwrap_or(0);
            if !dry_run {
                store.remove_object(&h)?;
            }
        }
    }
    for a in store.actions()? {
        if !a.outputs.values().all(|h| keep.contains(h)) {
            if !dry_run {
                store.remove_action(&a.key)?;
            }
            report.actions_removed += 1;
        }
    }
    if !dry_run {
        store.clean_tmp()?;
    }
    Ok(report)
}

/// `pipe push [RUN]`: uploads every finished stage of a run (default: the latest) to `remote`,
/// outputs first and each record last.
pub fn push(store: &Store, remote: &crate::store::remote::Remote, id: Option<&str>) -> Result<()> {
    use anyhow::Context;
    let id = match id {
        Some(id) => id.to_string(),
        None => list_run_ids(store)?
            .pop()
            .with_context(|| format!("no runs in {} to push", store.root.display()))?,
    };
    let summary = run_summary(store, &id)?;
    let mut pushed = 0;
    for st in &summary.stages {
        let Some(rec) = st
            .key
            .as_ref()
            .map(|k| store.action(k))
            .transpose()?
            .flatten()
        else {
            println!("{}: not finished in run {id}; nothing to push", st.name);
            continue;
        };
        let p = remote.push(store, &rec)?;
        println!(
            "{}: pushed to {} ({})",
            st.name,
            remote.url(),
            crate::exec::pushed_summary(&p)
        );
        pushed += 1;
    }
    println!(
        "run {}: {pushed} stage(s) in {}",
        summary.run_id,
        remote.url()
    );
    Ok(())
}
