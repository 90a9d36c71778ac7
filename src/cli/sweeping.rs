//! `pipe run` of a sweep (a manifest's `sweep:`, or `--sweep`), and `pipe resume SWEEP`.
//!
//! Every variant is an ordinary run. All their plans are built and checked before anything runs
//! (bad input is exit 2, located); then every run is created with its plan, then the sweep record
//! (`src/sweep.rs`). Up to `-j` variants run at once, each one stage at a time, sharing the
//! engine's threads; on Slurm, every variant submits its jobs at once, and a stage two variants
//! share is submitted once (`slurm::execute`). Stages that no swept value reaches have one key for every variant, so they
//! are computed once: by the first variant that needs them, while any other that needs them at
//! the same time waits on the key's lock and finds them cached.

use super::RunFlags;
use super::running::{RunOptions, on_interrupt, remote_url, run_plan};
use crate::error::InputError;
use crate::exec::RunSummary;
use crate::manifest::{self, Override, sweep::SweepValue};
use crate::plan::{self, Plan};
use crate::run::{Executor, RunLog, RunRecord, RunStatus, SweepMember, utc_now};
use crate::show;
use crate::stages::Downloads;
use crate::store::Store;
use crate::sweep::{SweepRecord, Variant, new_sweep_id, status_of};
use crate::ui::Ui;
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Variants watched at once on Slurm (a thread each).
const MAX_SLURM_VARIANTS_AT_ONCE: usize = 256;

/// What `run --sweep --json` (and `resume SWEEP --json`) prints.
#[derive(Serialize)]
pub struct SweepSummary {
    pub sweep_id: String,
    pub name: String,
    pub status: RunStatus,
    pub runs: Vec<RunSummary>,
}

/// Runs the sweep of `manifest`: `variants` (from `manifest::sweep::variants`), each after the
/// command line's `set`.
#[allow(clippy::too_many_arguments)]
pub fn run(
    cache: &Path,
    remote_flag: Option<&str>,
    manifest: &Path,
    set: &[String],
    overrides: &[Override],
    variants: Vec<Vec<SweepValue>>,
    flags: RunFlags,
    executor: Executor,
) -> Result<i32> {
    let mut plans = Vec::with_capacity(variants.len());
    for v in &variants {
        let all: Vec<Override> = overrides
            .iter()
            .cloned()
            .chain(v.iter().map(|x| x.over.clone()))
            .collect();
        let mut plan = manifest::load(manifest, &all)
            .and_then(plan::build)
            .map_err(|e| located(e, v))?;
        plan.downloads = Downloads::Allowed;
        plans.push(plan);
    }
    // Sweeps run each variant on one process: a manifest's `ranks` would key 1-rank training
    // as N ranks' (and the train stages' Slurm resources would ask for ranks it never starts).
    if let Some(n) = plans
        .iter()
        .find_map(|p| p.manifest.defaults.ranks.filter(|&n| n > 1))
    {
        return Err(InputError::new(
            format!("a sweep cannot run on data-parallel ranks yet, and the manifest asks for {n} (`defaults.ranks`)"),
            Some("sweep on one rank (drop `ranks`), or run the variants one at a time with --set and --ranks"),
        )
        .into());
    }
    let remote = remote_url(remote_flag, &plans[0].manifest);
    let opts = RunOptions::new(flags, remote, executor)?;
    check_all(&mut plans, &Store::at(cache), &opts, executor)
        .map_err(|(k, e)| located(e, &variants[k]))?;
    let store = Store::open(cache)?;
    let shared = store.lock_store_shared()?;
    let mut runs = Vec::with_capacity(plans.len());
    for (plan, v) in plans.iter().zip(&variants) {
        let run = RunLog::create(&store, &serde_json::to_value(&plan.manifest)?)?;
        runs.push(Variant {
            run_id: run.id.clone(),
            overrides: v.iter().map(|x| x.over.raw.clone()).collect(),
        });
    }
    let rec = SweepRecord {
        sweep_id: new_sweep_id(),
        name: plans[0].manifest.name.clone(),
        manifest: manifest.display().to_string(),
        created: utc_now(),
        set: set.to_vec(),
        variants: runs,
    };
    rec.save(&store)?;
    let result = execute(
        &store,
        &rec,
        plans.into_iter().map(Some).collect(),
        "run",
        &opts,
    );
    drop(shared);
    result
}

