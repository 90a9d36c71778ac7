//! The runner end to end, through the binary: caching, reruns, kill -9 and resume, concurrency,
//! corruption, status, show, gc, command stages.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[path = "runner/sweeps.rs"]
mod sweeps;

fn setup(name: &str, max_iters: u32, eval_interval: u32) -> Sandbox {
    let sb = Sandbox::new(name);
    sb.write("text.txt", &corpus(20_000));
    sb.write("tiny.yaml", &tiny_manifest(max_iters, eval_interval));
    sb
}

#[test]
fn second_run_executes_nothing_and_one_param_reruns_only_its_descendants() {
    let sb = setup("cache", 20, 10);
    let first = sb.json(&["run", "tiny.yaml", "--json"]);
    assert_eq!(first["status"], "succeeded");
    assert!(
        statuses(&first).iter().all(|(_, s)| s == "executed"),
        "{first}"
    );
    assert!(first["run_id"].as_str().unwrap().len() > 10);
    let train = stage(&first, "train");
    assert!(train["outputs"]["ckpt"].as_str().unwrap().len() == 64);
    assert!(train["metrics"]["final_val_loss"].as_f64().unwrap() > 0.0);

    let second = sb.json(&["run", "tiny.yaml", "--json"]);
    assert!(
        statuses(&second).iter().all(|(_, s)| s == "cached"),
        "{second}"
    );
    assert_eq!(stage(&second, "train")["outputs"], train["outputs"]);

    let status = sb.json(&[
        "status",
        "tiny.yaml",
        "--json",
        "--set",
        "sample.temperature=0.5",
    ]);
    assert_eq!(stage(&status, "train")["status"], "cached");
    let sample = stage(&status, "sample");
    assert_eq!(sample["status"], "stale");
    assert!(
        sample["reasons"]
            .to_string()
            .contains("params.temperature: 0.8"),
        "{sample}"
    );

    // log_interval is part of the key: metrics.json records every log_interval-th iteration, and
    // the checkpoint's metadata holds the training config (the weights, and so the samples, stay
    // the same).
    let quiet = sb.json(&[
        "run",
        "tiny.yaml",
        "--json",
        "--set",
        "train.log_interval=5",
    ]);
    assert_eq!(
        statuses(&quiet),
        vec![
            ("data".into(), "cached".into()),
            ("model".into(), "cached".into()),
            ("train".into(), "executed".into()),
            ("sample".into(), "executed".into())
        ]
    );
    let (steps, before) = (
        &stage(&quiet, "train")["outputs"],
        &stage(&first, "train")["outputs"],
    );
    assert_ne!(steps["ckpt"], before["ckpt"]);
    assert_ne!(steps["metrics.json"], before["metrics.json"]);
    assert_eq!(
        stage(&quiet, "sample")["outputs"],
        stage(&first, "sample")["outputs"]
    );

    let changed = sb.json(&["run", "tiny.yaml", "--json", "--set", "model.n_embd=16"]);
    let st: Vec<(String, String)> = statuses(&changed);
    assert_eq!(
        st,
        vec![
            ("data".into(), "cached".into()),
            ("model".into(), "executed".into()),
            ("train".into(), "executed".into()),
            ("sample".into(), "executed".into())
        ]
    );
}

#[test]
fn identical_runs_give_identical_bytes() {
    let a = setup("det-a", 10, 5);
    let b = setup("det-b", 10, 5);
    let ra = a.json(&["run", "tiny.yaml", "--json"]);
    let rb = b.json(&["run", "tiny.yaml", "--json", "--threads", "1"]);
    for s in ["data", "model", "train", "sample"] {
        assert_eq!(
            stage(&ra, s)["outputs"],
            stage(&rb, s)["outputs"],
            "stage {s}"
        );
        assert_eq!(stage(&ra, s)["key"], stage(&rb, s)["key"], "stage {s}");
    }
}

fn run_ids(sb: &Sandbox) -> Vec<String> {
    let v = sb.json(&["show", "--json"]);
    v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_string())
        .collect()
}

