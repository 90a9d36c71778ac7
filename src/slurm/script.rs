//! The text of the sbatch scripts: one per stage (its resources as `#SBATCH` lines, then
//! `pipe run-stage`), and `submit.sh` for `pipe export-slurm`.

use crate::manifest::{Defaults, Resources, StageKind, StageSpec};
use anyhow::{Result, bail};
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Where a run's scripts and job logs live in the store.
pub fn slurm_dir(store_root: &Path, run_id: &str) -> PathBuf {
    store_root.join("runs").join(run_id).join("slurm")
}

/// A stage's job log, `%j` standing for the job id as sbatch's `--output` takes it.
pub fn log_pattern(store_root: &Path, run_id: &str, stage: &str) -> PathBuf {
    slurm_dir(store_root, run_id).join(format!("{stage}-%j.out"))
}

/// The log of job `job_id`.
pub fn log_path(store_root: &Path, run_id: &str, stage: &str, job_id: &str) -> PathBuf {
    slurm_dir(store_root, run_id).join(format!("{stage}-{job_id}.out"))
}

/// `s` as one shell word: single-quoted, each `'` written as `'\''`.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// An `#SBATCH` option value: as is, or in double quotes when it has spaces (sbatch reads those).
fn sbatch_value(v: &str) -> Result<String> {
    if v.contains(['"', '\n', '\r']) {
        bail!("{v:?} cannot be written into an #SBATCH line (it holds a quote or a line break)");
    }
    Ok(if v.contains(char::is_whitespace) {
        format!("\"{v}\"")
    } else {
        v.to_string()
    })
}

/// What one stage's job needs to know.
pub struct Job<'a> {
    pub spec: &'a StageSpec,
    pub defaults: &'a Defaults,
    /// Absolute paths: the job runs in another process, maybe on another machine.
    pub store_root: &'a Path,
    pub pipe_bin: &'a Path,
    pub run_id: &'a str,
    pub manifest_name: &'a str,
    /// The run's remote store and `--push`, passed on to the job (none for `export-slurm`).
    pub remote: Option<&'a str>,
    pub push: bool,
}

/// The sbatch script that runs one stage of a run against the store.
pub fn job_script(job: &Job) -> Result<String> {
    let name = &job.spec.name;
    let r = Resources::for_stage(job.spec, job.defaults);
    let output = log_pattern(job.store_root, job.run_id, name);
    let mut s = String::new();
    writeln!(s, "#!/bin/bash")?;
    writeln!(s, "#SBATCH --job-name=pipe-{name}")?;
    writeln!(
        s,
        "#SBATCH --output={}",
        sbatch_value(&output.display().to_string())?
    )?;
    let ranks = data_parallel_ranks(job.spec, job.defaults);
    // One task per rank; nodes and tasks_per_node, when given, lay them out (plan time checked
    // that their product is the ranks).
    let ntasks = ranks.filter(|_| r.nodes.is_none() || r.tasks_per_node.is_none());
    let lines = [
        ("ntasks", ntasks.map(|n| n.to_string())),
        ("gpus", r.gpus.map(|n| n.to_string())),
        ("nodes", r.nodes.map(|n| n.to_string())),
        ("ntasks-per-node", r.tasks_per_node.map(|n| n.to_string())),
        ("cpus-per-task", r.cpus.map(|n| n.to_string())),
        ("mem", r.mem),
        ("time", r.time),
        ("partition", r.partition),
    ];
    for (opt, v) in lines {
        if let Some(v) = v {
            writeln!(s, "#SBATCH --{opt}={}", sbatch_value(&v)?)?;
        }
    }
    for a in &job.spec.sbatch_args {
        writeln!(s, "#SBATCH {a}")?;
    }
    writeln!(
        s,
        "# pipe: stage `{name}` ({}) of run {} ({})",
        job.spec.kind.name(),
        job.run_id,
        job.manifest_name
    )?;
    writeln!(s, "set -euo pipefail")?;
    let remote = job
        .remote
        .map(|url| format!(" --remote {}", quote(url)))
        .unwrap_or_default();
    let push = if job.push { " --push" } else { "" };
    // srun starts the ranks (rank 0 runs the stage, the others join its training); a rank that
    // fails ends the others at once.
    let srun = if ranks.is_some() {
        "srun --kill-on-bad-exit=1 "
    } else {
        ""
    };
    if ranks.is_some() && job.defaults.device.is_cuda() {
        // GPU ranks talk through NCCL; rank 0 hands out its id on the first node.
        writeln!(s, "export PIPE_COLLECTIVE=nccl")?;
    }
    // `--` before the run and stage: a name is never read as an option.
    writeln!(
        s,
        "exec {srun}{} --cache {}{remote} run-stage{push} -- {} {}",
        quote(&job.pipe_bin.display().to_string()),
        quote(&job.store_root.display().to_string()),
        quote(job.run_id),
        quote(name)
    )?;
    Ok(s)
}

