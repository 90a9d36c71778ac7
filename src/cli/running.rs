//! `run`, `resume`, `status`, `export-slurm` and the jobs' `run-stage`: a manifest (or a run's
//! plan) checked and executed against the store, locally or on Slurm, with the remote store.

use super::RunFlags;
use crate::error::InputError;
use crate::exec::{self, PlanStatus, RunSummary};
use crate::manifest::{self, Manifest, StageKind};
use crate::plan;
use crate::ranks::Ranks;
use crate::run::{Executor, RunEvent, RunLog, RunRecord, RunStatus, utc_now};
use crate::show;
use crate::stages::Downloads;
use crate::store::Store;
use crate::store::remote::Remote;
use crate::ui::Ui;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// `pipe run`: one run, or a sweep's variants when the manifest has `sweep:` or `sweep` (the
/// `--sweep` axes) is not empty.
#[allow(clippy::too_many_arguments)]
pub fn run(
    cache: &Path,
    remote_flag: Option<&str>,
    manifest: &Path,
    set: &[String],
    sweep: &[String],
    yes: bool,
    flags: RunFlags,
    executor: Executor,
    job: Job,
) -> Result<i32> {
    let overrides = parse_overrides(set)?;
    let variants = manifest::sweep::variants(manifest, sweep, &overrides, yes)?;
    if !variants.is_empty() {
        if flags.ranks.is_some_and(|n| n > 1) || job.launched_world.is_some_and(|n| n > 1) {
            return Err(InputError::new(
                "a sweep cannot run on data-parallel ranks yet",
                Some(
                    "run the variants one at a time with --set (and --ranks), or sweep on one rank",
                ),
            )
            .into());
        }
        return super::sweeping::run(
            cache,
            remote_flag,
            manifest,
            set,
            &overrides,
            variants,
            flags,
            executor,
        );
    }
    let mut plan = plan::build(manifest::load(manifest, &overrides)?)?;
    plan.downloads = Downloads::Allowed;
    let ranks = job.reconcile(&mut plan.manifest, flags.ranks, executor)?;
    let remote = remote_url(remote_flag, &plan.manifest);
    let mut opts = RunOptions::new(flags, remote, executor)?;
    // Validate what can fail before anything is written (missing files, bad checkpoints).
    let read_only = Store::at(cache);
    plan.check(&read_only, opts.flags.allow_outside, executor)?;
    if job.needs_launch(ranks, executor) {
        return launch_ranks(ranks, plan.manifest.defaults.device);
    }
    opts.ranks = job.ranks;
    if ranks > 1 && executor == Executor::Local {
        // One stage at a time: MPI is called from one stage's thread (see gpt/collective/mpi.rs).
        opts.flags.jobs = 1;
    }
    let store = Store::open(cache)?;
    // Held from before the run's first write, so `gc` never removes what it is writing.
    let shared = store.lock_store_shared()?;
    let run = RunLog::create(&store, &serde_json::to_value(&plan.manifest)?)?;
    execute_run(&store, &plan, run, shared, "run", &opts)
}

/// `executor`: `--executor` if given; otherwise the run's own.
pub fn resume(
    cache: &Path,
    remote_flag: Option<&str>,
    run_id: &str,
    flags: RunFlags,
    executor: Option<Executor>,
    job: Job,
) -> Result<i32> {
    if let Some(sweep) = crate::sweep::SweepRecord::find(&Store::at(cache), run_id)? {
        return super::sweeping::resume(cache, remote_flag, sweep, flags, executor);
    }
    let store = Store::open(cache)?;
    let shared = store.lock_store_shared()?;
    let rec = RunRecord::load(&store, run_id)?;
    if let Some(why) = &rec.damage {
        anyhow::bail!(
            "run {} cannot be resumed: {why}.\n  help: run its manifest again with `pipe run` (finished stages are reused)",
            rec.id
        );
    }
    if rec.status == RunStatus::Succeeded {
        eprintln!(
            "run {} already succeeded: nothing to resume (`pipe show {}` shows it)",
            rec.id, rec.id
        );
        if flags.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&show::run_summary(&store, &rec.id)?)?
            );
        }
        return Ok(0);
    }
    let m: Manifest = serde_json::from_value(rec.plan.clone()).context("reading the run's plan")?;
    let mut plan = plan::build(m)?;
    plan.downloads = Downloads::Allowed;
    let remote = remote_url(remote_flag, &plan.manifest);
    // As the run started, unless told otherwise.
    let executor = executor.unwrap_or_else(|| {
        rec.events
            .iter()
            .rev()
            .find_map(|e| match e {
                RunEvent::RunStarted { executor, .. } => Some(*executor),
                _ => None,
            })
            .unwrap_or_default()
    });
    let remote = remote.map(str::to_string);
    let ranks = job.reconcile(&mut plan.manifest, flags.ranks, executor)?;
    let mut opts = RunOptions::new(flags, remote.as_deref(), executor)?;
    plan.check(&store, opts.flags.allow_outside, executor)?;
    if job.needs_launch(ranks, executor) {
        drop(shared);
        return launch_ranks(ranks, plan.manifest.defaults.device);
    }
    opts.ranks = job.ranks;
    if ranks > 1 && executor == Executor::Local {
        // One stage at a time: MPI is called from one stage's thread (see gpt/collective/mpi.rs).
        opts.flags.jobs = 1;
    }
    let run = RunLog::open(&store, &rec.id)?;
    execute_run(&store, &plan, run, shared, "resume", &opts)
}

