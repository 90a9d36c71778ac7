//! Executing a plan against the store: for each stage in dependency order, compute its key from
//! its parameters and its inputs' output hashes, reuse the action-cache entry if there is one, or
//! take the key's lock, run the stage, and record its outputs. Stages whose needs are all done run
//! in waves, up to `jobs` at a time. Also `status`: the same walk without running anything.

use crate::key;
use crate::manifest::{StageKind, StageSpec};
use crate::plan::Plan;
use crate::run::{RunEvent, RunLog, RunStatus, StageStatus, utc_now};
use crate::stages::{self, Ctx, Input, Produced};
use crate::store::remote::{Pulled, Remote};
use crate::store::{ActionRecord, Key, Outputs, RecordKind, Store};
use crate::ui::Ui;
use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// One stage's outcome, as `--json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct StageResult {
    pub name: String,
    pub kind: StageKind,
    /// executed | cached | pulled | resumed | failed | skipped (run); pending | running |
    /// interrupted too (`show`); cached | stale | pulled | blocked (status)
    pub status: StageStatus,
    pub key: Option<Key>,
    pub outputs: Outputs,
    pub metrics: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// The Slurm job that ran (or runs) the stage, and its output file (`--executor slurm`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_log: Option<String>,
}

impl StageResult {
    pub fn new(spec: &StageSpec, status: StageStatus) -> Self {
        StageResult {
            name: spec.name.clone(),
            kind: spec.kind,
            status,
            key: None,
            outputs: Outputs::new(),
            metrics: Value::Null,
            error: None,
            reasons: Vec::new(),
            job_id: None,
            job_log: None,
        }
    }
    pub fn done(&self) -> bool {
        self.status.done()
    }
}

/// What `run`, `resume` and `show RUN` print with `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    pub run_id: String,
    pub name: String,
    pub manifest: String,
    pub status: RunStatus,
    pub stages: Vec<StageResult>,
}

/// What `pipe status` says of a whole manifest: `up-to-date` when every stage is cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlanStatus {
    UpToDate,
    Stale,
}

impl PlanStatus {
    pub fn of(stages: &[StageResult]) -> PlanStatus {
        if stages.iter().all(|s| s.status == StageStatus::Cached) {
            PlanStatus::UpToDate
        } else {
            PlanStatus::Stale
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PlanStatus::UpToDate => "up-to-date",
            PlanStatus::Stale => "stale",
        }
    }
}

impl std::fmt::Display for PlanStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

fn role(consumer: StageKind, input: &Input) -> String {
    match (consumer, input.kind) {
        (StageKind::Command, _) => input.stage.clone(),
        (_, StageKind::Prepare) => "data".into(),
        (_, StageKind::Init | StageKind::Train) => "model".into(),
        _ => input.stage.clone(),
    }
}

/// The key material of a stage given its inputs.
pub fn material(store: &Store, plan: &Plan, i: usize, inputs: &[Input]) -> Result<Value> {
    let m = &plan.manifest;
    let spec = &m.stages[i];
    let (params, sources) = plan.key_parts(store, i)?;
    let ins: serde_json::Map<String, Value> = inputs
        .iter()
        .map(|inp| (role(spec.kind, inp), json!(inp.outputs)))
        .collect();
    // Only the engine's numerics depend on the device: init and export run on the CPU everywhere.
    let device = if matches!(
        spec.kind,
        StageKind::Command | StageKind::Prepare | StageKind::Init | StageKind::Export
    ) {
        "any".to_string()
    } else {
        m.defaults.device.key_name()
    };
    Ok(key::material(
        spec.kind.name(),
        &device,
        params,
        sources,
        Value::Object(ins),
    ))
}

/// The inputs of stage `i` when every stage it needs is done (none otherwise).
pub(crate) fn inputs_of(
    plan: &Plan,
    i: usize,
    results: &[Option<StageResult>],
) -> Option<Vec<Input>> {
    plan.deps[i]
        .iter()
        .map(|&j| {
            let r = results[j].as_ref()?;
            r.done().then(|| Input {
                stage: r.name.clone(),
                kind: plan.manifest.stages[j].kind,
                outputs: r.outputs.clone(),
            })
        })
        .collect()
}

