//! `--executor slurm`: each stage that is not cached runs as an sbatch job against the shared
//! store, with `afterok` dependencies for the DAG. The submitting process (holding the run's lock)
//! submits the jobs, then watches them: a stage is done when its action record is in the store,
//! not when its job says so; a job that ended without one failed, and what needs it is skipped.
//!
//! The job body is `pipe run-stage RUN STAGE` ([`run_stage`]): it reads the run's plan, finds the
//! keys of the stages before it from their action records, and runs that one stage through
//! exec's single-stage path, logging to the run's log without its lock.
//!
//! Files: `watch.rs` (submitting and polling), `script.rs` (sbatch script text), `scheduler.rs`
//! (sbatch, squeue, sacct, scancel).

pub mod scheduler;
pub mod script;
mod watch;

use watch::{Watch, watch};

use crate::exec::{self, Runner, StageResult, inputs_of};
use crate::manifest::StageSpec;
use crate::plan::Plan;
use crate::run::{RunEvent, RunLog, StageStatus, utc_now};
use crate::stages::Input;
use crate::store::{Key, Store};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The jobs this process submitted, by what they compute: a stage key, or (for a stage whose
/// inputs are not known yet) its key material without inputs plus the jobs or outputs of the
/// stages it needs, which make the same key once they finish. The variants of a sweep run side
/// by side, one `execute` each; a stage they share is submitted by the first and watched by the
/// others.
static SUBMITTED: std::sync::Mutex<BTreeMap<String, Job>> = std::sync::Mutex::new(BTreeMap::new());

/// Asks a running [`execute`] to cancel its jobs and exit (from the Ctrl-C handler).
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// A submitted job: its id, script and log.
#[derive(Clone, Debug)]
pub struct Job {
    pub id: String,
    pub script: PathBuf,
    pub log: PathBuf,
}

/// Whether some stage `i` needs ended without its outputs.
fn dep_failed(plan: &Plan, i: usize, results: &[Option<StageResult>]) -> bool {
    plan.deps[i]
        .iter()
        .any(|&j| results[j].as_ref().is_some_and(|r| !r.done()))
}

/// Whether stage key `key` has a result, in the store or in the remote store.
fn has_result(runner: &Runner, key: &Key) -> Result<bool> {
    if runner.store.action(key)?.is_some() {
        return Ok(true);
    }
    Ok(match runner.remote {
        Some(remote) => remote.action(key)?.is_some(),
        None => false,
    })
}

fn key_of(store: &Store, plan: &Plan, i: usize, inputs: &[Input]) -> Result<Key> {
    Ok(crate::key::key_of(&exec::material(store, plan, i, inputs)?))
}

/// The absolute store path and pipe binary the job scripts name.
fn paths(store: &Store) -> Result<(PathBuf, PathBuf)> {
    let root = store
        .root
        .canonicalize()
        .with_context(|| format!("finding the store {}", store.root.display()))?;
    let bin = std::env::current_exe().context("finding the pipe binary")?;
    // Linux names a binary replaced since it started (a rebuild) "PATH (deleted)": the jobs
    // run the one at PATH now.
    let bin = match bin.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(p) if Path::new(p).exists() => PathBuf::from(p),
        _ => bin,
    };
    Ok((root, bin))
}

/// Stage `spec`'s sbatch script for run `run_id`; with the run's remote store (and `--push`)
/// when it has one.
fn script_text(
    store: &Store,
    plan: &Plan,
    spec: &StageSpec,
    run_id: &str,
    runner: Option<&Runner>,
) -> Result<String> {
    let (root, bin) = paths(store)?;
    script::job_script(&script::Job {
        spec,
        defaults: &plan.manifest.defaults,
        store_root: &root,
        pipe_bin: &bin,
        run_id,
        manifest_name: &plan.manifest.name,
        remote: runner.and_then(|r| r.remote).map(|r| r.url()),
        push: runner.is_some_and(|r| r.push && r.remote.is_some()),
    })
}