pub fn status(
    cache: &Path,
    remote_flag: Option<&str>,
    manifest: &Path,
    set: &[String],
    json: bool,
) -> Result<i32> {
    let plan = load_plan(manifest, set)?;
    let store = Store::at(cache);
    let remote = remote_url(remote_flag, &plan.manifest)
        .map(open_remote)
        .transpose()?;
    let stages = exec::status(&store, &plan, remote.as_ref())?;
    let status = PlanStatus::of(&stages);
    let name = &plan.manifest.name;
    let manifest = manifest.display().to_string();
    if json {
        let doc = serde_json::json!({
            "name": name, "manifest": manifest, "status": status, "stages": stages
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("{name} ({manifest}): {status}");
        for st in &stages {
            println!(
                "  {:<14} {:<9} {:<8} {}",
                st.name,
                st.kind,
                st.status,
                st.key.as_ref().map(|k| k.short()).unwrap_or("-")
            );
            for r in &st.reasons {
                println!("      {r}");
            }
        }
    }
    Ok(0)
}

pub fn export_slurm(
    cache: &Path,
    manifest: &Path,
    set: &[String],
    out: Option<PathBuf>,
) -> Result<i32> {
    let mut plan = load_plan(manifest, set)?;
    Job::default().reconcile(&mut plan.manifest, None, Executor::Slurm)?;
    plan.check(&Store::at(cache), false, Executor::Slurm)?;
    let store = Store::open(cache)?;
    let _shared = store.lock_store_shared()?;
    let dir = out.unwrap_or_else(|| PathBuf::from(format!("slurm-{}", plan.manifest.name)));
    // Before the run exists, so a failed export leaves no run that looks interrupted.
    crate::slurm::check_export(&store, &plan, &dir)?;
    // A run record, so the jobs' `run-stage` finds the plan and `pipe show` follows them.
    let run = RunLog::create(&store, &serde_json::to_value(&plan.manifest)?)?;
    run.append(&RunEvent::RunStarted {
        time: utc_now(),
        command: "export-slurm".into(),
        manifest: plan.manifest.path.display().to_string(),
        name: plan.manifest.name.clone(),
        pid: std::process::id(),
        executor: Executor::Slurm,
        sweep: None,
    })?;
    let files = crate::slurm::export(&store, &plan, &run.id, &dir)?;
    println!("run {}", run.id);
    println!(
        "wrote {} job scripts and submit.sh to {}",
        files,
        dir.display()
    );
    println!("submit with: bash {}", dir.join("submit.sh").display());
    println!("follow with: pipe show {}", run.id);
    Ok(0)
}

/// A stage's Slurm job (`run-stage`); under srun, as rank 0 of the train stage's ranks (`job`).
pub fn run_stage(
    cache: &Path,
    remote_flag: Option<&str>,
    run_id: &str,
    stage: &str,
    push: bool,
    job: Job,
) -> Result<i32> {
    let store = Store::open(cache)?;
    // Like a run: gc waits while a job writes to the store.
    let _shared = store.lock_store_shared()?;
    let rec = RunRecord::load(&store, run_id)?;
    if let Some(why) = &rec.damage {
        anyhow::bail!("run {} cannot run a stage: {why}", rec.id);
    }
    let m: Manifest = serde_json::from_value(rec.plan.clone()).context("reading the run's plan")?;
    let mut plan = plan::build(m)?;
    plan.downloads = Downloads::Allowed;
    let (planned, started) = (
        plan.manifest.defaults.ranks.unwrap_or(1),
        job.launched_world.unwrap_or(1),
    );
    let trains = plan
        .manifest
        .stages
        .iter()
        .any(|s| s.name == stage && s.kind == StageKind::Train);
    if trains && planned != started {
        anyhow::bail!(
            "run {}'s plan trains stage `{stage}` on {planned} ranks, but this job started {started}: the job's script starts them with srun (`#SBATCH --ntasks`); run it as written, or resume the run with `--ranks {started}`",
            rec.id
        );
    }
    // Not the run's lock: the process that submitted this job holds it.
    let run = RunLog::attach(&store, &rec.id)?;
    let ui = Ui::new(false);
    let remote = remote_url(remote_flag, &plan.manifest)
        .map(open_remote)
        .transpose()?;
    let runner = exec::Runner {
        store: &store,
        run: &run,
        ui: &ui,
        remote: remote.as_ref(),
        push: push && remote.is_some(),
        cancel: None,
        ranks: job.ranks,
    };
    let by_hand = rec.status != RunStatus::Running;
    let r = crate::slurm::run_stage(&runner, &plan, stage, by_hand)?;
    Ok(if r.done() { 0 } else { 1 })
}

/// The data-parallel job this process is part of, as the command line found it.
#[derive(Clone, Copy, Default)]
pub struct Job<'a> {
    /// The world size of the launcher that started this process (mpirun, srun), if one did.
    pub launched_world: Option<usize>,
    /// Rank 0's view of the other ranks, when there are several.
    pub ranks: Option<&'a Ranks>,
}

impl Job<'_> {
    /// Settles the number of ranks of `m`'s train stages (`defaults.ranks` in its keys): the
    /// launcher's world size, which `--ranks` or `defaults.ranks` must then agree with; else
    /// `--ranks`, else the manifest's. One rank is written as none, so keys stay one rank's.
    fn reconcile(
        &self,
        m: &mut Manifest,
        flag: Option<usize>,
        executor: Executor,
    ) -> Result<usize> {
        if flag == Some(0) {
            return Err(InputError::new("--ranks 0: expected 1 or more", None).into());
        }
        let wanted = flag.or(m.defaults.ranks);
        if executor == Executor::Slurm {
            // The submitter's own launcher (say an interactive `srun` shell) does not matter: each
            // train stage's job starts its ranks.
            let ranks = self.slurm_ranks(m, wanted)?;
            m.defaults.ranks = (ranks > 1).then_some(ranks);
            return Ok(ranks);
        }
        let ranks = match self.launched_world {
            Some(world) => {
                if let Some(n) = wanted
                    && n != world
                {
                    return Err(InputError::new(
                        format!("the manifest (or --ranks) asks for {n} ranks, but the launcher started {world}"),
                        Some("give the launcher the same count (mpirun -np N), or drop `ranks` / --ranks: under a launcher its world size is used"),
                    )
                    .into());
                }
                world
            }
            None => wanted.unwrap_or(1),
        };
        if let Some(r) = self.ranks {
            r.backend().check_device(m.defaults.device)?;
        }
        m.defaults.ranks = (ranks > 1).then_some(ranks);
        Ok(ranks)
    }

    /// Under the Slurm executor each train stage's job starts its ranks with srun: as many as
    /// `--ranks` / `defaults.ranks` say, or as the train stages' `resources` ask for (nodes ×
    /// tasks_per_node, when both are given; one of them alone only lays out the ranks). The two
    /// must agree, and so must the train stages: a run has one world size.
    fn slurm_ranks(&self, m: &Manifest, wanted: Option<usize>) -> Result<usize> {
        if self.launched_world.is_some_and(|w| w > 1) {
            return Err(InputError::new(
                "`--executor slurm` was started as several ranks: the submitting pipe is one process, and each train stage's job starts its own ranks with srun",
                Some("run `pipe run M.yaml --executor slurm` without mpirun or srun"),
            )
            .into());
        }
        let mut asked: Option<(usize, &str)> = None;
        for s in m.stages.iter().filter(|s| s.kind == StageKind::Train) {
            let (Some(nodes), Some(per_node)) = (s.resources.nodes, s.resources.tasks_per_node)
            else {
                continue;
            };
            let tasks = (nodes * per_node) as usize;
            match asked {
                Some((n, other)) if n != tasks => {
                    return Err(InputError::new(
                        format!("train stages `{other}` and `{}` ask Slurm for different numbers of ranks ({n} and {tasks}, nodes × tasks_per_node)", s.name),
                        Some("a run trains on one number of ranks: give the train stages the same nodes × tasks_per_node"),
                    )
                    .into());
                }
                _ => asked = Some((tasks, &s.name)),
            }
        }
        Ok(match (wanted, asked) {
            (Some(n), Some((tasks, stage))) if n != tasks => {
                return Err(InputError::new(
                    format!("--ranks (or defaults.ranks) asks for {n} ranks, but stage `{stage}`'s resources ask Slurm for {tasks} (nodes × tasks_per_node)"),
                    Some("make them agree, or give only one of them"),
                )
                .into());
            }
            (Some(n), _) => n,
            (None, Some((tasks, _))) => tasks,
            (None, None) => 1,
        })
    }

    /// Whether pipe must start the ranks itself (`mpirun -np N`): more than one is asked for, no
    /// launcher started this process, and the stages run here (a Slurm job starts its own).
    fn needs_launch(&self, ranks: usize, executor: Executor) -> bool {
        ranks > 1 && self.launched_world.is_none() && executor == Executor::Local
    }
}