/// `pipe resume SWEEP`: finished variants stay as they are, interrupted ones continue from their
/// last checkpoint, failed ones (and any that never started) run again.
pub fn resume(
    cache: &Path,
    remote_flag: Option<&str>,
    rec: SweepRecord,
    flags: RunFlags,
    executor: Option<Executor>,
) -> Result<i32> {
    let store = Store::open(cache)?;
    let _shared = store.lock_store_shared()?;
    let mut plans = Vec::with_capacity(rec.variants.len());
    let mut executor = executor;
    for v in &rec.variants {
        let run = RunRecord::load(&store, &v.run_id)?;
        if let Some(why) = &run.damage {
            anyhow::bail!(
                "sweep {}: run {} cannot be resumed: {why}",
                rec.sweep_id,
                v.run_id
            );
        }
        if run.status == RunStatus::Succeeded {
            plans.push(None);
            continue;
        }
        // As the sweep started, unless told otherwise.
        executor = executor.or_else(|| {
            run.events.iter().find_map(|e| match e {
                crate::run::RunEvent::RunStarted { executor, .. } => Some(*executor),
                _ => None,
            })
        });
        let m: manifest::Manifest =
            serde_json::from_value(run.plan).context("reading the run's plan")?;
        let mut plan = plan::build(m)?;
        plan.downloads = Downloads::Allowed;
        plans.push(Some(plan));
    }
    let executor = executor.unwrap_or_default();
    let first = plans.iter().flatten().next().map(|p| &p.manifest);
    let remote = first
        .and_then(|m| remote_url(remote_flag, m))
        .or(remote_flag);
    let opts = RunOptions::new(flags, remote, executor)?;
    check_all(plans.iter_mut().flatten(), &store, &opts, executor).map_err(|(_, e)| e)?;
    execute(&store, &rec, plans, "resume", &opts)
}

/// Checks each plan in turn; each after the first reuses the first's key parts for the stages
/// they share, so a source is hashed once per sweep. An error comes with the failing plan's index.
fn check_all<'a>(
    plans: impl IntoIterator<Item = &'a mut Plan>,
    store: &Store,
    opts: &RunOptions,
    executor: Executor,
) -> Result<(), (usize, anyhow::Error)> {
    let mut first: Option<&Plan> = None;
    for (k, plan) in plans.into_iter().enumerate() {
        if let Some(f) = first {
            plan.share_key_parts(f);
        }
        plan.check(store, opts.flags.allow_outside, executor)
            .map_err(|e| (k, e))?;
        first = first.or(Some(plan));
    }
    Ok(())
}

/// A plan error made while building variant `v` points at the sweep value that caused it, not at
/// the `--set` it was applied as.
fn located(e: anyhow::Error, v: &[SweepValue]) -> anyhow::Error {
    let Some(mut ie) = InputError::of(&e) else {
        return e;
    };
    if let Some(o) = &ie.origin
        && let Some(sv) = v
            .iter()
            .find(|sv| o.file == format!("--set {}", sv.over.raw))
    {
        ie.origin = Some(sv.origin.clone());
        ie.message = format!("sweep value `{}`: {}", sv.over.raw, ie.message);
    }
    ie.into()
}

