//! The command line: parses arguments (clap), calls the runner, prints results (human tables, or one
//! JSON document with `--json`). The commands that execute a manifest (`run`, `resume`, `status`,
//! `export-slurm`, `run-stage`) are in `running.rs`; the store's commands are here.

use crate::error::InputError;
use crate::gpt::device::Device;
use crate::run::{Executor, RunRecord};
use crate::store::Store;
use crate::{maintain, show};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

mod running;
mod sweeping;
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
    /// A remote store shared across machines: s3://bucket/prefix (AWS_* variables, AWS_ENDPOINT_URL
    /// for MinIO/Ceph/moto) or file:///path. `run` downloads the stages it has (`pulled`).
    #[arg(long, global = true, env = "PIPE_REMOTE", value_name = "URL")]
    pub remote: Option<String>,
    /// More logging (or set RUST_LOG).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a manifest, reusing every cached stage; with `--sweep` (or a manifest's `sweep:`),
    /// every variant of it.
    Run {
        manifest: PathBuf,
        /// Override a parameter: stage.key=value (or device=, seed=), like nanoGPT's --key=value.
        #[arg(long = "set", value_name = "STAGE.KEY=VALUE")]
        set: Vec<String>,
        /// Sweep a parameter over values (read as YAML, like --set's): every combination of the
        /// --sweep axes (and the manifest's `sweep:`) is one variant, an ordinary run.
        #[arg(long = "sweep", value_name = "STAGE.KEY=V1,V2,...")]
        sweep: Vec<String>,
        /// Run a sweep of more than 1,000 variants.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        flags: RunFlags,
        /// Where stages run: here (local), or as Slurm jobs against this store (slurm).
        #[arg(long, value_enum, default_value_t = Executor::Local)]
        executor: Executor,
    },
    /// Continue an interrupted (or failed) run from its last cached stage and checkpoint; for a
    /// sweep id, every variant that did not finish.
    Resume {
        run_id: String,
        #[command(flatten)]
        flags: RunFlags,
        /// Where stages run (default: as the run started).
        #[arg(long, value_enum)]
        executor: Option<Executor>,
    },
    /// What `run` would do for a manifest: cached stages, and why the others would rerun.
    Status {
        manifest: PathBuf,
        #[arg(long = "set", value_name = "STAGE.KEY=VALUE")]
        set: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Write the manifest equivalent to another tool's configuration. `pipe import nanogpt
    /// config/train_shakespeare_char.py --device=cpu` is `python train.py
    /// config/train_shakespeare_char.py --device=cpu` as a manifest: config files and --key=value
    /// overrides in order, as nanoGPT's configurator.py applies them (files are read, never run).
    Import {
        #[arg(value_enum)]
        tool: ImportTool,
        /// Write the manifest here instead of to standard output (an existing file is kept unless
        /// --force).
        #[arg(short = 'o', long = "out")]
        out: Option<PathBuf>,
        /// Overwrite --out if it exists.
        #[arg(long)]
        force: bool,
        /// Config files and --key=value overrides, in order.
        #[arg(allow_hyphen_values = true, num_args = 0.., value_name = "CONFIG.py | --KEY=VALUE")]
        args: Vec<String>,
    },
    /// Runs (no argument), one run's DAG (a run id), or an artifact's lineage (a hash or prefix).
    Show {
        target: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Compare runs: one row per run, the parameters that differ and the training metrics. By
    /// default the latest sweep, or the runs of the latest run's manifest.
    Compare {
        /// A sweep id, or run ids.
        targets: Vec<String>,
        /// The runs of this manifest file.
        #[arg(long, conflicts_with = "targets")]
        manifest: Option<PathBuf>,
        /// Show every parameter, not only those that differ.
        #[arg(long)]
        all: bool,
        /// The metric to sort by: best_val_loss (default), best_iter, final_train_loss,
        /// final_val_loss, tokens_per_second (highest first), wall_seconds.
        #[arg(long, default_value = "best_val_loss")]
        sort: String,
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        #[arg(long)]
        csv: bool,
        /// Overlay the runs' loss curves: FILE.svg, or FILE.html (one self-contained page).
        #[arg(long, value_name = "FILE")]
        plot: Option<PathBuf>,
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
    /// Upload a run's finished stages (default: the latest run) to the remote store (--remote).
    Push { run_id: Option<String> },
    /// The remote store (--remote or PIPE_REMOTE).
    Remote {
        #[command(subcommand)]
        command: RemoteCommand,
    },
    /// Write a manifest's stages as sbatch scripts and a submit.sh, for submitting by hand.
    ExportSlurm {
        manifest: PathBuf,
        #[arg(long = "set", value_name = "STAGE.KEY=VALUE")]
        set: Vec<String>,
        /// The folder to write (default: slurm-<manifest name>).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// A Slurm job's body: run one stage of a run whose earlier stages are in the store.
    #[command(hide = true)]
    RunStage {
        run_id: String,
        stage: String,
        /// Upload the stage's result to the remote store (the submitting run's `--push`).
        #[arg(long)]
        push: bool,
    },
    /// Measure the engine: ms/iter and tokens/s for nanoGPT's CPU and GPU configs, and sampling.
    Bench {
        /// Fewer iterations (a quick look).
        #[arg(long)]
        quick: bool,
        /// cpu (the default), or cuda for the GPU table, every dtype (needs a build with
        /// --features cuda).
        #[arg(long, default_value = "cpu", value_parser = bench_device)]
        device: Device,
    },
}

/// `bench --device`: the device (the manifest's `device` values; the GPU table measures every
/// dtype, so the precision here is only the reference one).
fn bench_device(s: &str) -> Result<Device, String> {
    Device::from_defaults(s, "float32").map_err(|e| e.to_string())
}

/// The flags `run` and `resume` share.
#[derive(clap::Args)]
pub struct RunFlags {
    /// Print one JSON document (run id, status, per-stage results) on stdout.
    #[arg(long)]
    pub json: bool,
    /// Independent stages to run at once.
    #[arg(short, long, default_value_t = 1)]
    pub jobs: usize,
    /// Let `export` stages write outside the manifest's folder and the current directory.
    #[arg(long)]
    pub allow_outside: bool,
    /// Upload each finished stage (outputs, then its record) to the remote store.
    #[arg(long)]
    pub push: bool,
    /// A sweep: stop at the first stage that fails, in any variant: no stage starts after it and
    /// running training stops at its next step. The sweep can still be resumed.
    #[arg(long)]
    pub fail_fast: bool,
    /// Train on N data-parallel ranks on this machine (started with `mpirun -np N`; needs a
    /// build with `--features mpi`). Under mpirun or srun, the launcher's count is used.
    #[arg(long, value_name = "N")]
    pub ranks: Option<usize>,
}

/// Whose configuration `pipe import` reads.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ImportTool {
    /// nanoGPT's train.py configs (config/*.py) and --key=value overrides.
    Nanogpt,
}

#[derive(Subcommand)]
pub enum RemoteCommand {
    /// Make the URL a remote (a file:// folder is created): writes its pipe-remote.json. Every
    /// other use of a remote without one fails, so a mistyped bucket or an unmounted share is
    /// never taken for an empty remote.
    Init,
    /// Probe the remote: initialised, a create-if-absent put, a second one that must be refused,
    /// a get, a delete; for a shared folder, removes partial uploads left by pushes killed over a
    /// day ago.
    Check,
}

impl Cli {
    /// Whether the command asked for one JSON document on stdout (errors then come as JSON too).
    pub fn wants_json(&self) -> bool {
        match &self.command {
            Command::Run { flags, .. } | Command::Resume { flags, .. } => flags.json,
            Command::Status { json, .. }
            | Command::Show { json, .. }
            | Command::Compare { json, .. } => *json,
            _ => false,
        }
    }
}

/// The most engine threads `--threads` takes.
const MAX_THREADS: usize = 1024;

pub fn run(cli: Cli) -> Result<i32> {
    let placement = crate::launch::from_process()?;
    let ranks = match &placement {
        Some(p) if p.world > 1 => Some(join_ranks(p.clone(), cli.threads)?),
        _ => None,
    };
    let job = running::Job {
        launched_world: placement.as_ref().map(|p| p.world),
        ranks: ranks.as_ref(),
    };
    if let Some(r) = &ranks
        && !r.is_leader()
    {
        // Rank 0 runs the command; this rank joins its training stages.
        r.follow(crate::ranks::step_timeout()?)?;
        return Ok(0);
    }
    let result = run_command(cli, job);
    if let Some(r) = &ranks {
        r.dismiss();
    }
    result
}

/// Joins the job as one of its ranks, with this machine's cores shared among its ranks (unless
/// `--threads` says otherwise).
fn join_ranks(p: crate::launch::Placement, threads: Option<usize>) -> Result<crate::ranks::Ranks> {
    if threads.is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let share = (cores / p.local_world.unwrap_or(1).max(1)).max(1);
        rayon::ThreadPoolBuilder::new()
            .num_threads(share)
            .build_global()
            .ok();
    }
    crate::ranks::Ranks::join(p)
}

fn run_command(cli: Cli, job: running::Job) -> Result<i32> {
    if let Some(t) = cli.threads {
        // Each thread is a process-wide resource: 5000 took 20 s to start, 100000 would exhaust
        // the machine's PIDs.
        if t == 0 || t > MAX_THREADS {
            return Err(InputError::new(
                format!("--threads {t}: expected 1 to {MAX_THREADS}"),
                Some("leave it out to use every core (results do not depend on it)"),
            )
            .into());
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .ok();
    }
    // Without remote support, a remote given to any command is refused as `run` refuses it, not
    // ignored (`gc --remote URL` would otherwise look as if it had cleaned the remote).
    if let Some(url) = cli.remote.as_deref()
        && !cfg!(feature = "remote")
    {
        running::open_remote(url)?;
    }
    match cli.command {
        Command::Run {
            manifest,
            set,
            sweep,
            yes,
            flags,
            executor,
        } => running::run(
            &cli.cache,
            cli.remote.as_deref(),
            &manifest,
            &set,
            &sweep,
            yes,
            flags,
            executor,
            job,
        ),
        Command::Resume {
            run_id,
            flags,
            executor,
        } => running::resume(
            &cli.cache,
            cli.remote.as_deref(),
            &run_id,
            flags,
            executor,
            job,
        ),
        Command::Status {
            manifest,
            set,
            json,
        } => running::status(&cli.cache, cli.remote.as_deref(), &manifest, &set, json),
        Command::Import {
            tool: ImportTool::Nanogpt,
            out,
            force,
            args,
        } => {
            // -o/--out/--force may come after the config files: clap then takes them as
            // positional (train.py has no keys of these names).
            let (mut out, mut force, mut rest) = (out, force, Vec::new());
            let mut it = args.into_iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "-o" | "--out" => {
                        let Some(p) = it.next() else {
                            return Err(InputError::new(
                                format!("{a} needs a file"),
                                Some("e.g. -o train.yaml"),
                            )
                            .into());
                        };
                        out = Some(PathBuf::from(p));
                    }
                    "--force" => force = true,
                    _ => match a.strip_prefix("--out=") {
                        Some(p) => out = Some(PathBuf::from(p)),
                        None => rest.push(a),
                    },
                }
            }
            let yaml = crate::nanogpt_config::import(&rest)?;
            match out {
                None => print!("{yaml}"),
                Some(path) => {
                    if path.exists() && !force {
                        return Err(InputError::new(
                            format!("{} exists", path.display()),
                            Some("give another --out, or --force to overwrite it"),
                        )
                        .into());
                    }
                    std::fs::write(&path, &yaml)
                        .with_context(|| format!("writing {}", path.display()))?;
                    eprintln!(
                        "wrote {}: run it with `pipe run {}`",
                        path.display(),
                        path.display()
                    );
                }
            }
            Ok(0)
        }
        Command::Show { target, json } => {
            let store = Store::at(&cli.cache);
            match target {
                None => {
                    let v = show::RunsList::read(&store)?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&v)?)
                    } else {
                        v.print()
                    }
                }
                Some(t) => {
                    let is_run = RunRecord::load(&store, &t).is_ok();
                    if let Some(sweep) = crate::sweep::SweepRecord::find(&store, &t)? {
                        let v = show::SweepListing::read(&store, &sweep);
                        if json {
                            println!("{}", serde_json::to_string_pretty(&v)?)
                        } else {
                            v.print()
                        }
                    } else if is_run {
                        let summary = show::run_summary(&store, &t)?;
                        if json {
                            println!("{}", serde_json::to_string_pretty(&summary)?)
                        } else {
                            show::print_summary(&summary)
                        }
                    } else if let Some(hash) = store.resolve_object(&t)? {
                        let v = show::Lineage::read(&store, &hash)?;
                        if json {
                            println!("{}", serde_json::to_string_pretty(&v)?)
                        } else {
                            v.print()
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
        Command::Compare {
            targets,
            manifest,
            all,
            sort,
            json,
            csv,
            plot,
        } => {
            let store = Store::at(&cli.cache);
            let manifest = manifest.map(|m| m.display().to_string());
            let ids = crate::compare::select(&store, &targets, manifest.as_deref())?;
            if !crate::compare::METRICS.contains(&sort.as_str()) {
                return Err(InputError::new(
                    format!("--sort {sort:?} is not a metric"),
                    Some(&format!(
                        "choose one of {}",
                        crate::compare::METRICS.join(", ")
                    )),
                )
                .into());
            }
            let rows = crate::compare::rows(&store, &ids, &sort)?;
            let shown = if all {
                let mut keys: Vec<String> =
                    rows.iter().flat_map(|r| r.params.keys().cloned()).collect();
                keys.sort();
                keys.dedup();
                keys
            } else {
                crate::compare::differing(&rows)
            };
            if let Some(path) = &plot {
                let html = path.extension().is_some_and(|e| e == "html" || e == "htm");
                let text = if html {
                    crate::compare::plot_html(&rows, &shown)
                } else {
                    crate::compare::plot_svg(&rows, &shown)
                };
                std::fs::write(path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            if json {
                let doc = crate::compare::to_json(&rows, &shown);
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else if csv {
                print!("{}", crate::compare::csv(&rows, &shown));
            } else {
                print!("{}", crate::compare::table(&rows, &shown));
            }
            Ok(0)
        }
        Command::Forget { run_id } => {
            let store = Store::open(&cli.cache)?;
            let id = maintain::forget(&store, &run_id)?;
            println!("forgot run {id}; `pipe gc` reclaims what only it referenced");
            Ok(0)
        }
        Command::Pin { hash, remove } => {
            let store = Store::open(&cli.cache)?;
            let _shared = store.lock_store_shared()?;
            let Some(h) = store.resolve_object(&hash)? else {
                return Err(InputError::new(
                    format!("no object {hash:?} in {}", store.root.display()),
                    Some("give an output's hash (or 6+ of its first hex digits), as `pipe show RUN` lists them"),
                )
                .into());
            };
            let changed = store.set_pin(&h, !remove)?;
            if remove && !changed {
                let pinned = store.pins()?.len();
                return Err(InputError::new(
                    format!("{h} is not pinned, so there is nothing to unpin"),
                    Some(&format!(
                        "{pinned} objects are pinned; `pipe pin HASH` pins one"
                    )),
                )
                .into());
            }
            let what = match (remove, changed) {
                (true, _) => "unpinned",
                (false, true) => "pinned",
                (false, false) => "already pinned",
            };
            println!("{what} {h}");
            Ok(0)
        }
        Command::Gc {
            dry_run,
            drop_checkpoints,
        } => {
            let store = Store::open(&cli.cache)?;
            let r = maintain::gc(&store, dry_run, !drop_checkpoints)?;
            if r.during_a_run {
                eprintln!(
                    "note: a run is using the store; objects it has not recorded yet count as removable below, and `pipe gc` itself waits for it to finish"
                );
            }
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
            // A store on a read-only filesystem is checked and reported, not repaired (and no
            // run can be writing it).
            let (_lock, repair) = match store.try_lock_store_exclusive() {
                Ok(Some(lock)) => (Some(lock), crate::store::Repair::Yes),
                Ok(None) => anyhow::bail!(
                    "a pipe run is using the store {}; run verify when it has finished",
                    store.root.display()
                ),
                Err(e) if is_read_only(&e) => {
                    println!(
                        "the store {} is read-only: verify checks it and changes nothing",
                        store.root.display()
                    );
                    (None, crate::store::Repair::ReportOnly)
                }
                Err(e) => return Err(e),
            };
            let r = maintain::verify(&store, repair)?;
            let done = match repair {
                crate::store::Repair::Yes => "moved aside; the stage that made it will rerun",
                crate::store::Repair::ReportOnly => "left in place: the store is read-only",
            };
            for h in &r.corrupted {
                println!("CORRUPTED object {h} ({done})");
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
        Command::Push { run_id } => {
            let remote = running::required_remote(cli.remote.as_deref(), "`pipe push`")?;
            let store = Store::at(&cli.cache);
            maintain::push(&store, &remote, run_id.as_deref())?;
            Ok(0)
        }
        Command::Remote {
            command: RemoteCommand::Init,
        } => {
            let url = running::required_url(cli.remote.as_deref(), "`pipe remote init`")?;
            println!(
                "{}",
                crate::store::remote::Remote::init(url)
                    .map_err(|e| InputError::new(format!("{e:#}"), None))?
            );
            Ok(0)
        }
        Command::Remote {
            command: RemoteCommand::Check,
        } => {
            let remote = running::required_remote(cli.remote.as_deref(), "`pipe remote check`")?;
            println!("remote {}", remote.url());
            let mut ok = true;
            for (step, r) in remote.check() {
                match r {
                    Ok(()) => println!("  ok      {step}"),
                    Err(e) => {
                        ok = false;
                        println!("  FAILED  {step}: {e:#}");
                    }
                }
            }
            Ok(if ok { 0 } else { 1 })
        }
        Command::ExportSlurm { manifest, set, out } => {
            running::export_slurm(&cli.cache, &manifest, &set, out)
        }
        Command::RunStage {
            run_id,
            stage,
            push,
        } => running::run_stage(
            &cli.cache,
            cli.remote.as_deref(),
            &run_id,
            &stage,
            push,
            job,
        ),
        Command::Bench { quick, device } => {
            match device {
                Device::Cuda(_) => crate::bench::run_gpu(quick)?,
                Device::Cpu => crate::bench::run(quick)?,
            }
            Ok(0)
        }
    }
}

/// Whether `e` comes from writing to a read-only filesystem.
fn is_read_only(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ReadOnlyFilesystem)
    })
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