/// Runs this same command as `ranks` ranks on this machine, and returns its exit code: rank 0
/// then does what this process would have done. CPU ranks run under `mpirun`; GPU ranks
/// (`device: cuda`) are started by pipe itself, one per GPU, as torchrun would start them.
fn launch_ranks(ranks: usize, device: crate::gpt::device::Device) -> Result<i32> {
    let exe = std::env::current_exe().context("finding this pipe's executable")?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let failed = format!(
        "the {ranks} data-parallel ranks ended badly: a rank died, was killed or hung (its message is above). What was written is safe: `pipe resume RUN_ID` (the run printed above) continues from the last checkpoint"
    );
    if device.is_cuda() {
        return match crate::launch::run_gpu_ranks(ranks, &exe, &args)? {
            crate::launch::RanksEnded::Rank0(code) => Ok(code),
            crate::launch::RanksEnded::Failed { rank, status } => {
                anyhow::bail!("rank {rank} ended with {status}; {failed}")
            }
        };
    }
    if !cfg!(feature = "mpi") {
        return Err(InputError::new(
            format!("{ranks} data-parallel ranks need MPI, and this pipe was built without it"),
            Some("install Debian's `openmpi-bin`, `libopenmpi-dev` and `libclang-dev`, then build with `cargo build --release --features mpi`"),
        )
        .into());
    }
    let mpirun = crate::launch::find_mpirun()?;
    let mut cmd = crate::launch::mpirun_command(&mpirun, ranks, &exe, &args);
    tracing::info!(?cmd, "starting the ranks");
    let status = cmd
        .status()
        .with_context(|| format!("running {}", mpirun.display()))?;
    match status.code() {
        // Rank 0's own result: it has printed what happened.
        Some(code @ 0..=2) => Ok(code),
        _ => anyhow::bail!("mpirun ended with {status}: {failed}"),
    }
}

