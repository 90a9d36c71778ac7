//! One run's DAG as its log records it (`pipe show RUN`): each stage's latest status, key,
//! outputs and metrics.

use crate::exec::{RunSummary, StageResult};
use crate::manifest::Manifest;
use crate::run::{RunEvent, RunRecord, RunStatus, StageStatus};
use crate::store::Store;
use anyhow::{Result, bail};
use serde_json::{Value, json};
use std::collections::BTreeMap;

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
                kind: s.kind,
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

/// A run's table: a line per stage, then its outputs, metrics, job and error.
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
