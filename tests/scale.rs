//! Data and checkpoints that scale with the disk (issue 9), end to end through the binary:
//! checkpoint retention (`keep_checkpoints`), what it never deletes, and `kill -9` with it on.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn setup(name: &str, max_iters: u32, eval_interval: u32) -> Sandbox {
    let sb = Sandbox::new(name);
    sb.write("text.txt", &corpus(20_000));
    sb.write("tiny.yaml", &tiny_manifest(max_iters, eval_interval));
    sb
}

/// (iter, hash, keep) of every checkpoint the runs in `sb` logged, oldest first.
fn logged_checkpoints(sb: &Sandbox) -> Vec<(u64, String, bool)> {
    let mut out = Vec::new();
    let Ok(runs) = std::fs::read_dir(sb.cache().join("runs")) else {
        return out;
    };
    let mut dirs: Vec<_> = runs.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    dirs.sort();
    for d in dirs {
        let text = std::fs::read_to_string(d.join("log.jsonl")).unwrap_or_default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["event"] == "checkpoint" {
                out.push((
                    v["iter"].as_u64().unwrap(),
                    v["hash"].as_str().unwrap().to_string(),
                    v["keep"].as_bool().unwrap(),
                ));
            }
        }
    }
    out
}

fn present(sb: &Sandbox, hash: &str) -> bool {
    sb.cache()
        .join("objects")
        .join(&hash[..2])
        .join(&hash[2..])
        .exists()
}

fn present_iters(sb: &Sandbox, logged: &[(u64, String, bool)]) -> Vec<u64> {
    logged
        .iter()
        .filter(|c| present(sb, &c.1))
        .map(|c| c.0)
        .collect()
}

#[test]
fn retention_keeps_the_latest_checkpoints_and_the_output_and_is_not_in_the_key() {
    // 10 evaluations after iteration 0, each with a checkpoint; ckpt is the best by val loss.
    let sb = setup("keep", 100, 10);
    let best = ["--set", "train.always_save_checkpoint=false"];
    let run = sb.json(&[&["run", "tiny.yaml", "--json"][..], &best].concat());
    let logged = logged_checkpoints(&sb);
    assert_eq!(
        logged.iter().map(|c| c.0).collect::<Vec<_>>(),
        (1..=10).map(|i| i * 10).collect::<Vec<_>>()
    );
    let kept = present_iters(&sb, &logged);
    // The latest keep_checkpoints (2), plus the output when it is older: at most 3.
    assert!(kept.len() <= 3, "kept {kept:?}");
    assert!(kept.ends_with(&[90, 100]), "kept {kept:?}");
    let ckpt = stage(&run, "train")["outputs"]["ckpt"].as_str().unwrap();
    let candidate = logged.iter().rev().find(|c| c.2).unwrap();
    assert_eq!(ckpt, candidate.1, "the output is the best checkpoint");
    assert!(present(&sb, ckpt));
    assert!(sb.pipe(&["verify"]).status.success());

    // keep_checkpoints changes no output: not part of the key.
    let status = sb.json(
        &[
            &["status", "tiny.yaml", "--json"][..],
            &best,
            &["--set", "train.keep_checkpoints=100"],
        ]
        .concat(),
    );
    assert_eq!(status["status"], "up-to-date", "{status}");

    // With keep_checkpoints large every checkpoint stays, and the outputs are the same bytes.
    let all = setup("keep-all", 100, 10);
    let run_all = all.json(
        &[
            &["run", "tiny.yaml", "--json"][..],
            &best,
            &["--set", "train.keep_checkpoints=100"],
        ]
        .concat(),
    );
    let logged_all = logged_checkpoints(&all);
    assert_eq!(present_iters(&all, &logged_all).len(), 10);
    assert_eq!(logged_all, logged);
    for s in ["model", "train", "sample"] {
        assert_eq!(stage(&run_all, s)["key"], stage(&run, s)["key"], "{s}");
        assert_eq!(
            stage(&run_all, s)["outputs"],
            stage(&run, s)["outputs"],
            "{s}"
        );
    }
}

