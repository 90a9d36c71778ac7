//! Watching a run's jobs: submitting them, and polling squeue/sacct until every stage has an
//! outcome (its action record appeared, its job ended without one, or the scheduler lost it).

use super::{
    INTERRUPTED, Job, dep_failed, inputs_of, key_of, logged, paths, scheduler, script, script_text,
};
use crate::exec::{Runner, StageResult};
use crate::manifest::{StageKind, StageSpec};
use crate::plan::Plan;
use crate::run::{RunEvent, StageStatus, utc_now};
use crate::store::Key;
use anyhow::{Context, Result};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The seconds between two looks at the jobs: `PIPE_SLURM_POLL_SECONDS`, default 5.
fn poll_interval() -> Duration {
    let secs = std::env::var("PIPE_SLURM_POLL_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(5.0);
    Duration::from_secs_f64(secs)
}

/// How long the scheduler may stay unreachable before the run stops (resumable):
/// `PIPE_SLURM_UNREACHABLE_SECONDS`, default 600.
fn unreachable_limit() -> Duration {
    std::env::var("PIPE_SLURM_UNREACHABLE_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map_or(Duration::from_secs(600), Duration::from_secs_f64)
}

/// Sleeps `d` in short steps, returning early on Ctrl-C.
fn nap(d: Duration) {
    let step = Duration::from_millis(50);
    let mut left = d;
    while !left.is_zero() && !INTERRUPTED.load(Ordering::SeqCst) {
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
}

pub(super) struct Watch<'a> {
    pub(super) runner: &'a Runner<'a>,
    pub(super) plan: &'a Plan,
    pub(super) results: Vec<Option<StageResult>>,
    pub(super) jobs: Vec<Option<Job>>,
    pub(super) keys: Vec<Option<Key>>,
    /// Stages whose job another run of this process submitted (a sweep's shared stage): done
    /// here as `cached`, since this run computed nothing.
    pub(super) adopted: Vec<bool>,
}

impl Watch<'_> {
    fn spec(&self, i: usize) -> &StageSpec {
        &self.plan.manifest.stages[i]
    }

    fn with_job(&self, mut r: StageResult, i: usize) -> StageResult {
        if let Some(j) = &self.jobs[i] {
            r.job_id = Some(j.id.clone());
            r.job_log = Some(j.log.display().to_string());
        }
        r
    }

    pub(super) fn fail(&mut self, i: usize, error: String) -> Result<()> {
        let spec = self.spec(i).clone();
        self.runner
            .ui
            .say(&format!("{}: failed: {error}", spec.name));
        self.runner.run.append(&RunEvent::StageFailed {
            time: utc_now(),
            stage: spec.name.clone(),
            kind: spec.kind,
            key: self.keys[i].clone(),
            error: error.clone(),
        })?;
        let mut r = StageResult::new(&spec, StageStatus::Failed);
        r.key = self.keys[i].clone();
        r.error = Some(error);
        self.results[i] = Some(self.with_job(r, i));
        Ok(())
    }

    pub(super) fn skip(&mut self, i: usize) -> Result<()> {
        let spec = self.spec(i).clone();
        let reason = "a stage it needs did not finish".to_string();
        self.runner.run.append(&RunEvent::StageSkipped {
            time: utc_now(),
            stage: spec.name.clone(),
            kind: spec.kind,
            reason: reason.clone(),
        })?;
        let mut r = StageResult::new(&spec, StageStatus::Skipped);
        r.error = Some(reason);
        self.results[i] = Some(self.with_job(r, i));
        Ok(())
    }

    /// Stage `i`'s key, once every stage it needs is done (None before).
    pub(super) fn key(&mut self, i: usize) -> Result<Option<Key>> {
        if self.keys[i].is_none()
            && let Some(inputs) = inputs_of(self.plan, i, &self.results)
        {
            self.keys[i] = Some(key_of(self.runner.store, self.plan, i, &inputs)?);
        }
        Ok(self.keys[i].clone())
    }

    /// If stage `i`'s job has put its action record in the store, records the stage as done
    /// (with the status its job logged) and returns true.
    pub(super) fn finished(&mut self, i: usize) -> Result<bool> {
        let Some(key) = self.key(i)? else {
            return Ok(false);
        };
        // With a remote store, jobs on other machines push their results there: its record is
        // enough here (the outputs stay in the remote until something needs them).
        let rec = match self.runner.store.action(&key)? {
            Some(rec) => Some(rec),
            None => match self.runner.remote {
                Some(remote) => remote.action(&key)?,
                None => None,
            },
        };
        let Some(rec) = rec else {
            return Ok(false);
        };
        let spec = self.spec(i).clone();
        let logged_status = logged(self.runner.run)
            .into_iter()
            .rev()
            .find_map(|e| match e {
                RunEvent::StageFinished {
                    stage,
                    key: k,
                    status,
                    ..
                } if stage == spec.name && k == key => Some(status),
                _ => None,
            });
        let status = match logged_status {
            Some(s) => s,
            None if self.adopted[i] => {
                self.runner.run.append(&RunEvent::StageFinished {
                    time: utc_now(),
                    stage: spec.name.clone(),
                    kind: spec.kind,
                    key: key.clone(),
                    status: StageStatus::Cached,
                    outputs: rec.outputs.clone(),
                    metrics: rec.metrics.clone(),
                    seconds: 0.0,
                })?;
                StageStatus::Cached
            }
            None => {
                // The job died between its record and its log line: log it here (gc keeps
                // what run logs reference).
                self.runner.run.append(&RunEvent::StageFinished {
                    time: utc_now(),
                    stage: spec.name.clone(),
                    kind: spec.kind,
                    key: key.clone(),
                    status: StageStatus::Executed,
                    outputs: rec.outputs.clone(),
                    metrics: rec.metrics.clone(),
                    seconds: 0.0,
                })?;
                StageStatus::Executed
            }
        };
        // Samples are shown where a local run shows them: stdout, or stderr with --json.
        if spec.kind == StageKind::Sample
            && let Some(h) = rec
                .outputs
                .get("samples.txt")
                .filter(|h| self.runner.store.has(h))
        {
            let text = String::from_utf8_lossy(&self.runner.store.get(h)?).to_string();
            if self.runner.ui.json {
                eprint!("{text}")
            } else {
                print!("{text}")
            }
        }
        let job = self.jobs[i].as_ref().map_or("-".into(), |j| j.id.clone());
        self.runner
            .ui
            .say(&format!("{}: {status} (slurm job {job})", spec.name));
        let mut r = StageResult::new(&spec, status);
        r.key = Some(key);
        r.outputs = rec.outputs;
        r.metrics = rec.metrics;
        self.results[i] = Some(self.with_job(r, i));
        Ok(true)
    }

    /// The error a job logged for its stage, if any (after its submission).
    fn job_error(&self, i: usize) -> Option<String> {
        let name = &self.spec(i).name;
        let id = &self.jobs[i].as_ref()?.id;
        let events = logged(self.runner.run);
        let since = events.iter().rposition(|e| {
            matches!(e, RunEvent::StageSubmitted { stage, job_id, .. } if stage == name && job_id == id)
        })?;
        events[since..].iter().rev().find_map(|e| match e {
            RunEvent::StageFailed { stage, error, .. } if stage == name => Some(error.clone()),
            _ => None,
        })
    }

    /// Watches `job`, submitted by another run of this process for the same computation, as
    /// stage `i`'s job (logged as its submission, so `show` and `resume` follow it).
    pub(super) fn adopt(&mut self, i: usize, job: Job) -> Result<()> {
        let spec = self.spec(i).clone();
        self.runner.run.append(&RunEvent::StageSubmitted {
            time: utc_now(),
            stage: spec.name.clone(),
            kind: spec.kind,
            job_id: job.id.clone(),
            script: job.script.display().to_string(),
            log: job.log.display().to_string(),
        })?;
        self.runner.ui.say(&format!(
            "{}: slurm job {} (submitted by another variant) computes it; watching it",
            spec.name, job.id
        ));
        self.jobs[i] = Some(job);
        self.adopted[i] = true;
        Ok(())
    }

    pub(super) fn submit(&mut self, i: usize) -> Result<()> {
        let (store, run) = (self.runner.store, self.runner.run);
        let spec = self.spec(i).clone();
        // The jobs of the stages it needs that are not done yet (done ones need no waiting for).
        let after: Vec<String> = self.plan.deps[i]
            .iter()
            .filter(|&&j| self.results[j].is_none())
            .filter_map(|&j| self.jobs[j].as_ref().map(|job| job.id.clone()))
            .collect();
        let (root, _) = paths(store)?;
        // sbatch does not create the folder of a job's --output.
        let dir = script::slurm_dir(&root, &run.id);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let script_path = dir.join(format!("{}.sbatch", spec.name));
        let text = script_text(store, self.plan, &spec, &run.id, Some(self.runner))?;
        crate::store::write_atomic(&store.root.join("tmp"), &script_path, text.as_bytes())?;
        let id = scheduler::submit(&script_path, &after)?;
        let log = script::log_path(&root, &run.id, &spec.name, &id);
        run.append(&RunEvent::StageSubmitted {
            time: utc_now(),
            stage: spec.name.clone(),
            kind: spec.kind,
            job_id: id.clone(),
            script: script_path.display().to_string(),
            log: log.display().to_string(),
        })?;
        let waits = if after.is_empty() {
            String::new()
        } else {
            format!(", after {}", after.join(", "))
        };
        self.runner.ui.say(&format!(
            "{}: submitted as slurm job {id}{waits} (log {})",
            spec.name,
            log.display()
        ));
        self.jobs[i] = Some(Job {
            id,
            script: script_path,
            log,
        });
        Ok(())
    }

    /// Cancels the unfinished jobs, logs their stages as interrupted, and exits 130.
    pub(super) fn interrupted(&mut self) -> ! {
        let open: Vec<usize> = (0..self.results.len())
            .filter(|&i| self.results[i].is_none() && self.jobs[i].is_some())
            .collect();
        let ids: Vec<String> = open
            .iter()
            .filter_map(|&i| self.jobs[i].as_ref().map(|j| j.id.clone()))
            .collect();
        if let Err(e) = scheduler::cancel(&ids) {
            eprintln!("warning: cancelling slurm jobs {}: {e:#}", ids.join(" "));
        }
        for &i in &open {
            let id = self.jobs[i].as_ref().map_or("-".into(), |j| j.id.clone());
            // Best effort: the process ends next either way.
            let _ = self.runner.run.append(&RunEvent::StageFailed {
                time: utc_now(),
                stage: self.spec(i).name.clone(),
                kind: self.spec(i).kind,
                key: self.keys[i].clone(),
                error: format!("interrupted: slurm job {id} cancelled"),
            });
        }
        let run = &self.runner.run.id;
        let cancelled = if ids.is_empty() {
            String::new()
        } else {
            format!(" (cancelled slurm jobs {})", ids.join(", "))
        };
        eprintln!(
            "\ninterrupted{cancelled}: run {run} can continue with `pipe resume {run}`, which submits them again"
        );
        std::process::exit(130);
    }
}

/// Polls until every submitted stage has an outcome.
pub(super) fn watch(w: &mut Watch) -> Result<()> {
    let poll = poll_interval();
    let give_up = unreachable_limit();
    let n = w.results.len();
    let mut warned = false;
    let mut unreachable_since: Option<std::time::Instant> = None;
    loop {
        if INTERRUPTED.load(Ordering::SeqCst) {
            w.interrupted();
        }
        for &i in &w.plan.order {
            if w.results[i].is_some() {
                continue;
            }
            if dep_failed(w.plan, i, &w.results) {
                // Its job waits on one that will never succeed: take it out of the queue.
                if let Some(j) = &w.jobs[i] {
                    scheduler::cancel(std::slice::from_ref(&j.id))?;
                }
                w.skip(i)?;
            } else {
                w.finished(i)?;
            }
        }
        let open: Vec<usize> = (0..n).filter(|&i| w.results[i].is_none()).collect();
        if open.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = open
            .iter()
            .filter_map(|&i| w.jobs[i].as_ref().map(|j| j.id.clone()))
            .collect();
        let states = match scheduler::states(&ids) {
            Ok(s) => {
                unreachable_since = None;
                s
            }
            // Asking again cannot bring a missing squeue.
            Err(e) if e.is::<scheduler::Missing>() => return Err(e),
            Err(e) => {
                let since = *unreachable_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > give_up {
                    anyhow::bail!(
                        "the scheduler has not answered for {:.0} s ({e:#}); the run stops here, its jobs are not cancelled: `pipe resume {}` watches them again (PIPE_SLURM_UNREACHABLE_SECONDS sets the limit)",
                        give_up.as_secs_f64(),
                        w.runner.run.id
                    );
                }
                if !warned {
                    w.runner.ui.say(&format!(
                        "warning: {e:#}; asking again every {poll:?} for up to {:.0} s",
                        give_up.as_secs_f64()
                    ));
                    warned = true;
                }
                nap(poll);
                continue;
            }
        };
        for &i in &open {
            let Some(job) = w.jobs[i].clone() else {
                continue;
            };
            let state = states.get(&job.id).map(String::as_str);
            if state.is_some_and(|s| !scheduler::is_terminal(s)) {
                continue;
            }
            // It ended: its record may have appeared since the look above.
            if w.finished(i)? {
                continue;
            }
            if dep_failed(w.plan, i, &w.results) {
                w.skip(i)?;
                continue;
            }
            let run = &w.runner.run.id;
            let error = match state {
                None => format!(
                    "slurm job {} was lost by the scheduler (neither squeue nor sacct knows it); `pipe resume {run}` submits it again",
                    job.id
                ),
                Some(s) => {
                    let why = w.job_error(i).map(|e| format!(": {e}")).unwrap_or_default();
                    format!(
                        "slurm job {} ended {s} without a result (log {}){why}",
                        job.id,
                        job.log.display()
                    )
                }
            };
            w.fail(i, error)?;
        }
        if (0..n).all(|i| w.results[i].is_some()) {
            return Ok(());
        }
        nap(poll);
    }
}
