//! `--executor slurm`, `run-stage` and `export-slurm` through the binary, against the fake
//! `sbatch`, `squeue`, `sacct` and `scancel` in tests/fake-slurm (state in `FAKE_SLURM_DIR`).

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A sandbox with the tiny pipeline and a fake Slurm.
struct Slurm {
    sb: Sandbox,
    state: PathBuf,
}

impl Slurm {
    fn new(name: &str) -> Slurm {
        let sb = Sandbox::new(&format!("slurm-{name}"));
        sb.write("text.txt", &corpus(20_000));
        sb.write("tiny.yaml", &tiny_manifest(20, 10));
        let state = sb.dir.join("fake-slurm");
        std::fs::create_dir_all(&state).unwrap();
        Slurm { sb, state }
    }

    /// `pipe ARGS` with the fake Slurm first on PATH; `knobs` are the fake's variables.
    fn cmd(&self, args: &[&str], knobs: &[(&str, &str)]) -> Command {
        let fakes = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake-slurm");
        let path = format!(
            "{}:{}",
            fakes.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut c = self.sb.cmd(args);
        c.env("PATH", path)
            .env("FAKE_SLURM_DIR", &self.state)
            .env("PIPE_SLURM_POLL_SECONDS", "0.1")
            .env_remove("FAKE_SLURM_FAIL")
            .env_remove("FAKE_SLURM_LOST")
            .env_remove("FAKE_SLURM_HOLD");
        for (k, v) in knobs {
            c.env(k, v);
        }
        c
    }

    /// Runs and parses `--json` output (whatever the exit code), returning the code too.
    fn json(&self, args: &[&str], knobs: &[(&str, &str)]) -> (i32, serde_json::Value) {
        let out = self.cmd(args, knobs).output().unwrap();
        let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "pipe {args:?}: stdout is not JSON ({e}): {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), doc)
    }

    /// The job names sbatch was called with, in order.
    fn submitted(&self) -> Vec<String> {
        std::fs::read_to_string(self.state.join("sbatch.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
            .collect()
    }

    fn job_state(&self, id: &str) -> String {
        std::fs::read_to_string(self.state.join("jobs").join(id).join("state"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// Starts `pipe ARGS` with stderr read line by line into a channel.
    fn spawn(&self, args: &[&str], knobs: &[(&str, &str)]) -> (Child, mpsc::Receiver<String>) {
        let mut child = self
            .cmd(args, knobs)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (child, rx)
    }
}

/// Waits for a stderr line containing `what` (the process prints it; no timing is asserted, the
/// limit only keeps a broken test from hanging).
fn wait_for(rx: &mpsc::Receiver<String>, what: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => {
                let hit = line.contains(what);
                seen.push(line);
                if hit {
                    return seen;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    panic!("no line containing {what:?} in:\n{}", seen.join("\n"));
}

const ALL: [&str; 4] = ["pipe-data", "pipe-model", "pipe-train", "pipe-sample"];

#[test]
fn a_slurm_run_makes_what_a_local_run_makes_submitting_each_stage_once() {
    let s = Slurm::new("same");
    let other = s.sb.dir.join("local-cache");
    let out =
        s.sb.pipe_with_store(&other, &["run", "tiny.yaml", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let local: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let (code, slurm) = s.json(&["run", "tiny.yaml", "--executor", "slurm", "--json"], &[]);
    assert_eq!(code, 0, "{slurm}");
    assert_eq!(slurm["status"], "succeeded");
    assert_eq!(outputs(&slurm), outputs(&local));
    assert!(
        statuses(&slurm).iter().all(|(_, st)| st == "executed"),
        "{slurm}"
    );
    assert_eq!(s.submitted(), ALL);
    for st in slurm["stages"].as_array().unwrap() {
        let log = st["job_log"].as_str().unwrap();
        assert!(Path::new(log).exists(), "{log}");
        assert!(log.ends_with(&format!("-{}.out", st["job_id"].as_str().unwrap())));
    }
    // The sample stage printed its samples into its job's log.
    let sample_log = stage(&slurm, "sample")["job_log"].as_str().unwrap();
    assert!(
        std::fs::read_to_string(sample_log)
            .unwrap()
            .contains("the ")
    );

    // `show` has the jobs too, from the run log.
    let id = slurm["run_id"].as_str().unwrap();
    let shown = s.sb.json(&["show", id, "--json"]);
    assert_eq!(
        stage(&shown, "train")["job_id"],
        stage(&slurm, "train")["job_id"]
    );
    assert_eq!(statuses(&shown), statuses(&slurm));
    let text = s.sb.pipe(&["show", id]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("slurm job"));
    // Logged once each, by the submitter (the jobs log their own ids only when submitted by hand).
    let log =
        std::fs::read_to_string(s.sb.cache().join("runs").join(id).join("log.jsonl")).unwrap();
    assert_eq!(log.matches("\"stage_submitted\"").count(), 4, "{log}");

    // Again: everything is cached and nothing is submitted.
    let (code, again) = s.json(&["run", "tiny.yaml", "--executor", "slurm", "--json"], &[]);
    assert_eq!(code, 0);
    assert!(
        statuses(&again).iter().all(|(_, st)| st == "cached"),
        "{again}"
    );
    assert_eq!(s.submitted().len(), 4);
}

#[test]
fn a_failing_job_fails_its_stage_naming_the_job_and_skips_what_needs_it() {
    let s = Slurm::new("fail");
    let (code, doc) = s.json(
        &["run", "tiny.yaml", "--executor", "slurm", "--json"],
        &[("FAKE_SLURM_FAIL", "pipe-train")],
    );
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doc["status"], "failed");
    let train = stage(&doc, "train");
    assert_eq!(train["status"], "failed", "{doc}");
    let job = train["job_id"].as_str().unwrap();
    let log = train["job_log"].as_str().unwrap();
    let error = train["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("slurm job {job} ended FAILED")),
        "{error}"
    );
    assert!(error.contains(log), "{error}");
    assert!(
        std::fs::read_to_string(log)
            .unwrap()
            .contains("fails on purpose")
    );
    assert_eq!(stage(&doc, "sample")["status"], "skipped");
    assert_eq!(stage(&doc, "model")["status"], "executed");
    // The sample job never ran: its dependency failed.
    let sample_job = stage(&doc, "sample")["job_id"].as_str().unwrap();
    assert_eq!(s.job_state(sample_job), "CANCELLED");
}

#[test]
fn a_lost_job_fails_and_resume_submits_only_that_stage() {
    let s = Slurm::new("lost");
    let (code, doc) = s.json(
        &["run", "tiny.yaml", "--executor", "slurm", "--json"],
        &[("FAKE_SLURM_LOST", "pipe-sample")],
    );
    assert_eq!(code, 1, "{doc}");
    let sample = stage(&doc, "sample");
    assert_eq!(sample["status"], "failed");
    assert!(
        sample["error"]
            .as_str()
            .unwrap()
            .contains("lost by the scheduler"),
        "{sample}"
    );
    assert_eq!(stage(&doc, "train")["status"], "executed");
    assert_eq!(s.submitted(), ALL);

    // The executor is part of the run: resume needs no --executor.
    let id = doc["run_id"].as_str().unwrap();
    let (code, resumed) = s.json(&["resume", id, "--json"], &[]);
    assert_eq!(code, 0, "{resumed}");
    assert_eq!(
        statuses(&resumed),
        vec![
            ("data".into(), "cached".into()),
            ("model".into(), "cached".into()),
            ("train".into(), "cached".into()),
            ("sample".into(), "executed".into())
        ]
    );
    assert_eq!(s.submitted(), [&ALL[..], &["pipe-sample"]].concat());
}

#[test]
fn resume_after_the_submitter_died_watches_queued_jobs_instead_of_submitting_them_again() {
    let s = Slurm::new("killed");
    let hold = [("FAKE_SLURM_HOLD", "pipe-train")];
    let (mut run, rx) = s.spawn(&["run", "tiny.yaml", "--executor", "slurm"], &hold);
    let lines = wait_for(&rx, "sample: submitted");
    run.kill().unwrap(); // SIGKILL
    run.wait().unwrap();
    let id = lines
        .iter()
        .find_map(|l| l.strip_prefix("run "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    assert_eq!(s.sb.json(&["show", &id, "--json"])["status"], "interrupted");
    assert_eq!(s.submitted(), ALL);

    let (resume, rx) = s.spawn(&["resume", &id, "--json"], &hold);
    wait_for(&rx, "train: slurm job");
    // Both held jobs are watched, none submitted again; then the train job may start.
    assert_eq!(s.submitted(), ALL);
    std::fs::write(s.state.join("release"), "").unwrap();
    let out = resume.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(s.submitted(), ALL);
    let shown = s.sb.json(&["show", &id, "--json"]);
    assert_eq!(shown["status"], "succeeded");
    assert_eq!(stage(&shown, "train")["status"], "executed");
    assert_eq!(stage(&shown, "sample")["status"], "executed");
}

#[test]
fn ctrl_c_cancels_the_runs_jobs() {
    let s = Slurm::new("sigint");
    let (mut run, rx) = s.spawn(
        &["run", "tiny.yaml", "--executor", "slurm"],
        &[("FAKE_SLURM_HOLD", "pipe-train")],
    );
    let lines = wait_for(&rx, "sample: submitted");
    let status = Command::new("kill")
        .args(["-INT", &run.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = run.wait().unwrap().code();
    assert_eq!(code, Some(130));
    let rest: Vec<String> = rx.iter().collect();
    assert!(rest.join("\n").contains("pipe resume"), "{rest:?}");
    let id = lines
        .iter()
        .find_map(|l| l.strip_prefix("run "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let shown = s.sb.json(&["show", &id, "--json"]);
    let train = stage(&shown, "train");
    assert_eq!(train["status"], "failed");
    assert!(
        train["error"].as_str().unwrap().contains("interrupted"),
        "{train}"
    );
    let job = train["job_id"].as_str().unwrap();
    assert_eq!(s.job_state(job), "CANCELLED");
    let cancelled = std::fs::read_to_string(s.state.join("scancel.log")).unwrap();
    assert!(cancelled.lines().any(|l| l == job), "{cancelled}");
}

const EXPORT_MANIFEST: &str = r#"name: tinyslurm
stages:
  data:
    kind: prepare
    path: text.txt
    tokenizer: char
    resources: {cpus: 2, mem: 4G, time: "0:10:00"}
  model:
    use: small_model
    needs: [data]
    resources: {time: 5}
  train:
    kind: train
    needs: [model, data]
    max_iters: 4
    eval_interval: 2
    eval_iters: 1
    batch_size: 2
    resources:
      gpus: 1
      nodes: 1
      tasks_per_node: 1
      cpus: 4
      mem: 16G
      time: "1:00:00"
      partition: gpu
    sbatch_args: ["--qos=high", "--account=proj"]
"#;

const SMALL_MODEL: &str = r#"kind: init
from: scratch
n_layer: 1
n_head: 2
n_embd: 16
block_size: 16
resources: {partition: cpu, time: 30}
"#;

/// The scripts with this machine's paths and the run id as placeholders.
fn normalized(text: &str, store: &Path, run_id: &str) -> String {
    let bin = std::env::var_os("PIPE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_pipe").into());
    let bin = bin.canonicalize().unwrap_or(bin);
    text.replace(&bin.display().to_string(), "<PIPE>")
        .replace(&store.display().to_string(), "<STORE>")
        .replace(run_id, "<RUN>")
}

#[test]
fn export_slurm_writes_the_scripts_and_they_run_the_stages() {
    let s = Slurm::new("export");
    s.sb.write("text.txt", &corpus(5_000));
    s.sb.write("slurm.yaml", EXPORT_MANIFEST);
    s.sb.write("stages/small_model.yaml", SMALL_MODEL);
    let out = s
        .cmd(&["export-slurm", "slurm.yaml", "--out", "jobs"], &[])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let run_id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("run "))
        .unwrap()
        .to_string();
    assert!(stdout.contains("bash jobs/submit.sh"), "{stdout}");

    let store = s.sb.cache().canonicalize().unwrap();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/slurm");
    let update = std::env::var_os("PIPE_UPDATE_GOLDEN").is_some();
    let files = [
        "01-data.sbatch",
        "02-model.sbatch",
        "03-train.sbatch",
        "submit.sh",
    ];
    let mut written: Vec<String> = std::fs::read_dir(s.sb.dir.join("jobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    written.sort();
    assert_eq!(written, files);
    for f in files {
        let text = std::fs::read_to_string(s.sb.dir.join("jobs").join(f)).unwrap();
        let text = normalized(&text, &store, &run_id);
        let want = golden.join(f);
        if update {
            std::fs::create_dir_all(&golden).unwrap();
            std::fs::write(&want, &text).unwrap();
        }
        let expected = std::fs::read_to_string(&want)
            .unwrap_or_else(|e| panic!("{}: {e} (PIPE_UPDATE_GOLDEN=1 writes it)", want.display()));
        assert_eq!(text, expected, "{f} differs from {}", want.display());
    }

    // Submitted by hand (here: to the fake), the jobs run the run's stages.
    let pipe_env = s.cmd(&[], &[]);
    let submit = Command::new("bash")
        .arg(s.sb.dir.join("jobs/submit.sh"))
        .envs(pipe_env.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .output()
        .unwrap();
    assert!(
        submit.status.success(),
        "{}",
        String::from_utf8_lossy(&submit.stderr)
    );
    assert_eq!(s.submitted(), ["pipe-data", "pipe-model", "pipe-train"]);
    let ids: Vec<String> = std::fs::read_to_string(s.state.join("sbatch.log"))
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    while ids.iter().any(|id| s.job_state(id) != "COMPLETED") {
        assert!(
            ids.iter().all(|id| matches!(
                s.job_state(id).as_str(),
                "PENDING" | "RUNNING" | "COMPLETED"
            )),
            "a job did not complete: {:?}",
            ids.iter().map(|id| s.job_state(id)).collect::<Vec<_>>()
        );
        assert!(Instant::now() < deadline, "jobs still not done");
        std::thread::sleep(Duration::from_millis(100));
    }
    let shown = s.sb.json(&["show", &run_id, "--json"]);
    assert!(
        statuses(&shown).iter().all(|(_, st)| st == "executed"),
        "{shown}"
    );
    // The last job finished the run, which no pipe process watched.
    assert_eq!(shown["status"], "succeeded", "{shown}");
    // Each job logged its id and output file into the run.
    for (st, id) in shown["stages"].as_array().unwrap().iter().zip(&ids) {
        assert_eq!(st["job_id"], id.as_str());
        assert!(Path::new(st["job_log"].as_str().unwrap()).exists(), "{st}");
    }
}

#[test]
fn a_bad_resources_field_is_a_located_error() {
    let s = Slurm::new("badres");
    let text = tiny_manifest(20, 10).replace(
        "    max_iters: 20\n",
        "    max_iters: 20\n    resources:\n      gpus: 1\n      gpu: 2\n",
    );
    s.sb.write("bad.yaml", &text);
    let line = text.lines().position(|l| l == "      gpu: 2").unwrap() + 1;
    let out = s.sb.pipe(&["run", "bad.yaml", "--executor", "slurm"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("bad.yaml:{line}:7")), "{err}");
    assert!(err.contains("unknown field `gpu` in `resources`"), "{err}");
    assert!(
        err.contains("gpus, nodes, tasks_per_node, cpus, mem, time, partition"),
        "{err}"
    );
    assert!(s.submitted().is_empty());

    // The same from the command line, and a value of the wrong type.
    let out =
        s.sb.pipe(&["status", "tiny.yaml", "--set", "train.resources.gpus=two"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--set train.resources.gpus=two"), "{err}");
    assert!(err.contains("must be a whole number"), "{err}");

    let out = s.sb.pipe(&[
        "status",
        "tiny.yaml",
        "--set",
        "train.sbatch_args=[qos=high]",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("entries must be options starting with `-`"),
        "{err}"
    );

    // resources are not part of the key: status with other resources is still cached.
    let (code, _) = s.json(&["run", "tiny.yaml", "--json"], &[]);
    assert_eq!(code, 0);
    let st = s.sb.json(&[
        "status",
        "tiny.yaml",
        "--json",
        "--set",
        "train.resources.time=2:00:00",
        "--set",
        "train.sbatch_args=[--qos=high]",
    ]);
    assert_eq!(st["status"], "up-to-date", "{st}");
}

/// A sweep on Slurm: every variant submits at once, and a stage the variants share (the data,
/// the model) is submitted once, its job watched by the others; each stage key is submitted
/// exactly once.
#[test]
fn a_sweep_submits_each_uncached_stage_key_once() {
    let s = Slurm::new("sweep");
    let (code, doc) = s.json(
        &[
            "run",
            "tiny.yaml",
            "--executor",
            "slurm",
            "--sweep",
            "train.learning_rate=1e-3,3e-4,1e-4",
            "--json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{doc}");
    let runs = doc["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    let mut names = s.submitted();
    names.sort();
    // data and model once; train and sample once per variant.
    assert_eq!(
        names,
        [
            "pipe-data",
            "pipe-model",
            "pipe-sample",
            "pipe-sample",
            "pipe-sample",
            "pipe-train",
            "pipe-train",
            "pipe-train"
        ],
        "{doc}"
    );
    let executed: usize = runs
        .iter()
        .map(|r| {
            statuses(r)
                .iter()
                .filter(|(n, st)| (n == "data" || n == "model") && st == "executed")
                .count()
        })
        .sum();
    assert_eq!(executed, 2, "{doc}");
    let trains: std::collections::BTreeSet<String> = runs
        .iter()
        .map(|r| stage(r, "train")["outputs"]["ckpt"].to_string())
        .collect();
    assert_eq!(trains.len(), 3);
}

/// Nothing waits forever on the scheduler: an sbatch that hangs is killed after the call
/// timeout and fails its stage; a missing squeue fails the run at once; a scheduler that stays
/// unreachable stops the run after the limit, and `pipe resume` then finishes it.
#[test]
fn scheduler_waits_are_bounded() {
    let s = Slurm::new("bounded");
    let run = ["run", "tiny.yaml", "--executor", "slurm", "--json"];
    let t0 = Instant::now();
    let out = s
        .cmd(
            &run,
            &[
                ("FAKE_SLURM_HANG", "sbatch"),
                ("PIPE_SLURM_CALL_TIMEOUT", "1"),
            ],
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let err = stage(&doc, "data")["error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(err.contains("did not answer within 1 s"), "{doc}");

    // No squeue on PATH: a clear error, at once, not a warning and polling forever.
    let bin = s.sb.dir.join("no-squeue");
    std::fs::create_dir_all(&bin).unwrap();
    let fakes = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake-slurm");
    for f in ["sbatch", "sacct", "scancel", "common.sh"] {
        std::os::unix::fs::symlink(fakes.join(f), bin.join(f)).unwrap();
    }
    let t0 = Instant::now();
    let out = s
        .cmd(&run, &[])
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("`squeue` is not on PATH"), "{text}");

    // squeue hangs: each call is killed after 0.5 s, and after 2 s unreachable the run stops.
    let s = Slurm::new("bounded-unreachable");
    let out = s
        .cmd(
            &run,
            &[
                ("FAKE_SLURM_HANG", "squeue"),
                ("FAKE_SLURM_HOLD", "pipe-train"),
                ("PIPE_SLURM_CALL_TIMEOUT", "0.5"),
                ("PIPE_SLURM_UNREACHABLE_SECONDS", "2"),
            ],
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("has not answered for 2 s"), "{text}");
    let id = text
        .split("pipe resume ")
        .nth(1)
        .and_then(|r| r.split('`').next())
        .unwrap()
        .to_string();
    // The held train job was not cancelled: released, the resumed run watches it to the end.
    std::fs::write(s.state.join("release"), "").unwrap();
    let (code, doc) = s.json(
        &["resume", &id, "--json"],
        &[("FAKE_SLURM_HOLD", "pipe-train")],
    );
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["status"], "succeeded");
}

/// `export-slurm` checks what it would fail on before it creates its run, and never overwrites a
/// file it did not write: a failed export leaves no run behind (one would show `interrupted`).
#[test]
fn export_slurm_checks_first_and_keeps_the_users_files() {
    let s = Slurm::new("export-checks");
    std::fs::create_dir_all(s.sb.dir.join("jobs")).unwrap();
    let mine =
        s.sb.write("jobs/01-data.sbatch", "#!/bin/bash\necho my own script\n");
    let out = s
        .cmd(&["export-slurm", "tiny.yaml", "--out", "jobs"], &[])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("01-data.sbatch exists and is not a script of an earlier export"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&mine).unwrap(),
        "#!/bin/bash\necho my own script\n"
    );
    let runs = s.sb.json(&["show", "--json"]);
    assert_eq!(runs["runs"].as_array().map(Vec::len), Some(0), "{runs}");
    // An earlier export's scripts are replaced.
    std::fs::remove_file(&mine).unwrap();
    for _ in 0..2 {
        let out = s
            .cmd(&["export-slurm", "tiny.yaml", "--out", "jobs"], &[])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A store whose path cannot go into an #SBATCH line: an error, and no run.
    let quoted = s.sb.dir.join("store \"q\"");
    let out =
        s.sb.pipe_with_store(&quoted, &["export-slurm", "tiny.yaml", "--out", "jobs2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("cannot be written into an #SBATCH line"),
        "{err}"
    );
    let runs = s.sb.pipe_with_store(&quoted, &["show", "--json"]);
    let runs: serde_json::Value = serde_json::from_slice(&runs.stdout).unwrap();
    assert_eq!(runs["runs"].as_array().map(Vec::len), Some(0), "{runs}");
}
