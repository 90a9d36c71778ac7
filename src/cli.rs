//! The command line: parses arguments (clap), calls the runner, prints results (human tables, or one
//! JSON document with `--json`).

use crate::error::InputError;
use crate::exec::{self, PlanStatus, RunSummary};
use crate::manifest::{self, Manifest};
use crate::plan;
use crate::run::{RunEvent, RunLog, RunRecord, RunStatus, utc_now};
use crate::show;
use crate::store::Store;
use crate::ui::Ui;
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "pipe",
    version,
    about = "Declarative, reproducible GPT experiments (nanoGPT as YAML manifests)"
)]
pub struct Cli {
    /// The content-addressed store (default ./cache).
    #[arg(long, global = true, env = "PIPE_CACHE", default_value = "cache")]
    pub cache: PathBuf,
    /// CPU threads for the engine (default: all cores). Results do not depend on it.
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// More logging (or set RUST_LOG).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a manifest, reusing every cached stage.
    Run {
        manifest: PathBuf,
        /// Override a parameter: stage.key=value (or device=, seed=), like nanoGPT's --key=value.
        #[arg(long = "set", value_name = "STAGE.KEY=VALUE")]
        set: Vec<String>,
        /// Print one JSON document (run id, status, per-stage results) on stdout.
        #[arg(long)]
        json: bool,
        /// Independent stages to run at once.
        #[arg(short, long, default_value_t = 1)]
        jobs: usize,
        /// Let `export` stages write outside the manifest's folder and the current directory.
        #[arg(long)]
        allow_outside: bool,
    },
    /// Continue an interrupted (or failed) run from its last cached stage and checkpoint.
    Resume {
        run_id: String,
        #[arg(long)]
        json: bool,
        #[arg(short, long, default_value_t = 1)]
        jobs: usize,
        /// Let `export` stages write outside the manifest's folder and the current directory.
        #[arg(long)]
        allow_outside: bool,
    },
    /// What `run` would do for a manifest: cached stages, and why the others would rerun.
    Status {
        manifest: PathBuf,
        #[arg(long = "set", value_name = "STAGE.KEY=VALUE")]
        set: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Runs (no argument), one run's DAG (a run id), or an artifact's lineage (a hash or prefix).
    Show {
        target: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove objects that no run record and no pin references (and leftovers of killed processes).
    Gc {
        #[arg(long)]
        dry_run: bool,
        /// Also remove the intermediate checkpoints of finished runs (their final outputs stay).
        #[arg(long)]
        drop_checkpoints: bool,
    },
    /// Delete a run's record, so `gc` can reclaim what only it referenced.
    Forget { run_id: String },
    /// Keep an artifact through `gc` even when no run references it (`--remove` to unpin).
    Pin {
        hash: String,
        #[arg(long)]
        remove: bool,
    },
    /// Check the store: re-hash every object, check action, progress and run records; corrupted
    /// objects and damaged records are reported and set aside, so the stages that made them rerun.
    Verify,
    /// Write a stored artifact's bytes to stdout or a file.
    Cat {
        hash: String,
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Measure the engine: ms/iter and tokens/s for nanoGPT's CPU and GPU configs, and sampling.
    Bench {
        /// Fewer iterations (a quick look).
        #[arg(long)]
        quick: bool,
        /// cpu (the default), or cuda for the GPU table (needs a build with --features cuda).
        #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
        device: String,
    },
}

impl Cli {
    /// Whether the command asked for one JSON document on stdout (errors then come as JSON too).
    pub fn wants_json(&self) -> bool {
        match &self.command {
            Command::Run { json, .. }
            | Command::Resume { json, .. }
            | Command::Status { json, .. }
            | Command::Show { json, .. } => *json,
            _ => false,
        }
    }
}

pub fn run(cli: Cli) -> Result<i32> {
    if let Some(t) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .ok();
    }
    match cli.command {
        Command::Run {
            manifest,
            set,
            json,
            jobs,
            allow_outside,
        } => {
            crate::stages::allow_downloads();
            let plan = load_plan(&manifest, &set)?;
            // Validate what can fail before anything is written (missing files, bad checkpoints).
            let read_only = Store::at(&cli.cache);
            check_plan(&read_only, &plan, allow_outside)?;
            let store = Store::open(&cli.cache)?;
            // Held from before the run's first write, so `gc` never removes what it is writing.
            let shared = store.lock_store_shared()?;
            let run = RunLog::create(&store, &serde_json::to_value(&plan.manifest)?)?;
            execute_run(&store, &plan, run, shared, "run", json, jobs)
        }
        Command::Resume {
            run_id,
            json,
            jobs,
            allow_outside,
        } => {
            crate::stages::allow_downloads();
            let store = Store::open(&cli.cache)?;
            let shared = store.lock_store_shared()?;
            let rec = RunRecord::load(&store, &run_id)?;
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
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&show::run_summary(&store, &rec.id)?)?
                    );
                }
                return Ok(0);
            }
            let m: Manifest =
                serde_json::from_value(rec.plan.clone()).context("reading the run's plan")?;
            let plan = plan::build(m)?;
            check_plan(&store, &plan, allow_outside)?;
            let run = RunLog::open(&store, &rec.id)?;
            execute_run(&store, &plan, run, shared, "resume", json, jobs)
        }
        Command::Status {
            manifest,
            set,
            json,
        } => {
            let plan = load_plan(&manifest, &set)?;
            let store = Store::at(&cli.cache);
            let stages = exec::status(&store, &plan)?;
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
                        st.key.as_deref().map(|k| &k[..12]).unwrap_or("-")
                    );
                    for r in &st.reasons {
                        println!("      {r}");
                    }
                }
            }
            Ok(0)
        }
        Command::Show { target, json } => {
            let store = Store::at(&cli.cache);
            match target {
                None => {
                    let v = show::runs_json(&store)?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&v)?)
                    } else {
                        show::print_runs(&v)
                    }
                }
                Some(t) => {
                    let is_run = RunRecord::load(&store, &t).is_ok();
                    if is_run {
                        let summary = show::run_summary(&store, &t)?;
                        if json {
                            println!("{}", serde_json::to_string_pretty(&summary)?)
                        } else {
                            show::print_summary(&summary)
                        }
                    } else if let Some(hash) = store.resolve_object(&t)? {
                        let v = show::lineage(&store, &hash)?;
                        if json {
                            println!("{}", serde_json::to_string_pretty(&v)?)
                        } else {
                            show::print_lineage(&v)
                        }
                    } else {
                        anyhow::bail!(
                            "{t:?} is neither a run id nor an object hash in {} (list runs with `pipe show`)",
                            store.root.display()
                        );
                    }
                }
            }
            Ok(0)
        }
        Command::Forget { run_id } => {
            let store = Store::open(&cli.cache)?;
            let id = show::forget(&store, &run_id)?;
            println!("forgot run {id}; `pipe gc` reclaims what only it referenced");
            Ok(0)
        }
        Command::Pin { hash, remove } => {
            let store = Store::open(&cli.cache)?;
            let _shared = store.lock_store_shared()?;
            let h = store
                .resolve_object(&hash)?
                .with_context(|| format!("no object {hash:?} in {}", store.root.display()))?;
            store.set_pin(&h, !remove)?;
            println!("{} {h}", if remove { "unpinned" } else { "pinned" });
            Ok(0)
        }
        Command::Gc {
            dry_run,
            drop_checkpoints,
        } => {
            let store = Store::open(&cli.cache)?;
            let r = show::gc(&store, dry_run, !drop_checkpoints)?;
            let verb = if dry_run { "would remove" } else { "removed" };
            println!(
                "{verb} {} objects ({:.1} MB) and {} stale action records; kept {} objects",
                r.removed,
                r.bytes as f64 / 1e6,
                r.actions_removed,
                r.kept
            );
            Ok(0)
        }
        Command::Verify => {
            let store = Store::at(&cli.cache);
            if !store.root.join("objects").exists() {
                println!("no store at {}", store.root.display());
                return Ok(0);
            }
            let Some(_lock) = store.try_lock_store_exclusive()? else {
                anyhow::bail!(
                    "a pipe run is using the store {}; run verify when it has finished",
                    store.root.display()
                );
            };
            let r = show::verify(&store)?;
            for h in &r.corrupted {
                println!("CORRUPTED object {h} (moved aside; the stage that made it will rerun)");
            }
            for d in &r.damaged {
                println!("DAMAGED {d}");
            }
            if r.corrupted.is_empty() && r.damaged.is_empty() {
                println!(
                    "verified {} objects and every record: all intact",
                    r.objects
                );
                Ok(0)
            } else {
                println!(
                    "verified {} objects: {} corrupted, {} damaged record(s)",
                    r.objects,
                    r.corrupted.len(),
                    r.damaged.len()
                );
                Ok(1)
            }
        }
        Command::Cat { hash, output } => {
            let store = Store::at(&cli.cache);
            let h = store
                .resolve_object(&hash)?
                .with_context(|| format!("no object {hash:?} in {}", store.root.display()))?;
            // Streamed: a multi-GB checkpoint is never read into memory.
            match output {
                Some(p) => store.copy_out(&h, &p)?,
                None => {
                    use std::io::Write;
                    let m = store.map(&h)?;
                    let mut out = std::io::stdout().lock();
                    for (i, chunk) in m.bytes().chunks(1 << 20).enumerate() {
                        out.write_all(chunk)?;
                        m.release(i << 20..(i + 1) << 20);
                    }
                    out.flush()?;
                }
            }
            Ok(0)
        }
        Command::Bench { quick, device } => {
            if device == "cuda" {
                crate::bench::run_gpu(quick)?;
            } else {
                crate::bench::run(quick)?;
            }
            Ok(0)
        }
    }
}