/// Where a plan runs: the store, the run's log, the terminal, and an optional remote store.
pub struct Runner<'a> {
    pub store: &'a Store,
    pub run: &'a RunLog,
    pub ui: &'a Ui,
    /// Looked up on a local miss: a stage it has is downloaded (`pulled`) instead of computed.
    pub remote: Option<&'a Remote>,
    /// Upload each finished stage's outputs and record to `remote`.
    pub push: bool,
    /// A sweep's `--fail-fast`: set by the first stage that fails (in any of the sweep's runs);
    /// once set, no stage starts and training stops at its next step (resumable from its last
    /// checkpoint).
    pub cancel: Option<&'a AtomicBool>,
    /// With several data-parallel ranks, this is rank 0's view of them: train stages bring the
    /// others in (`crate::ranks`).
    pub ranks: Option<&'a crate::ranks::Ranks>,
}

impl Runner<'_> {
    pub fn cancelled(&self) -> bool {
        self.cancel.is_some_and(|c| c.load(Ordering::SeqCst))
    }

    /// Stage `spec`'s result for `key`: the store's (`Cached`), else the remote store's,
    /// downloaded and checked ([`pull`], `Pulled`), else none.
    pub fn find_result(
        &self,
        spec: &StageSpec,
        key: &Key,
    ) -> Result<Option<(ActionRecord, StageStatus)>> {
        if let Some(rec) = self.store.action(key)? {
            return Ok(Some((rec, StageStatus::Cached)));
        }
        Ok(pull(self, spec, key)?.map(|rec| (rec, StageStatus::Pulled)))
    }
}

/// Why a stage did not start after `--fail-fast` cancelled the sweep.
const CANCELLED: &str = "cancelled: another stage of the sweep failed (--fail-fast)";

/// Splits a wave of ready stages into the groups that run at once: up to `jobs` stages each, of
/// which at most one runs on the GPU (`on_gpu`), so two models never share one GPU's memory.
fn groups<T>(
    wave: Vec<(usize, T)>,
    jobs: usize,
    on_gpu: impl Fn(usize) -> bool,
) -> Vec<Vec<(usize, T)>> {
    let mut groups: Vec<Vec<(usize, T)>> = Vec::new();
    for (i, item) in wave {
        let fits = groups
            .iter()
            .position(|g| g.len() < jobs && !(on_gpu(i) && g.iter().any(|(j, _)| on_gpu(*j))));
        match fits {
            Some(k) => groups[k].push((i, item)),
            None => groups.push(vec![(i, item)]),
        }
    }
    groups
}

/// Runs the plan; returns each stage's result in manifest order.
pub fn execute(runner: &Runner, plan: &Plan, jobs: usize) -> Result<Vec<StageResult>> {
    let (run, ui) = (runner.run, runner.ui);
    let m = &plan.manifest;
    let n = m.stages.len();
    let mut results: Vec<Option<StageResult>> = vec![None; n];
    while results.iter().any(Option::is_none) {
        // Stages whose needs have all finished (one way or another).
        let ready: Vec<usize> = plan
            .order
            .iter()
            .copied()
            .filter(|&i| results[i].is_none() && plan.deps[i].iter().all(|&j| results[j].is_some()))
            .collect();
        let mut wave = Vec::new();
        for i in ready {
            let spec = &m.stages[i];
            match inputs_of(plan, i, &results) {
                Some(inputs) => wave.push((i, inputs)),
                None => {
                    let mut r = StageResult::new(spec, StageStatus::Skipped);
                    r.error = Some("a stage it needs did not finish".into());
                    run.append(&RunEvent::StageSkipped {
                        time: utc_now(),
                        stage: spec.name.clone(),
                        kind: spec.kind,
                        reason: "a stage it needs did not finish".into(),
                    })?;
                    results[i] = Some(r);
                }
            }
        }
        let on_gpu = |i: usize| m.defaults.device.is_cuda() && m.stages[i].kind.runs_engine();
        for chunk in &groups(wave, jobs.max(1), on_gpu) {
            if runner.cancelled() {
                for (i, _) in chunk {
                    let spec = &m.stages[*i];
                    let mut r = StageResult::new(spec, StageStatus::Skipped);
                    r.error = Some(CANCELLED.into());
                    run.append(&RunEvent::StageSkipped {
                        time: utc_now(),
                        stage: spec.name.clone(),
                        kind: spec.kind,
                        reason: CANCELLED.into(),
                    })?;
                    results[*i] = Some(r);
                }
                continue;
            }
            let done: Vec<(usize, StageResult)> = std::thread::scope(|s| {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|(i, inputs)| {
                        (
                            *i,
                            s.spawn(move || run_stage(runner, plan, *i, inputs.clone())),
                        )
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|(i, h)| (i, h.join().unwrap_or_else(|p| Err(panicked(&*p)))))
                    .map(|(i, r)| {
                        (
                            i,
                            r.unwrap_or_else(|e| {
                                let spec = &m.stages[i];
                                ui.say(&format!("{}: failed: {e:#}", spec.name));
                                // Best effort: the log itself may be what failed.
                                let _ = run.append(&RunEvent::StageFailed {
                                    time: utc_now(),
                                    stage: spec.name.clone(),
                                    kind: spec.kind,
                                    key: None,
                                    error: format!("{e:#}"),
                                });
                                failed(spec, None, &e)
                            }),
                        )
                    })
                    .collect()
            });
            for (i, r) in done {
                if r.status == StageStatus::Failed
                    && let Some(c) = runner.cancel
                {
                    c.store(true, Ordering::SeqCst);
                }
                results[i] = Some(r);
            }
        }
    }
    Ok(results
        .into_iter()
        .map(|r| r.expect("all stages visited"))
        .collect())
}