#[test]
fn keep_checkpoints_must_keep_at_least_one() {
    let sb = setup("keep-zero", 20, 10);
    let out = sb.pipe(&["run", "tiny.yaml", "--set", "train.keep_checkpoints=0"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("keep_checkpoints") && err.contains(">= 1"),
        "{err}"
    );
}

#[test]
fn a_superseded_checkpoint_that_is_pinned_or_another_stages_output_stays() {
    let sb = setup("refs", 60, 10);
    let keep_all = ["--set", "train.keep_checkpoints=100"];
    let first = sb.json(&[&["run", "tiny.yaml", "--json"][..], &keep_all].concat());
    let logged = logged_checkpoints(&sb);
    let hash = |iter: u64| logged.iter().find(|c| c.0 == iter).unwrap().1.clone();
    assert_eq!(present_iters(&sb, &logged), vec![10, 20, 30, 40, 50, 60]);

    // c20 is pinned; c30 is also the output of another manifest's stage (an init that resumes
    // it, without changes, writes the very same bytes).
    assert!(sb.pipe(&["pin", &hash(20)]).status.success());
    sb.write(
        "fork.yaml",
        &format!(
            "name: fork\nstages:\n  model:\n    kind: init\n    from: resume\n    checkpoint: {}\n",
            hash(30)
        ),
    );
    let fork = sb.json(&["run", "fork.yaml", "--json"]);
    assert_eq!(stage(&fork, "model")["outputs"]["ckpt"], hash(30).as_str());

    // The same training runs again (its action record removed by hand), now with the default
    // retention: its superseded checkpoints go, except those two.
    let key = stage(&first, "train")["key"].as_str().unwrap();
    std::fs::remove_file(sb.cache().join("actions").join(format!("{key}.json"))).unwrap();
    let again = sb.json(&["run", "tiny.yaml", "--json"]);
    assert_eq!(stage(&again, "train")["status"], "executed");
    assert_eq!(
        stage(&again, "train")["outputs"],
        stage(&first, "train")["outputs"]
    );
    assert_eq!(present_iters(&sb, &logged), vec![20, 30, 50, 60]);
    // The forked stage is still cached, and the store is consistent.
    let fork = sb.json(&["run", "fork.yaml", "--json"]);
    assert_eq!(stage(&fork, "model")["status"], "cached");
    let v = sb.pipe(&["verify"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

#[test]
fn kill_9_between_evaluations_with_retention_resumes_bit_identically() {
    let keep_one = ["--set", "train.keep_checkpoints=1"];
    let reference = setup("kr-ref", 1500, 10);
    let want = reference.json(&[&["run", "tiny.yaml", "--json"][..], &keep_one].concat());

    let sb = setup("kr", 1500, 10);
    let mut child = sb
        .cmd(&[&["run", "tiny.yaml"][..], &keep_one].concat())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Several checkpoints in, so retention has removed some, then kill -9.
    let deadline = Instant::now() + Duration::from_secs(120);
    while logged_checkpoints(&sb).len() < 6 {
        assert!(Instant::now() < deadline, "no checkpoints within 120 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let logged = logged_checkpoints(&sb);
    assert!(logged.last().unwrap().0 < 1500, "the run finished first");

    // The progress record lists at most keep + 1 checkpoints, all present; of the superseded
    // ones at most one is left (killed between the record and the deletion).
    let progress_dir = sb.cache().join("progress");
    let records: Vec<_> = std::fs::read_dir(&progress_dir).unwrap().collect();
    assert_eq!(records.len(), 1);
    let p: serde_json::Value =
        serde_json::from_slice(&std::fs::read(records[0].as_ref().unwrap().path()).unwrap())
            .unwrap();
    let listed: Vec<&str> = p["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["hash"].as_str().unwrap())
        .collect();
    assert!(
        !listed.is_empty() && listed.len() <= 2,
        "{}",
        p["checkpoints"]
    );
    assert!(listed.iter().all(|h| present(&sb, h)));
    let leftovers = logged
        .iter()
        .filter(|c| !listed.contains(&c.1.as_str()) && present(&sb, &c.1))
        .count();
    assert!(leftovers <= 1, "{leftovers} superseded checkpoints left");

    let id = std::fs::read_dir(sb.cache().join("runs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name()
        .to_string_lossy()
        .to_string();
    let resumed = sb.json(&["resume", &id, "--json"]);
    assert_eq!(resumed["status"], "succeeded");
    assert_eq!(stage(&resumed, "train")["status"], "resumed", "{resumed}");
    assert!(
        stage(&resumed, "train")["metrics"]["resumed_from_iter"]
            .as_u64()
            .unwrap()
            >= 50
    );
    for s in ["train", "sample"] {
        assert_eq!(
            stage(&resumed, s)["outputs"],
            stage(&want, s)["outputs"],
            "stage {s} differs from the uninterrupted run"
        );
    }
    // Finished: the latest checkpoint (also the output), plus at most one leftover from the kill.
    let kept = present_iters(&sb, &logged_checkpoints(&sb));
    assert!(kept.len() <= 2 && kept.ends_with(&[1500]), "kept {kept:?}");
    let v = sb.pipe(&["verify"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}