/// How `run` and `resume` execute a plan.
pub(super) struct RunOptions<'a> {
    pub(super) flags: RunFlags,
    pub(super) remote: Option<Remote>,
    pub(super) executor: Executor,
    /// Rank 0's view of the other data-parallel ranks, when there are any.
    pub(super) ranks: Option<&'a Ranks>,
}

impl RunOptions<'_> {
    pub(super) fn new(
        flags: RunFlags,
        remote: Option<&str>,
        executor: Executor,
    ) -> Result<RunOptions<'static>> {
        let remote = if flags.push {
            Some(required_remote(remote, "--push")?)
        } else {
            remote.map(open_remote).transpose()?
        };
        Ok(RunOptions {
            flags,
            remote,
            executor,
            ranks: None,
        })
    }
}

/// `--remote` (or PIPE_REMOTE), else the manifest's `defaults.remote`.
pub(super) fn remote_url<'a>(flag: Option<&'a str>, m: &'a Manifest) -> Option<&'a str> {
    flag.or(m.defaults.remote.as_deref())
}

/// The remote store `what` needs: none given is bad input (exit 2).
pub(super) fn required_remote(url: Option<&str>, what: &str) -> Result<Remote> {
    open_remote(required_url(url, what)?)
}

/// The remote URL `what` needs: none given is bad input (exit 2).
pub(super) fn required_url<'a>(url: Option<&'a str>, what: &str) -> Result<&'a str> {
    Ok(url.ok_or_else(|| {
        InputError::new(
            format!("{what} needs a remote store"),
            Some("give one with --remote URL or PIPE_REMOTE (s3://bucket/prefix or file:///path)"),
        )
    })?)
}