/// A stage thread's panic as an error that says what the panic said (a bug in pipe).
fn panicked(payload: &(dyn std::any::Any + Send)) -> anyhow::Error {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    anyhow::anyhow!("internal error (a bug in pipe; please report it): the stage panicked: {what}")
}

fn failed(spec: &StageSpec, key: Option<Key>, e: &anyhow::Error) -> StageResult {
    let mut r = StageResult::new(spec, StageStatus::Failed);
    r.key = key;
    r.error = Some(format!("{e:#}"));
    r
}

/// Runs stage `i` (or reuses its result) given its inputs.
pub fn run_stage(
    runner: &Runner,
    plan: &Plan,
    i: usize,
    inputs: Vec<Input>,
) -> Result<StageResult> {
    let (store, run, ui) = (runner.store, runner.run, runner.ui);
    let m = &plan.manifest;
    let spec = &m.stages[i];
    let kind = spec.kind;
    let mat = match material(store, plan, i, &inputs) {
        Ok(x) => x,
        Err(e) => {
            run.append(&RunEvent::StageFailed {
                time: utc_now(),
                stage: spec.name.clone(),
                kind,
                key: None,
                error: format!("{e:#}"),
            })?;
            return Ok(failed(spec, None, &e));
        }
    };
    let key = key::key_of(&mat);
    tracing::debug!(stage = %spec.name, %key, material = %mat, "stage key");
    store.put_last_material(&m.name, &spec.name, &mat)?;
    // A stage found in the store (`cached`) or downloaded from the remote (`pulled`).
    let reuse = |rec: ActionRecord, status: StageStatus| -> Result<StageResult> {
        stages::reused(store, m, &plan.params[i], &rec.outputs, ui)?;
        run.append(&RunEvent::StageFinished {
            time: utc_now(),
            stage: spec.name.clone(),
            kind,
            key: key.clone(),
            status,
            outputs: rec.outputs.clone(),
            metrics: rec.metrics.clone(),
            seconds: 0.0,
        })?;
        ui.say(&format!("{}: {status} ({})", spec.name, key.short()));
        if status == StageStatus::Cached {
            push(runner, spec, &rec)?;
        }
        let mut r = StageResult::new(spec, status);
        r.key = Some(key.clone());
        r.outputs = rec.outputs;
        r.metrics = rec.metrics;
        Ok(r)
    };
    if let Some(rec) = store.action(&key)? {
        tracing::info!(stage = %spec.name, %key, "action cache hit");
        return reuse(rec, StageStatus::Cached);
    }
    tracing::info!(stage = %spec.name, %key, "action cache miss");
    // Another process may be computing the same key: wait for it, then reuse its result.
    let _lock = match store.try_lock_key(&key)? {
        Some(l) => l,
        None => {
            ui.say(&format!(
                "{}: another pipe process is computing this stage; waiting for it",
                spec.name
            ));
            store.lock_key(&key)?
        }
    };
    // Data-parallel training keeps its resume points under the key without its ranks: held too,
    // so training at another number of ranks never writes the same progress record meanwhile.
    let progress_key = key::progress_key(&mat);
    let _progress_lock = if progress_key != key {
        Some(store.lock_key(&progress_key)?)
    } else {
        None
    };
    if let Some((rec, status)) = runner.find_result(spec, &key)? {
        return reuse(rec, status);
    }
    run.append(&RunEvent::StageStarted {
        time: utc_now(),
        stage: spec.name.clone(),
        kind,
        key: key.clone(),
    })?;
    ui.say(&format!(
        "{}: running ({} {})",
        spec.name,
        kind,
        key.short()
    ));
    let ctx = Ctx {
        store,
        cancel: runner.cancel,
        run,
        spec,
        defaults: &m.defaults,
        base_dir: m.base_dir.clone(),
        key: key.clone(),
        progress_key,
        sources: mat["sources"].clone(),
        inputs,
        ui,
        ranks: runner.ranks,
    };
    let t0 = Instant::now();
    // The engine's stages run on a thread of rayon's pool, so that each of their parallel loops
    // (several hundred a training step) starts there rather than being handed over from this
    // thread and waited for: a train stage of config S took 10.4 -> 8.2 s on 1 thread and 6.0 ->
    // 5.0 s on 2. Other stages may block (a command, a download) and keep their own thread, so as
    // not to hold a pool thread that concurrent stages need.
    let engine = matches!(
        spec.kind,
        StageKind::Train | StageKind::Evaluate | StageKind::Sample
    );
    let executed = if engine {
        rayon::scope(|_| stages::execute(&ctx, &plan.params[i]))
    } else {
        stages::execute(&ctx, &plan.params[i])
    };
    match executed {
        Ok(Produced {
            outputs,
            metrics,
            resumed,
        }) => {
            let status = if resumed {
                StageStatus::Resumed
            } else {
                StageStatus::Executed
            };
            let rec = ActionRecord {
                key: key.clone(),
                stage: spec.name.clone(),
                kind: RecordKind::Stage(spec.kind),
                key_material: mat,
                outputs: outputs.clone(),
                metrics: metrics.clone(),
                created: utc_now(),
            };
            store.put_action(&rec)?;
            let seconds = t0.elapsed().as_secs_f64();
            run.append(&RunEvent::StageFinished {
                time: utc_now(),
                stage: spec.name.clone(),
                kind,
                key: key.clone(),
                status,
                outputs: outputs.clone(),
                metrics: metrics.clone(),
                seconds,
            })?;
            // Only now that a run references the outputs (gc keeps them) may the checkpoints go.
            store.clear_progress(&key)?;
            ui.say(&format!("{}: {status} in {seconds:.1}s", spec.name));
            push(runner, spec, &rec)?;
            let mut r = StageResult::new(spec, status);
            r.key = Some(key);
            r.outputs = outputs;
            r.metrics = metrics;
            Ok(r)
        }
        Err(e) => {
            run.append(&RunEvent::StageFailed {
                time: utc_now(),
                stage: spec.name.clone(),
                kind,
                key: Some(key.clone()),
                error: format!("{e:#}"),
            })?;
            ui.say(&format!("{}: failed: {e:#}", spec.name));
            Ok(failed(spec, Some(key), &e))
        }
    }
}