/// `$PIPE_TEST_PYTHON` (set by .ci/run), else python3. It must import tensorboard: a missing
/// one fails the test, here and in CI.
fn python_with_tensorboard() -> String {
    let py = std::env::var("PIPE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(&py)
        .args(["-c", "import tensorboard"])
        .output();
    assert!(
        out.as_ref().is_ok_and(|o| o.status.success()),
        "{py} cannot import tensorboard, which this test reads pipe's event files with: \
         `pip install tensorboard`, or set PIPE_TEST_PYTHON to a Python that has it (.ci/run \
         installs it into its venv): {out:?}"
    );
    py
}

/// Every scalar that TensorBoard's own reader (EventAccumulator, scripts/tb_scalars.py) finds
/// in the event folder `dir`: tag -> [(step, value)].
fn tensorboard_scalars(dir: &std::path::Path) -> BTreeMap<String, Vec<(u64, f64)>> {
    let v = python_json(
        &python_with_tensorboard(),
        "tb_scalars.py",
        &[dir.as_os_str()],
    );
    serde_json::from_value(v).unwrap()
}

/// The bytes of the object `hash` in the sandbox's store.
fn object(sb: &Sandbox, hash: &serde_json::Value) -> Vec<u8> {
    let h = hash.as_str().unwrap();
    std::fs::read(sb.cache().join("objects").join(&h[..2]).join(&h[2..])).unwrap()
}

/// `(iter, field)` of each entry of a metrics.json list.
fn column(list: &serde_json::Value, field: &str) -> Vec<(u64, f64)> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| (e["iter"].as_u64().unwrap(), e[field].as_f64().unwrap()))
        .collect()
}

/// The same points, up to f32 rounding (TensorBoard keeps f32, metrics.json the f64 of an f32 or,
/// for lr, an f64).
fn assert_same_points(tag: &str, tb: &[(u64, f64)], want: &[(u64, f64)]) {
    let steps = |p: &[(u64, f64)]| p.iter().map(|x| x.0).collect::<Vec<_>>();
    assert_eq!(steps(tb), steps(want), "{tag}: steps");
    for ((step, got), (_, w)) in tb.iter().zip(want) {
        assert!(
            (got - w).abs() <= 1e-6 * w.abs(),
            "{tag} at step {step}: TensorBoard has {got}, metrics.json {w}"
        );
    }
}

/// TensorBoard's view of a train stage's event folder is its metrics.json: one value per step
/// for the training loss and learning rate of each logged iteration, and the evaluations' losses.
fn assert_tensorboard_shows(dir: &std::path::Path, metrics: &serde_json::Value) {
    let tb = tensorboard_scalars(dir);
    let tag = |t: &str| tb.get(t).unwrap_or_else(|| panic!("no tag {t} in {tb:?}"));
    assert_same_points(
        "loss/train",
        tag("loss/train"),
        &column(&metrics["steps"], "loss"),
    );
    assert_same_points("lr", tag("lr"), &column(&metrics["steps"], "lr"));
    assert_same_points(
        "grad_norm",
        tag("grad_norm"),
        &column(&metrics["steps"], "grad_norm"),
    );
    assert_same_points(
        "loss/val",
        tag("loss/val"),
        &column(&metrics["evals"], "val_loss"),
    );
    assert_same_points(
        "loss/train_eval",
        tag("loss/train_eval"),
        &column(&metrics["evals"], "train_loss"),
    );
    let tps = tag("tokens_per_second");
    assert_eq!(tps.len(), metrics["steps"].as_array().unwrap().len());
    assert!(tps.iter().all(|p| p.1 > 0.0), "{tps:?}");
}

/// The run folder's curve holds metrics.json's points exactly (f32 written shortest, read back).
fn assert_curve_shows(path: &std::path::Path, metrics: &serde_json::Value) {
    let c = pipe::read_curve(path).unwrap();
    let steps: Vec<(u64, f64)> = c.steps.iter().map(|s| (s.iter, s.loss as f64)).collect();
    assert_eq!(steps, column(&metrics["steps"], "loss"));
    let lr: Vec<(u64, f64)> = c.steps.iter().map(|s| (s.iter, s.lr)).collect();
    assert_eq!(lr, column(&metrics["steps"], "lr"));
    let evals: Vec<(u64, f64)> = c
        .evals
        .iter()
        .map(|e| (e.iter, e.val_loss as f64))
        .collect();
    assert_eq!(evals, column(&metrics["evals"], "val_loss"));
}