/// The ranks a train stage's job starts, when it trains data-parallel (`defaults.ranks` > 1, as
/// the run settled it).
fn data_parallel_ranks(spec: &StageSpec, defaults: &Defaults) -> Option<u64> {
    let ranks = defaults.ranks.unwrap_or(1) as u64;
    (spec.kind == StageKind::Train && ranks > 1).then_some(ranks)
}

/// `submit.sh` for `export-slurm`: submits `scripts` (file name and the indices of the scripts
/// it depends on, in dependency order) with afterok dependencies on the ids it captures.
pub fn submit_script(run_id: &str, scripts: &[(String, String, Vec<usize>)]) -> String {
    let mut s = String::new();
    s.push_str("#!/bin/bash\n");
    s.push_str(&format!(
        "# Submits the stages of pipe run {run_id} to Slurm, each after the jobs it needs.\n"
    ));
    s.push_str(&format!("# Follow it with `pipe show {run_id}`.\n"));
    s.push_str("set -euo pipefail\ncd \"$(dirname \"$0\")\"\n");
    for (k, (stage, file, deps)) in scripts.iter().enumerate() {
        let dep = if deps.is_empty() {
            String::new()
        } else {
            let ids: Vec<String> = deps.iter().map(|d| format!("$job{d}")).collect();
            format!(
                " --dependency=afterok:{} --kill-on-invalid-dep=yes",
                ids.join(":")
            )
        };
        s.push_str(&format!(
            "job{k}=$(sbatch --parsable{dep} {})\njob{k}=${{job{k}%%;*}}\necho \"{stage}: job $job{k}\"\n",
            quote(file)
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runs_remote_and_push_reach_the_job() {
        let spec = StageSpec {
            name: "train".into(),
            kind: crate::manifest::StageKind::Train,
            needs: vec![],
            params: Default::default(),
            origin: Default::default(),
            param_origins: Default::default(),
            resources: Default::default(),
            sbatch_args: vec![],
        };
        let defaults = Defaults::default();
        let job = |remote, push| Job {
            spec: &spec,
            defaults: &defaults,
            store_root: Path::new("/s t/cache"),
            pipe_bin: Path::new("/bin/pipe"),
            run_id: "r1",
            manifest_name: "m",
            remote,
            push,
        };
        let text = job_script(&job(Some("file:///shared/remote"), true)).unwrap();
        assert!(text.contains(
            "exec '/bin/pipe' --cache '/s t/cache' --remote 'file:///shared/remote' run-stage --push -- 'r1' 'train'\n"
        ), "{text}");
        assert!(text.contains("#SBATCH --output=\"/s t/cache/runs/r1/slurm/train-%j.out\"\n"));
        let plain = job_script(&job(None, false)).unwrap();
        assert!(
            plain.contains("exec '/bin/pipe' --cache '/s t/cache' run-stage -- 'r1' 'train'\n")
        );
    }

    /// A data-parallel train stage's job asks for one task per rank and starts them with srun;
    /// the other stages' jobs stay one process.
    #[test]
    fn data_parallel_train_jobs_start_their_ranks_with_srun() {
        let spec = |kind, resources| StageSpec {
            name: "train".into(),
            kind,
            needs: vec![],
            params: Default::default(),
            origin: Default::default(),
            param_origins: Default::default(),
            resources,
            sbatch_args: vec![],
        };
        let defaults = Defaults {
            ranks: Some(4),
            ..Default::default()
        };
        let script = |spec: &StageSpec| {
            job_script(&Job {
                spec,
                defaults: &defaults,
                store_root: Path::new("/c"),
                pipe_bin: Path::new("/bin/pipe"),
                run_id: "r1",
                manifest_name: "m",
                remote: None,
                push: false,
            })
            .unwrap()
        };
        let plain = script(&spec(StageKind::Train, Resources::default()));
        assert!(plain.contains("#SBATCH --ntasks=4\n"), "{plain}");
        assert!(plain.contains(
            "exec srun --kill-on-bad-exit=1 '/bin/pipe' --cache '/c' run-stage -- 'r1' 'train'\n"
        ));
        let laid_out = script(&spec(
            StageKind::Train,
            Resources {
                nodes: Some(2),
                tasks_per_node: Some(2),
                ..Default::default()
            },
        ));
        assert!(laid_out.contains("#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=2\n"));
        assert!(!laid_out.contains("--ntasks="), "{laid_out}");
        let prepare = script(&spec(StageKind::Prepare, Resources::default()));
        assert!(
            !prepare.contains("srun") && !prepare.contains("--ntasks"),
            "{prepare}"
        );
    }

    #[test]
    fn quoting_survives_quotes_and_spaces() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(sbatch_value("/a b/x").unwrap(), "\"/a b/x\"");
        assert!(sbatch_value("a\"b").is_err());
    }
}