/// Runs the variants whose plan is given (the others are finished), up to `-j` at once; prints
/// the summary; the exit code.
fn execute(
    store: &Store,
    rec: &SweepRecord,
    plans: Vec<Option<Plan>>,
    command: &str,
    opts: &RunOptions,
) -> Result<i32> {
    let json = opts.flags.json;
    let ui = Ui::new(json);
    let executor = opts.executor;
    on_interrupt(
        executor,
        format!("sweep {}", rec.sweep_id),
        rec.sweep_id.clone(),
    );
    ui.say(&format!(
        "sweep {} ({}: {} variants)",
        rec.sweep_id,
        rec.name,
        rec.variants.len()
    ));
    let todo: Vec<usize> = (0..plans.len()).filter(|&i| plans[i].is_some()).collect();
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let done: Mutex<Vec<Option<Result<RunSummary, String>>>> =
        Mutex::new((0..plans.len()).map(|_| None).collect());
    // On Slurm every variant submits at once (its thread mostly waits on the scheduler).
    let wanted = match executor {
        Executor::Slurm => MAX_SLURM_VARIANTS_AT_ONCE,
        Executor::Local => opts.flags.jobs,
    };
    let workers = wanted.clamp(1, todo.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    if opts.flags.fail_fast && stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Some(&i) = todo.get(next.fetch_add(1, Ordering::SeqCst)) else {
                        break;
                    };
                    let plan = plans[i].as_ref().expect("a variant to run");
                    let v = &rec.variants[i];
                    let member = SweepMember {
                        sweep_id: rec.sweep_id.clone(),
                        overrides: v.overrides.clone(),
                    };
                    let r = RunLog::open(store, &v.run_id)
                        .and_then(|run| {
                            let cancel = opts.flags.fail_fast.then_some(&stop);
                            run_plan(
                                store,
                                plan,
                                &run,
                                command,
                                opts,
                                &ui,
                                1,
                                Some(member),
                                cancel,
                            )
                        })
                        .map_err(|e| format!("{e:#}"));
                    if !matches!(&r, Ok(s) if s.status == RunStatus::Succeeded) {
                        stop.store(true, Ordering::SeqCst);
                    }
                    done.lock().unwrap()[i] = Some(r);
                }
            });
        }
    });
    let done = done.into_inner().unwrap();
    let mut runs = Vec::with_capacity(done.len());
    let mut errors = Vec::new();
    for (v, r) in rec.variants.iter().zip(done) {
        let summary = match r {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                errors.push((v.run_id.clone(), e));
                show::run_summary(store, &v.run_id)?
            }
            // Finished before this resume, or not started (--fail-fast).
            None => show::run_summary(store, &v.run_id)?,
        };
        runs.push(summary);
    }
    let status = status_of(&runs.iter().map(|r| r.status).collect::<Vec<_>>());
    let summary = SweepSummary {
        sweep_id: rec.sweep_id.clone(),
        name: rec.name.clone(),
        status,
        runs,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        eprintln!();
        print_summary(rec, &summary, &errors);
    }
    Ok(if status == RunStatus::Succeeded { 0 } else { 1 })
}

/// The sweep's table: one line per variant, with its failure if it failed.
pub fn print_summary(rec: &SweepRecord, s: &SweepSummary, errors: &[(String, String)]) {
    println!(
        "sweep {} ({}: {} variants): {}",
        s.sweep_id,
        s.name,
        s.runs.len(),
        s.status
    );
    println!("  {:<22} {:<12} OVERRIDES", "RUN", "STATUS");
    for (v, r) in rec.variants.iter().zip(&s.runs) {
        println!(
            "  {:<22} {:<12} {}",
            r.run_id,
            r.status,
            v.overrides.join(" ")
        );
        let failure = errors
            .iter()
            .find(|(id, _)| *id == r.run_id)
            .map(|(_, e)| e.clone())
            .or_else(|| {
                r.stages
                    .iter()
                    .find_map(|st| st.error.as_ref().map(|e| format!("{}: {e}", st.name)))
            });
        if let Some(e) = failure {
            println!("      {}", e.lines().next().unwrap_or(""));
        }
    }
    if s.status != RunStatus::Succeeded {
        println!(
            "\nsweep {} is not finished: `pipe resume {}` runs what is left (finished variants are kept)",
            s.sweep_id, s.sweep_id
        );
    }
}