/// A remote URL that cannot be used is bad input (exit 2).
pub(super) fn open_remote(url: &str) -> Result<Remote> {
    Remote::open(url).map_err(|e| InputError::new(format!("{e:#}"), None).into())
}

/// Executes `plan` as run `run` (logged from `run_started` to `run_finished`), up to `jobs`
/// stages at once: its summary.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_plan(
    store: &Store,
    plan: &plan::Plan,
    run: &RunLog,
    command: &str,
    opts: &RunOptions,
    ui: &Ui,
    jobs: usize,
    sweep: Option<crate::run::SweepMember>,
    cancel: Option<&std::sync::atomic::AtomicBool>,
) -> Result<RunSummary> {
    let executor = opts.executor;
    run.append(&RunEvent::RunStarted {
        time: utc_now(),
        command: command.into(),
        manifest: plan.manifest.path.display().to_string(),
        name: plan.manifest.name.clone(),
        pid: std::process::id(),
        executor,
        sweep,
    })?;
    ui.say(&format!(
        "run {} ({}: {})",
        run.id,
        plan.manifest.name,
        plan.manifest.path.display()
    ));
    let runner = exec::Runner {
        store,
        run,
        ui,
        remote: opts.remote.as_ref(),
        push: opts.flags.push,
        cancel,
        ranks: opts.ranks,
    };
    let stages = match executor {
        Executor::Local => exec::execute(&runner, plan, jobs)?,
        Executor::Slurm => crate::slurm::execute(&runner, plan)?,
    };
    let status = if stages.iter().all(|s| s.done()) {
        RunStatus::Succeeded
    } else {
        RunStatus::Failed
    };
    run.append(&RunEvent::RunFinished {
        time: utc_now(),
        status,
    })?;
    Ok(RunSummary {
        run_id: run.id.clone(),
        name: plan.manifest.name.clone(),
        manifest: plan.manifest.path.display().to_string(),
        status,
        stages,
    })
}

/// Ctrl-C: everything written so far is safe (atomic writes, fsynced logs); says how `what`
/// (`run ID`, `sweep ID`) continues. With Slurm, the watchers cancel their jobs first (and then
/// exit 130).
pub(super) fn on_interrupt(executor: Executor, what: String, id: String) {
    let _ = ctrlc::set_handler(move || match executor {
        Executor::Slurm => crate::slurm::interrupt(),
        Executor::Local => {
            eprintln!(
                "\ninterrupted: {what} can continue from its last checkpoint with `pipe resume {id}`"
            );
            std::process::exit(130);
        }
    });
}

/// A manifest with its `--set` overrides, validated into a plan.
fn load_plan(manifest: &std::path::Path, set: &[String]) -> Result<plan::Plan> {
    plan::build(manifest::load(manifest, &parse_overrides(set)?)?)
}

fn parse_overrides(set: &[String]) -> Result<Vec<manifest::Override>> {
    set.iter().map(|s| manifest::parse_override(s)).collect()
}

fn execute_run(
    store: &Store,
    plan: &plan::Plan,
    run: RunLog,
    _shared: crate::store::Lock,
    command: &str,
    opts: &RunOptions,
) -> Result<i32> {
    let json = opts.flags.json;
    let ui = Ui::new(json);
    on_interrupt(opts.executor, format!("run {}", run.id), run.id.clone());
    let summary = run_plan(
        store,
        plan,
        &run,
        command,
        opts,
        &ui,
        opts.flags.jobs,
        None,
        None,
    )?;
    let ok = summary.status == RunStatus::Succeeded;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        eprintln!();
        show::print_summary(&summary);
        if !ok {
            eprintln!(
                "\nrun {} failed. If the cause was outside pipe (a file, the network, memory), fix it and `pipe resume {}`; to change parameters, `pipe run` again (finished stages are reused)",
                run.id, run.id
            );
        }
    }
    Ok(if ok { 0 } else { 1 })
}
