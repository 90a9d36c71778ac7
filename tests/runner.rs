//! The runner end to end, through the binary: caching, reruns, kill -9 and resume, concurrency,
//! corruption, status, show, gc, command stages.

mod common;
use common::*;
use std::time::{Duration, Instant};

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

    // log_interval is not part of the key.
    let quiet = sb.json(&[
        "run",
        "tiny.yaml",
        "--json",
        "--set",
        "train.log_interval=5",
    ]);
    assert!(
        statuses(&quiet).iter().all(|(_, s)| s == "cached"),
        "{quiet}"
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
    // Wait until training has saved a checkpoint, then kill -9.
    let deadline = Instant::now() + Duration::from_secs(120);
    let log = loop {
        assert!(Instant::now() < deadline, "no checkpoint within 120 s");
        let runs = sb.cache().join("runs");
        let log = std::fs::read_dir(&runs)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| e.path().join("log.jsonl"));
        if let Some(l) = log.filter(|l| {
            std::fs::read_to_string(l)
                .unwrap_or_default()
                .contains("\"checkpoint\"")
        }) {
            break l;
        }
        std::thread::sleep(Duration::from_millis(20));
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