/// The remote's result for `key`, if the runner has a remote and it has a usable one: every
/// output downloaded (re-hashed), and, for a built-in kind, each of the format its name says
/// (`stages::output_problem`). Only then does the record enter the local store: a wrong record
/// saved there would be reused forever. Anything less is a miss, with a warning.
pub fn pull(runner: &Runner, spec: &StageSpec, key: &Key) -> Result<Option<ActionRecord>> {
    let Some(remote) = runner.remote else {
        return Ok(None);
    };
    let rec = match remote.pull(runner.store, key)? {
        Pulled::Complete(rec) => rec,
        Pulled::Absent => return Ok(None),
        Pulled::Incomplete(why) => {
            runner.ui.say(&format!(
                "{}: warning: the remote's result is incomplete ({why}); computing it here",
                spec.name
            ));
            return Ok(None);
        }
    };
    let wrong = (spec.kind != StageKind::Command)
        .then(|| {
            rec.outputs
                .iter()
                .find_map(|(n, h)| stages::output_problem(runner.store, n.as_str(), h))
        })
        .flatten();
    if let Some(why) = wrong {
        runner.ui.say(&format!(
            "{}: warning: the remote's record is ignored ({why}); computing it here",
            spec.name
        ));
        return Ok(None);
    }
    runner.store.put_action(&rec)?;
    Ok(Some(rec))
}

/// With `--push`, uploads a finished stage's outputs and record. A failure fails the stage (its
/// result stays in the local store, so `pipe push` can retry).
fn push(runner: &Runner, spec: &StageSpec, rec: &ActionRecord) -> Result<()> {
    let Some(remote) = runner.remote.filter(|_| runner.push) else {
        return Ok(());
    };
    let p = remote.push(runner.store, rec).with_context(|| {
        format!(
            "pushing `{}` (it is in the local store; `pipe push` retries)",
            spec.name
        )
    })?;
    runner.ui.say(&format!(
        "{}: pushed to {} ({})",
        spec.name,
        remote.url(),
        pushed_summary(&p)
    ));
    Ok(())
}