/// Makes a script executable (sbatch does not need it; a user running one by hand does).
fn executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}

/// `pipe export-slurm`: writes `DIR/NN-STAGE.sbatch` for every stage of run `run_id` in
/// dependency order, and `DIR/submit.sh`, which submits them with afterok dependencies. Returns
/// the number of job scripts.
/// The file `export` writes for the `k`-th stage in plan order.
fn export_file(k: usize, spec: &StageSpec) -> String {
    format!("{:02}-{}.sbatch", k + 1, spec.name)
}

/// What [`export`] would fail on, checked before the run it exports exists: every script can be
/// written (the store's path fits an `#SBATCH` line), and `dir` holds no file of the same name
/// that pipe did not write, since an export never overwrites the user's own files.
pub fn check_export(store: &Store, plan: &Plan, dir: &Path) -> Result<()> {
    for (k, &i) in plan.order.iter().enumerate() {
        let spec = &plan.manifest.stages[i];
        script_text(store, plan, spec, "check", None)?;
        written_by_pipe(&dir.join(export_file(k, spec)))?;
    }
    written_by_pipe(&dir.join("submit.sh"))
}

/// Ok when `path` is absent or is a script an earlier export wrote (by its first lines).
fn written_by_pipe(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut head = Vec::new();
    match std::fs::File::open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        Ok(f) => {
            f.take(64).read_to_end(&mut head).ok();
        }
    }
    let ours = [
        "#!/bin/bash\n#SBATCH --job-name=pipe-",
        "#!/bin/bash\n# Submits the stages of pipe run",
    ];
    if path.is_file() && ours.iter().any(|o| head.starts_with(o.as_bytes())) {
        return Ok(());
    }
    Err(crate::error::InputError::new(
        format!(
            "{} exists and is not a script of an earlier export: export-slurm never overwrites other files",
            path.display()
        ),
        Some("give another folder with --out DIR, or move that file away"),
    )
    .into())
}

pub fn export(store: &Store, plan: &Plan, run_id: &str, dir: &Path) -> Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // sbatch does not create the folder of a job's --output.
    let logs = script::slurm_dir(&store.root, run_id);
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut entries = Vec::new();
    for (k, &i) in plan.order.iter().enumerate() {
        let spec = &plan.manifest.stages[i];
        let file = export_file(k, spec);
        let path = dir.join(&file);
        std::fs::write(&path, script_text(store, plan, spec, run_id, None)?)
            .with_context(|| format!("writing {}", path.display()))?;
        executable(&path)?;
        // Dependencies as positions in `plan.order`, which lists every need first.
        let deps = plan.deps[i]
            .iter()
            .map(|j| plan.order.iter().position(|o| o == j).expect("in order"))
            .collect();
        entries.push((spec.name.clone(), file, deps));
    }
    let submit = dir.join("submit.sh");
    std::fs::write(&submit, script::submit_script(run_id, &entries))
        .with_context(|| format!("writing {}", submit.display()))?;
    executable(&submit)?;
    Ok(entries.len())
}

/// The latest job each stage was submitted as, from a run's earlier events (for resume).
fn earlier_jobs(events: &[RunEvent]) -> BTreeMap<String, Job> {
    let mut jobs = BTreeMap::new();
    for e in events {
        if let RunEvent::StageSubmitted {
            stage,
            job_id,
            script,
            log,
            ..
        } = e
        {
            let job = Job {
                id: job_id.clone(),
                script: script.into(),
                log: log.into(),
            };
            jobs.insert(stage.clone(), job);
        }
    }
    jobs
}