#[test]
fn a_train_stage_records_every_logged_iteration_for_tensorboard_and_its_run() {
    let sb = setup("curves", 60, 20);
    let run = sb.json(&["run", "tiny.yaml", "--json"]);
    let train = stage(&run, "train");
    let metrics: serde_json::Value =
        serde_json::from_slice(&object(&sb, &train["outputs"]["metrics.json"])).unwrap();
    // log_interval 10: iterations 0, 10, ..., 50; evaluations every 20 and at the end.
    let iters = |l: &serde_json::Value| column(l, "iter").iter().map(|x| x.0).collect::<Vec<_>>();
    assert_eq!(iters(&metrics["steps"]), [0, 10, 20, 30, 40, 50]);
    assert_eq!(iters(&metrics["evals"]), [0, 20, 40, 60]);
    // An output: no timing in it.
    for s in metrics["steps"].as_array().unwrap() {
        let keys: Vec<&String> = s.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["grad_norm", "iter", "loss", "lr"], "{s}");
    }
    assert!(metrics["summary"]["best_val_loss"].as_f64().unwrap() > 0.0);
    // The run record's throughput.
    let tps = train["metrics"]["tokens_per_second"].as_f64().unwrap();
    assert!(tps > 0.0, "{train}");

    let dir = sb
        .cache()
        .join("runs")
        .join(run["run_id"].as_str().unwrap());
    assert_tensorboard_shows(&dir.join("tensorboard/train"), &metrics);
    let curve = dir.join("curves/train.jsonl");
    assert_curve_shows(&curve, &metrics);
    let c = pipe::read_curve(&curve).unwrap();
    assert!(c.steps.iter().all(|s| s.tokens_per_second.unwrap() > 0.0));
    let elapsed: Vec<f64> = c.steps.iter().map(|s| s.elapsed_s.unwrap()).collect();
    assert!(elapsed.windows(2).all(|w| w[0] <= w[1]), "{elapsed:?}");
    // The run folder's plot carries the run's name; the output's cannot (it is not keyed).
    let svg = std::fs::read_to_string(dir.join("curves/train.svg")).unwrap();
    assert!(svg.contains(">\ntiny: train\n</text>"), "{svg}");
    let out = String::from_utf8(object(&sb, &train["outputs"]["loss.svg"])).unwrap();
    assert!(out.contains("train (logged iterations)") && !out.contains("tiny"));

    // A cached stage writes no curve in its run.
    let again = sb.json(&["run", "tiny.yaml", "--json"]);
    assert_eq!(stage(&again, "train")["status"], "cached");
    let dir = sb
        .cache()
        .join("runs")
        .join(again["run_id"].as_str().unwrap());
    assert!(!dir.join("curves").exists() && !dir.join("tensorboard").exists());
}

#[test]
fn tensorboard_shows_once_the_points_a_resumed_attempt_writes_again() {
    // Two attempts by hand: the first killed after iteration 40 (a torn record at its end) with
    // its last checkpoint at 20; the second resumes there.
    let sb = Sandbox::new("tb-restart");
    let dir = sb.dir.join("tb");
    let mut first = pipe::EventWriter::create(&dir).unwrap();
    first.session_start(0).unwrap();
    for i in (0..=40).step_by(10) {
        first
            .scalars(i, &[("loss/train", 10.0 + i as f32)])
            .unwrap();
    }
    first.scalars(20, &[("loss/val", 1.0)]).unwrap();
    first.scalars(40, &[("loss/val", 2.0)]).unwrap();
    let path = first.path().to_path_buf();
    drop(first);
    let mut torn = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut torn, &pipe::event_frame(b"0123456789")[..9]).unwrap();
    let mut second = pipe::EventWriter::create(&dir).unwrap();
    second.session_start(20).unwrap();
    second.scalars(20, &[("loss/val", 1.0)]).unwrap();
    for i in (20..=50).step_by(10) {
        second
            .scalars(i, &[("loss/train", 20.0 + i as f32)])
            .unwrap();
    }
    second.scalars(40, &[("loss/val", 3.0)]).unwrap();
    let tb = tensorboard_scalars(&dir);
    assert_eq!(
        tb["loss/train"],
        [
            (0, 10.0),
            (10, 20.0),
            (20, 40.0),
            (30, 50.0),
            (40, 60.0),
            (50, 70.0)
        ]
    );
    assert_eq!(tb["loss/val"], [(20, 1.0), (40, 3.0)]);
}