/// Everything that can be checked before a run writes anything: each stage's key parts (missing
/// files, bad checkpoints), export destinations, and the GPU.
fn check_plan(store: &Store, plan: &plan::Plan, allow_outside: bool) -> Result<()> {
    for s in &plan.manifest.stages {
        crate::stages::key_parts(store, &plan.manifest, s)?;
        if s.kind == manifest::StageKind::Export && !allow_outside {
            crate::stages::export::check_destination(&plan.manifest, s)?;
        }
    }
    check_device(&plan.manifest)
}

/// With `device: cuda`, finds the GPU before any stage runs, so a missing driver or library is
/// reported up front rather than after the CPU stages.
fn check_device(m: &Manifest) -> Result<()> {
    if m.defaults.device.is_cuda() {
        let name = crate::gpt::cuda::gpu_name()?;
        tracing::info!("device: {name}");
    }
    Ok(())
}

/// A manifest with its `--set` overrides, validated into a plan.
fn load_plan(manifest: &std::path::Path, set: &[String]) -> Result<plan::Plan> {
    let overrides = set
        .iter()
        .map(|s| manifest::parse_override(s))
        .collect::<Result<Vec<_>>>()?;
    plan::build(manifest::load(manifest, &overrides)?)
}

fn execute_run(
    store: &Store,
    plan: &plan::Plan,
    run: RunLog,
    _shared: crate::store::Lock,
    command: &str,
    json: bool,
    jobs: usize,
) -> Result<i32> {
    let ui = Ui::new(json);
    // Ctrl-C: everything written so far is safe (atomic writes, fsynced log); say how to continue.
    let id = run.id.clone();
    let _ = ctrlc::set_handler(move || {
        eprintln!(
            "\ninterrupted: run {id} can continue from its last checkpoint with `pipe resume {id}`"
        );
        std::process::exit(130);
    });
    run.append(&RunEvent::RunStarted {
        time: utc_now(),
        command: command.into(),
        manifest: plan.manifest.path.display().to_string(),
        name: plan.manifest.name.clone(),
        pid: std::process::id(),
    })?;
    ui.say(&format!(
        "run {} ({}: {})",
        run.id,
        plan.manifest.name,
        plan.manifest.path.display()
    ));
    let stages = exec::execute(store, plan, &run, &ui, jobs)?;
    let ok = stages.iter().all(|s| s.done());
    let status = if ok {
        RunStatus::Succeeded
    } else {
        RunStatus::Failed
    };
    run.append(&RunEvent::RunFinished {
        time: utc_now(),
        status,
    })?;
    let summary = RunSummary {
        run_id: run.id.clone(),
        name: plan.manifest.name.clone(),
        manifest: plan.manifest.path.display().to_string(),
        status,
        stages,
    };
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

/// Is this error bad input (exit 2: an [`InputError`]) rather than a failure while running?
pub fn is_input_error(e: &anyhow::Error) -> bool {
    InputError::of(e).is_some()
}

/// The JSON document a `--json` command prints when it fails:
/// `{"error": {"message", "help", "file", "line", "column"}}` (null when unknown).
pub fn error_json(e: &anyhow::Error) -> serde_json::Value {
    let input = InputError::of(e);
    let origin = input.as_ref().and_then(|i| i.origin.as_ref());
    let nonzero = |n: usize| (n > 0).then_some(n);
    serde_json::json!({
        "error": {
            "message": input.as_ref().map_or_else(|| format!("{e:#}"), |i| i.message.clone()),
            "help": input.as_ref().and_then(|i| i.help.clone()),
            "file": origin.map(|o| o.file.clone()),
            "line": origin.and_then(|o| nonzero(o.line)),
            "column": origin.and_then(|o| nonzero(o.col)),
        }
    })
}