/// The run's events as logged so far (by this process and by its jobs).
fn logged(run: &RunLog) -> Vec<RunEvent> {
    let text = std::fs::read_to_string(run.dir.join("log.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// What stage `i` will compute, as [`SUBMITTED`] names it; `None` when a stage it needs has
/// neither outputs nor a job (it is failing).
fn identity(w: &Watch, i: usize) -> Result<Option<String>> {
    if let Some(key) = &w.keys[i] {
        return Ok(Some(format!("key {key}")));
    }
    let mut deps = Vec::new();
    for &j in &w.plan.deps[i] {
        match (&w.results[j], &w.jobs[j]) {
            (Some(r), _) if r.done() => deps.push(serde_json::json!(r.outputs)),
            (None, Some(job)) => deps.push(serde_json::json!(job.id)),
            _ => return Ok(None),
        }
    }
    let material = exec::material(w.runner.store, w.plan, i, &[])?;
    let text = serde_json::to_vec(&serde_json::json!({ "material": material, "deps": deps }))?;
    Ok(Some(format!("pending {}", blake3::hash(&text).to_hex())))
}

/// Runs the plan as Slurm jobs; returns each stage's result in manifest order. In a resumed run,
/// the jobs of earlier attempts that are still queued or running are watched, not submitted again.
pub fn execute(runner: &Runner, plan: &Plan) -> Result<Vec<StageResult>> {
    let n = plan.manifest.stages.len();
    let mut w = Watch {
        runner,
        plan,
        results: vec![None; n],
        jobs: vec![None; n],
        keys: vec![None; n],
        adopted: vec![false; n],
    };
    let previous = earlier_jobs(&logged(runner.run));
    let ids: Vec<String> = previous.values().map(|j| j.id.clone()).collect();
    let live: BTreeMap<String, String> = scheduler::states(&ids)?
        .into_iter()
        .filter(|(_, s)| !scheduler::is_terminal(s))
        .collect();
    for &i in &plan.order {
        if INTERRUPTED.load(Ordering::SeqCst) {
            w.interrupted();
        }
        if dep_failed(plan, i, &w.results) {
            w.skip(i)?;
            continue;
        }
        if let Some(inputs) = inputs_of(plan, i, &w.results) {
            match key_of(runner.store, plan, i, &inputs) {
                Err(e) => {
                    w.fail(i, format!("{e:#}"))?;
                    continue;
                }
                // Cached (or in the remote store): recorded exactly as the local executor does.
                Ok(key) if has_result(runner, &key)? => {
                    w.results[i] = Some(exec::run_stage(runner, plan, i, inputs)?);
                    continue;
                }
                Ok(key) => w.keys[i] = Some(key),
            }
        }
        let name = &plan.manifest.stages[i].name;
        // A job from before (a resume) that is still queued or running, and waits only on jobs
        // that are being watched too, is watched instead of submitted again.
        if let Some(old) = previous.get(name).filter(|j| live.contains_key(&j.id)) {
            let deps_ok = plan.deps[i].iter().all(|&j| {
                w.results[j].is_some()
                    || w.jobs[j].as_ref().is_some_and(|job| {
                        previous
                            .get(&plan.manifest.stages[j].name)
                            .is_some_and(|p| p.id == job.id)
                    })
            });
            if deps_ok {
                runner.ui.say(&format!(
                    "{name}: slurm job {} is still {}; watching it",
                    old.id,
                    live[&old.id].to_lowercase()
                ));
                w.jobs[i] = Some(old.clone());
                continue;
            }
            scheduler::cancel(std::slice::from_ref(&old.id))?;
        }
        let identity = identity(&w, i)?;
        let mut submitted = SUBMITTED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(job) = identity.as_ref().and_then(|id| submitted.get(id)) {
            w.adopt(i, job.clone())?;
            continue;
        }
        match w.submit(i) {
            Ok(()) => {
                if let (Some(id), Some(job)) = (identity, &w.jobs[i]) {
                    submitted.insert(id, job.clone());
                }
            }
            Err(e) => w.fail(i, format!("{e:#}"))?,
        }
    }
    watch(&mut w)?;
    Ok(w.results
        .into_iter()
        .map(|r| r.expect("all stages visited"))
        .collect())
}

/// `pipe run-stage RUN STAGE`, a job's body: runs one stage of a run whose earlier stages have
/// their results in the store. Appends to the run's log without taking its lock. `by_hand`: no
/// pipe process holds the run (export-slurm's jobs, or a submitter that died), so the job logs
/// its own id, which a submitting pipe logs otherwise.
pub fn run_stage(runner: &Runner, plan: &Plan, stage: &str, by_hand: bool) -> Result<StageResult> {
    let m = &plan.manifest;
    let Some(target) = m.stages.iter().position(|s| s.name == stage) else {
        bail!(
            "run {} has no stage `{stage}` (its stages: {})",
            runner.run.id,
            m.stages
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    // So `show` and `resume` know the job.
    if let Some(job_id) = std::env::var("SLURM_JOB_ID").ok().filter(|_| by_hand) {
        let known = logged(runner.run).iter().any(|e| {
            matches!(e, RunEvent::StageSubmitted { stage: s, job_id: j, .. } if s == stage && *j == job_id)
        });
        if !known {
            let (root, _) = paths(runner.store)?;
            runner.run.append(&RunEvent::StageSubmitted {
                time: utc_now(),
                stage: stage.to_string(),
                kind: m.stages[target].kind,
                log: script::log_path(&root, &runner.run.id, stage, &job_id)
                    .display()
                    .to_string(),
                job_id,
                script: String::new(),
            })?;
        }
    }
    // Every stage it needs, directly or not.
    let mut needed = vec![false; m.stages.len()];
    let mut todo = plan.deps[target].clone();
    while let Some(j) = todo.pop() {
        if !needed[j] {
            needed[j] = true;
            todo.extend(&plan.deps[j]);
        }
    }
    let mut results: Vec<Option<StageResult>> = vec![None; m.stages.len()];
    for &i in plan.order.iter().filter(|&&i| needed[i]) {
        let inputs = inputs_of(plan, i, &results).expect("stages visited in order");
        let key = key_of(runner.store, plan, i, &inputs)?;
        // A job on a machine whose store lacks it pulls it from the remote store, as `run` does.
        let Some((rec, _)) = runner.find_result(&m.stages[i], &key)? else {
            bail!(
                "stage {stage} needs {}, which has no result in the store{}",
                m.stages[i].name,
                runner
                    .remote
                    .map(|r| format!(" nor in the remote {}", r.url()))
                    .unwrap_or_default()
            );
        };
        let mut r = StageResult::new(&m.stages[i], StageStatus::Cached);
        r.key = Some(key);
        r.outputs = rec.outputs;
        results[i] = Some(r);
    }
    let inputs = inputs_of(plan, target, &results).expect("every need has a result");
    let r = exec::run_stage(runner, plan, target, inputs)?;
    if by_hand {
        finish_by_hand(runner, plan, &r)?;
    }
    Ok(r)
}

/// A run no pipe process watches (export-slurm's) finishes with its jobs: `failed` when one
/// fails (Slurm cancels what waits on it), `succeeded` when the last stage is done.
fn finish_by_hand(runner: &Runner, plan: &Plan, r: &StageResult) -> Result<()> {
    let done: std::collections::BTreeSet<String> = logged(runner.run)
        .into_iter()
        .filter_map(|e| match e {
            RunEvent::StageFinished { stage, status, .. } if status.done() => Some(stage),
            _ => None,
        })
        .collect();
    let status = if !r.done() {
        crate::run::RunStatus::Failed
    } else if plan.manifest.stages.iter().all(|s| done.contains(&s.name)) {
        crate::run::RunStatus::Succeeded
    } else {
        return Ok(());
    };
    runner.run.append(&RunEvent::RunFinished {
        time: utc_now(),
        status,
    })
}