#[test]
fn kill_9_during_training_then_resume_matches_an_uninterrupted_run() {
    let reference = setup("kill-ref", 600, 20);
    let want = reference.json(&["run", "tiny.yaml", "--json"]);

    let sb = setup("kill", 600, 20);
    let mut child = sb
        .cmd(&["run", "tiny.yaml"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until training has saved a checkpoint and logged an iteration after it (a point the
    // resumed attempt computes again), then kill -9.
    let deadline = Instant::now() + Duration::from_secs(120);
    let log = loop {
        assert!(Instant::now() < deadline, "no checkpoint within 120 s");
        let runs = sb.cache().join("runs");
        let dir = std::fs::read_dir(&runs)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| e.path());
        let past_a_checkpoint = dir.as_ref().is_some_and(|d| {
            let c = pipe::read_curve(&d.join("curves/train.jsonl")).unwrap();
            let last_eval = c.last_eval().map_or(0, |e| e.iter);
            let last_step = c.last_step().map_or(0, |s| s.iter);
            last_eval > 0 && last_step > last_eval
        });
        if let Some(l) = dir.map(|d| d.join("log.jsonl")).filter(|l| {
            past_a_checkpoint
                && std::fs::read_to_string(l)
                    .unwrap_or_default()
                    .contains("\"checkpoint\"")
        }) {
            break l;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !std::fs::read_to_string(&log)
            .unwrap()
            .contains("run_finished"),
        "the run finished before it could be killed; make it longer"
    );

    let ids = run_ids(&sb);
    assert_eq!(ids.len(), 1);
    let shown = sb.json(&["show", &ids[0], "--json"]);
    assert_eq!(shown["status"], "interrupted", "{shown}");
    assert_eq!(stage(&shown, "data")["status"], "executed");

    let resumed = sb.json(&["resume", &ids[0], "--json"]);
    assert_eq!(resumed["status"], "succeeded");
    assert_eq!(resumed["run_id"], ids[0].as_str());
    assert_eq!(stage(&resumed, "data")["status"], "cached");
    assert_eq!(stage(&resumed, "train")["status"], "resumed", "{resumed}");
    assert!(
        stage(&resumed, "train")["metrics"]["resumed_from_iter"]
            .as_u64()
            .unwrap()
            >= 20
    );
    for s in ["train", "sample"] {
        assert_eq!(
            stage(&resumed, s)["outputs"],
            stage(&want, s)["outputs"],
            "stage {s} differs from the uninterrupted run"
        );
    }
    // metrics.json, steps and all, byte for byte.
    let bytes = object(&sb, &stage(&resumed, "train")["outputs"]["metrics.json"]);
    assert_eq!(
        bytes,
        object(
            &reference,
            &stage(&want, "train")["outputs"]["metrics.json"]
        )
    );
    let metrics: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(metrics["steps"].as_array().unwrap().len(), 60);
    // The run's TensorBoard folder (two event files) and curve: one value per step, the
    // uninterrupted run's.
    let dir = sb.cache().join("runs").join(&ids[0]);
    let events = std::fs::read_dir(dir.join("tensorboard/train"))
        .unwrap()
        .count();
    assert_eq!(events, 2);
    let from = stage(&resumed, "train")["metrics"]["resumed_from_iter"]
        .as_u64()
        .unwrap();
    let killed = std::fs::read_to_string(dir.join("curves/train.jsonl")).unwrap();
    let recomputed = killed
        .split("{\"kind\":\"start\",\"iter\":")
        .nth(1)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"kind\":\"step\""))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["iter"].as_u64().unwrap() >= from)
        .count();
    eprintln!(
        "the killed attempt logged {recomputed} iterations past its checkpoint at {from}, which the resumed one computed again"
    );
    assert_tensorboard_shows(&dir.join("tensorboard/train"), &metrics);
    assert_curve_shows(&dir.join("curves/train.jsonl"), &metrics);
    assert_eq!(sb.json(&["show", &ids[0], "--json"])["status"], "succeeded");
    let v = sb.pipe(&["verify"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

#[test]
fn two_concurrent_runs_on_one_store_both_succeed() {
    let sb = setup("concurrent", 40, 20);
    let spawn = || {
        sb.cmd(&["run", "tiny.yaml", "--json"])
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (p1, p2) = (spawn(), spawn());
    let (o1, o2) = (
        p1.wait_with_output().unwrap(),
        p2.wait_with_output().unwrap(),
    );
    assert!(
        o1.status.success() && o2.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o1.stderr),
        String::from_utf8_lossy(&o2.stderr)
    );
    let (j1, j2): (serde_json::Value, serde_json::Value) = (
        serde_json::from_slice(&o1.stdout).unwrap(),
        serde_json::from_slice(&o2.stdout).unwrap(),
    );
    assert_eq!(
        stage(&j1, "train")["outputs"],
        stage(&j2, "train")["outputs"]
    );
    let v = sb.pipe(&["verify"]);
    assert!(
        v.status.success() && String::from_utf8_lossy(&v.stdout).contains("all intact"),
        "{}",
        String::from_utf8_lossy(&v.stdout)
    );
}

#[test]
fn a_flipped_byte_is_reported_and_never_used() {
    let sb = setup("corrupt", 10, 5);
    let first = sb.json(&["run", "tiny.yaml", "--json"]);
    let ckpt = stage(&first, "train")["outputs"]["ckpt"]
        .as_str()
        .unwrap()
        .to_string();
    let path = sb.cache().join("objects").join(&ckpt[..2]).join(&ckpt[2..]);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    // Reading it (sampling again with another temperature) fails loudly instead of using it.
    let out = sb.pipe(&[
        "run",
        "tiny.yaml",
        "--json",
        "--set",
        "sample.temperature=0.3",
    ]);
    assert!(!out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stage(&doc, "sample")["status"], "failed");
    assert!(
        stage(&doc, "sample")["error"]
            .as_str()
            .unwrap()
            .contains("corrupted"),
        "{doc}"
    );

    let v = sb.pipe(&["verify"]);
    assert_eq!(v.status.code(), Some(1));
    let text = String::from_utf8_lossy(&v.stdout);
    assert!(text.contains(&ckpt) && text.contains("CORRUPTED"), "{text}");
    // After verify moved it aside, the next run recomputes it.
    let again = sb.json(&["run", "tiny.yaml", "--json"]);
    assert_eq!(stage(&again, "train")["status"], "executed");
    assert_eq!(stage(&again, "train")["outputs"]["ckpt"], ckpt.as_str());
    assert!(sb.pipe(&["verify"]).status.success());
}

#[test]
fn show_lists_runs_and_traces_lineage() {
    let sb = setup("show", 10, 5);
    let run = sb.json(&["run", "tiny.yaml", "--json"]);
    let id = run["run_id"].as_str().unwrap();
    let list = sb.json(&["show", "--json"]);
    assert_eq!(list["runs"][0]["run_id"], id);
    assert_eq!(list["runs"][0]["status"], "succeeded");
    assert_eq!(list["runs"][0]["name"], "tiny");
    let one = sb.json(&["show", &id[..12], "--json"]);
    assert_eq!(one["run_id"], id);
    assert_eq!(statuses(&one), statuses(&run));
    let samples = stage(&run, "sample")["outputs"]["samples.txt"]
        .as_str()
        .unwrap();
    let lin = sb.json(&["show", &samples[..10], "--json"]);
    assert_eq!(lin["produced_by"]["stage"], "sample");
    let model_in = lin["produced_by"]["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["role"] == "model")
        .unwrap()
        .clone();
    assert_eq!(model_in["produced_by"]["stage"], "train");
    let human = sb.pipe(&["show", samples]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("train") && text.contains("prepare") && text.contains("init"),
        "{text}"
    );
    let cat = sb.pipe(&["cat", samples]);
    assert!(String::from_utf8_lossy(&cat.stdout).starts_with("the "));
}

#[test]
fn gc_keeps_what_runs_and_pins_need() {
    let sb = setup("gc", 20, 5);
    let run = sb.json(&["run", "tiny.yaml", "--json"]);
    let text = |o: std::process::Output| String::from_utf8_lossy(&o.stdout).to_string();
    // Everything is referenced by the run record: nothing to remove.
    let t = text(sb.pipe(&["gc"]));
    assert!(t.contains("removed 0 objects"), "{t}");
    // Of the intermediate checkpoints (iters 5, 10, 15), retention (keep_checkpoints: 2) already
    // removed 5 and 10 during the run; 15 goes only when asked.
    let t = text(sb.pipe(&["gc", "--drop-checkpoints"]));
    assert!(t.contains("removed 1 objects"), "{t}");
    let again = sb.json(&["run", "tiny.yaml", "--json"]);
    assert!(
        statuses(&again).iter().all(|(_, s)| s == "cached"),
        "{again}"
    );
    assert_eq!(
        stage(&again, "train")["outputs"],
        stage(&run, "train")["outputs"]
    );

    // Forget both runs; a pinned checkpoint survives gc, the rest goes.
    let ckpt = stage(&run, "train")["outputs"]["ckpt"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(sb.pipe(&["pin", &ckpt[..10]]).status.success());
    for r in sb.json(&["show", "--json"])["runs"].as_array().unwrap() {
        assert!(
            sb.pipe(&["forget", r["run_id"].as_str().unwrap()])
                .status
                .success()
        );
    }
    let t = text(sb.pipe(&["gc"]));
    assert!(!t.contains("removed 0 objects"), "{t}");
    assert!(
        sb.cache()
            .join("objects")
            .join(&ckpt[..2])
            .join(&ckpt[2..])
            .exists()
    );
    let rerun = sb.json(&["run", "tiny.yaml", "--json"]);
    assert_eq!(stage(&rerun, "train")["status"], "executed");
    assert_eq!(stage(&rerun, "train")["outputs"]["ckpt"], ckpt.as_str());
    assert!(sb.pipe(&["verify"]).status.success());
}

#[test]
fn command_stages_take_inputs_and_produce_outputs() {
    let sb = setup("command", 10, 5);
    sb.write(
        "count.sh",
        "wc -c < \"$PIPE_IN_DATA_TRAIN_BIN\" | tr -d ' ' > \"$PIPE_OUT/size.txt\"\n",
    );
    let mut m = tiny_manifest(10, 5);
    m.push_str("  size:\n    kind: command\n    needs: [data]\n    cmd: sh count.sh\n    deps: [count.sh]\n    outs: [size.txt]\n");
    sb.write("tiny.yaml", &m);
    let run = sb.json(&["run", "tiny.yaml", "--json"]);
    let h = stage(&run, "size")["outputs"]["size.txt"]
        .as_str()
        .unwrap()
        .to_string();
    let size = String::from_utf8(sb.pipe(&["cat", &h]).stdout).unwrap();
    let train_tokens = stage(&run, "data")["metrics"]["train_tokens"]
        .as_u64()
        .unwrap();
    assert_eq!(size.trim(), (2 * train_tokens).to_string());
    // Changing a dependency file reruns the command stage only.
    sb.write(
        "count.sh",
        "wc -c < \"$PIPE_IN_DATA_TRAIN_BIN\" | tr -d ' ' > \"$PIPE_OUT/size.txt\" # v2\n",
    );
    let again = sb.json(&["run", "tiny.yaml", "--json"]);
    assert_eq!(stage(&again, "size")["status"], "executed");
    assert_eq!(stage(&again, "train")["status"], "cached");
    // A failing command fails its stage with its stderr, and the run exits non-zero.
    sb.write("count.sh", "echo 'no such thing' >&2; exit 3\n");
    let out = sb.pipe(&["run", "tiny.yaml", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["status"], "failed");
    assert!(
        stage(&doc, "size")["error"]
            .as_str()
            .unwrap()
            .contains("no such thing")
    );
}

#[test]
fn command_stages_work_with_a_relative_store_and_a_manifest_elsewhere() {
    let sb = Sandbox::new("relative");
    sb.write(
        "sub/m.yaml",
        "name: rel\nstages:\n  make:\n    kind: command\n    cmd: echo hello > \"$PIPE_OUT/a.txt\"\n    outs: [a.txt]\n  copy:\n    kind: command\n    needs: [make]\n    cmd: tr a-z A-Z < \"$PIPE_IN_MAKE_A_TXT\" > \"$PIPE_OUT/b.txt\"\n    outs: [b.txt]\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pipe"))
        .args(["--cache", "relcache", "run", "sub/m.yaml", "--json"])
        .current_dir(&sb.dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let h = stage(&doc, "copy")["outputs"]["b.txt"]
        .as_str()
        .unwrap()
        .to_string();
    let bytes = std::fs::read(sb.dir.join("relcache/objects").join(&h[..2]).join(&h[2..])).unwrap();
    assert_eq!(String::from_utf8(bytes).unwrap(), "HELLO\n");
}