/// "2 objects, 1.2 MB" / "already there".
pub fn pushed_summary(p: &crate::store::remote::Pushed) -> String {
    let sent = if p.objects == 0 {
        "no new objects".to_string()
    } else {
        let s = if p.objects == 1 { "" } else { "s" };
        format!("{} object{s}, {:.1} MB", p.objects, p.bytes as f64 / 1e6)
    };
    match (&p.record_repaired, p.record_existed) {
        (Some(why), _) => format!("{sent}; its damaged record was replaced ({why})"),
        (None, true) => format!("{sent}; its record was there already"),
        (None, false) => sent,
    }
}

/// What `pipe run` would do, and why, without running anything.
/// With a remote, a local miss that the remote has says so: `run` would pull it.
pub fn status(store: &Store, plan: &Plan, remote: Option<&Remote>) -> Result<Vec<StageResult>> {
    let m = &plan.manifest;
    let mut results: Vec<Option<StageResult>> = vec![None; m.stages.len()];
    for &i in &plan.order {
        let spec = &m.stages[i];
        let mut r = StageResult::new(spec, StageStatus::Stale);
        match inputs_of(plan, i, &results) {
            None => {
                r.status = StageStatus::Blocked;
                r.reasons
                    .push("runs after a stage it needs (its inputs are not known yet)".into());
            }
            Some(inputs) => {
                let mat = material(store, plan, i, &inputs)?;
                let key = key::key_of(&mat);
                tracing::debug!(stage = %spec.name, %key, material = %mat, "stage key");
                r.key = Some(key.clone());
                if let Some(rec) = store.action(&key)? {
                    r.status = StageStatus::Cached;
                    r.outputs = rec.outputs;
                    r.metrics = rec.metrics;
                } else {
                    match store.last_material(&m.name, &spec.name)? {
                        Some(old) => {
                            let diff = key::explain(&old, &mat);
                            r.reasons = if diff.is_empty() {
                                vec!["same key as last time, but its outputs are not in the store (removed by gc, or the stage never finished)".into()]
                            } else {
                                diff
                            };
                        }
                        None => r.reasons.push("never run".into()),
                    }
                    if let Some(remote) = remote
                        && let Some(rec) = remote.action(&key)?
                    {
                        match remote.lacks(&rec)? {
                            Some(why) => r.reasons.push(format!(
                                "the remote store {} has a record but not its {why}: `run` computes it here",
                                remote.url()
                            )),
                            None => {
                                // Its outputs are what the stages after it see (if the pull
                                // succeeds).
                                r.reasons = vec![format!(
                                    "in the remote store {}: `run` downloads it instead of computing it",
                                    remote.url()
                                )];
                                r.outputs = rec.outputs;
                                r.metrics = rec.metrics;
                                r.status = StageStatus::Pulled;
                            }
                        }
                    }
                    let progress = store.progress(&key)?;
                    if let Some(c) = progress.checkpoints.last() {
                        r.reasons.push(format!(
                            "will resume from its checkpoint at iter {}",
                            c.iter
                        ));
                    }
                }
            }
        }
        results[i] = Some(r);
    }
    Ok(results
        .into_iter()
        .map(|r| r.expect("all visited"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::groups;

    /// Up to `jobs` stages at once, and never two engine stages on the GPU together.
    #[test]
    fn a_wave_runs_up_to_jobs_at_once_with_one_gpu_stage_per_group() {
        let wave = |ids: &[usize]| ids.iter().map(|&i| (i, ())).collect::<Vec<_>>();
        let ids = |gs: Vec<Vec<(usize, ())>>| -> Vec<Vec<usize>> {
            gs.into_iter()
                .map(|g| g.into_iter().map(|(i, _)| i).collect())
                .collect()
        };
        // Stages 1 and 3 run the engine on the GPU; 0, 2 and 4 are CPU stages.
        let gpu = |i: usize| i % 2 == 1;
        assert_eq!(
            ids(groups(wave(&[0, 1, 2, 3, 4]), 3, gpu)),
            vec![vec![0, 1, 2], vec![3, 4]]
        );
        assert_eq!(
            ids(groups(wave(&[1, 3, 0]), 4, gpu)),
            vec![vec![1, 0], vec![3]]
        );
        assert_eq!(
            ids(groups(wave(&[0, 2, 4]), 1, gpu)),
            vec![vec![0], vec![2], vec![4]]
        );
        assert_eq!(
            ids(groups(wave(&[0, 1, 2]), 3, |_| false)),
            vec![vec![0, 1, 2]]
        );
    }
}
