//! Sweeps and `pipe compare`, end to end (issue 18).

use super::*;

/// Every `stage_finished` of every run in the store: (stage, key, status).
fn finished(sb: &Sandbox) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for id in run_ids(sb) {
        let log = std::fs::read_to_string(sb.cache().join("runs").join(id).join("log.jsonl"))
            .unwrap_or_default();
        for line in log.lines() {
            let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if e["event"] == "stage_finished" {
                out.push((
                    e["stage"].as_str().unwrap().to_string(),
                    e["key"].as_str().unwrap().to_string(),
                    e["status"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    out
}

fn count(f: &[(String, String, String)], stage: &str, status: &str) -> usize {
    f.iter()
        .filter(|(s, _, st)| s == stage && st == status)
        .count()
}

/// Each variant's run status, in variant order.
fn run_statuses(doc: &serde_json::Value) -> Vec<String> {
    sweep_runs(doc)
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_string())
        .collect()
}

fn sweep_runs(doc: &serde_json::Value) -> Vec<serde_json::Value> {
    doc["runs"].as_array().unwrap().clone()
}

/// A 2×2 grid, two variants at a time: 4 runs; the data and the model, which no swept value
/// reaches, are computed once (the second variant that needs them at the same time waits and
/// finds them cached); each variant's checkpoint is the one a plain `--set` run makes.
#[test]
fn a_grid_sweep_computes_shared_stages_once_and_matches_plain_runs() {
    let sb = setup("sweep-grid", 20, 10);
    let doc = sb.json(&[
        "run",
        "tiny.yaml",
        "--sweep",
        "train.learning_rate=1e-3,3e-4",
        "--sweep",
        "train.batch_size=2,4",
        "-j",
        "2",
        "--json",
    ]);
    assert_eq!(doc["status"], "succeeded", "{doc}");
    let sweep_id = doc["sweep_id"].as_str().unwrap().to_string();
    let runs = sweep_runs(&doc);
    assert_eq!(runs.len(), 4);
    let f = finished(&sb);
    assert_eq!(count(&f, "data", "executed"), 1, "{f:?}");
    assert_eq!(count(&f, "model", "executed"), 1, "{f:?}");
    assert_eq!(count(&f, "train", "executed"), 4, "{f:?}");
    assert_eq!(
        count(&f, "data", "cached") + count(&f, "model", "cached"),
        6
    );
    // The sweep is listed, with its runs, and each run names its sweep and overrides.
    let shown = sb.json(&["show", "--json"]);
    let sweeps = shown["sweeps"].as_array().unwrap();
    assert_eq!(sweeps.len(), 1);
    assert_eq!(sweeps[0]["sweep_id"], sweep_id.as_str());
    assert_eq!(sweeps[0]["status"], "succeeded");
    assert_eq!(sweeps[0]["runs"].as_array().unwrap().len(), 4);
    let plain = setup("sweep-grid-plain", 20, 10);
    for (run, listed) in runs.iter().zip(sweeps[0]["runs"].as_array().unwrap()) {
        let id = run["run_id"].as_str().unwrap();
        assert_eq!(listed["run_id"], id);
        let log =
            std::fs::read_to_string(sb.cache().join("runs").join(id).join("log.jsonl")).unwrap();
        assert!(log.contains(&sweep_id), "{log}");
        let overrides: Vec<String> = listed["overrides"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap().to_string())
            .collect();
        assert_eq!(overrides.len(), 2);
        let mut args = vec!["run", "tiny.yaml", "--json"];
        for o in &overrides {
            args.extend(["--set", o.as_str()]);
        }
        let alone = plain.json(&args);
        assert_eq!(
            stage(&alone, "train")["outputs"]["ckpt"],
            stage(run, "train")["outputs"]["ckpt"],
            "{overrides:?}"
        );
    }
    // Again: every variant cached, nothing computed.
    let again = sb.json(&[
        "run",
        "tiny.yaml",
        "--sweep",
        "train.learning_rate=1e-3,3e-4",
        "--sweep",
        "train.batch_size=2,4",
        "--json",
    ]);
    for r in sweep_runs(&again) {
        assert!(statuses(&r).iter().all(|(_, s)| s == "cached"), "{r}");
    }
}

/// The manifest's own `sweep:` (grid × zip), the same as the command line's.
#[test]
fn a_manifest_sweep_composes_grid_and_zip() {
    let sb = setup("sweep-manifest", 10, 5);
    let text = format!(
        "{}sweep:\n  grid:\n    train.learning_rate: [1.0e-3, 3.0e-4]\n  zip:\n    train.batch_size: [2, 4]\n    train.max_iters: [10, 6]\n",
        tiny_manifest(10, 5)
    );
    sb.write("swept.yaml", &text);
    let doc = sb.json(&["run", "swept.yaml", "--json"]);
    let runs = sweep_runs(&doc);
    assert_eq!(runs.len(), 4);
    let shown = sb.json(&["show", doc["sweep_id"].as_str().unwrap(), "--json"]);
    let overrides: Vec<String> = shown["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["overrides"].to_string())
        .collect();
    assert!(
        overrides[0].contains("train.learning_rate=0.001"),
        "{overrides:?}"
    );
    assert!(
        overrides[0].contains("train.batch_size=2") && overrides[0].contains("train.max_iters=10")
    );
    assert!(overrides[3].contains("train.learning_rate=0.0003"));
    assert!(
        overrides[3].contains("train.batch_size=4") && overrides[3].contains("train.max_iters=6")
    );
}

/// Waits until some run's log in `sb` holds more than `seen` checkpoint events; their number.
fn wait_for_checkpoints(sb: &Sandbox, seen: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "no new checkpoint within 120 s");
        let n: usize = run_ids(sb)
            .iter()
            .map(|id| {
                std::fs::read_to_string(sb.cache().join("runs").join(id).join("log.jsonl"))
                    .unwrap_or_default()
                    .matches("\"checkpoint\"")
                    .count()
            })
            .sum();
        if n > seen {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A sweep killed with `kill -9` twice, then `pipe resume SWEEP`: every variant's outputs equal
/// an uninterrupted sweep's, and no stage key is executed twice.
#[test]
fn a_killed_sweep_resumes_to_the_same_bytes() {
    let args = [
        "run",
        "tiny.yaml",
        "--sweep",
        "train.learning_rate=1e-3,3e-4",
        "--json",
    ];
    let reference = setup("sweep-kill-ref", 300, 20);
    let want = reference.json(&args);
    let sb = setup("sweep-kill", 300, 20);
    let quiet = |c: &mut std::process::Command| {
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut child = quiet(&mut sb.cmd(&args));
    let seen = wait_for_checkpoints(&sb, 0);
    child.kill().unwrap();
    child.wait().unwrap();
    let sweeps: Vec<_> = std::fs::read_dir(sb.cache().join("sweeps"))
        .unwrap()
        .collect();
    assert_eq!(sweeps.len(), 1);
    let id = sweeps[0]
        .as_ref()
        .unwrap()
        .file_name()
        .to_string_lossy()
        .to_string();
    // Resumed, and killed again at its next checkpoint.
    let mut child = quiet(&mut sb.cmd(&["resume", &id]));
    wait_for_checkpoints(&sb, seen);
    child.kill().unwrap();
    child.wait().unwrap();
    let done = sb.json(&["resume", &id, "--json"]);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["sweep_id"], id.as_str());
    let (got, want) = (sweep_runs(&done), sweep_runs(&want));
    assert_eq!(got.len(), 2);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(outputs(g), outputs(w));
    }
    let f = finished(&sb);
    let mut executed: Vec<&String> = f
        .iter()
        .filter(|(_, _, st)| st == "executed" || st == "resumed")
        .map(|(_, k, _)| k)
        .collect();
    let n = executed.len();
    executed.sort();
    executed.dedup();
    assert_eq!(executed.len(), n, "a stage key was computed twice: {f:?}");
    assert!(f.iter().any(|(_, _, st)| st == "resumed"), "{f:?}");
}

const FLAKY: &str = "name: flaky\nstages:\n  a:\n    kind: command\n    cmd: 'true'\n";

/// By default the other variants go on and the summary lists the failure; with `--fail-fast`
/// no variant starts after the first failure, and the sweep can be resumed.
#[test]
fn sweep_failures_go_on_by_default_and_stop_with_fail_fast() {
    let sb = Sandbox::new("sweep-fail");
    sb.write("m.yaml", FLAKY);
    let sweep = "a.cmd=exit 0,exit 3,echo third";
    let out = sb.pipe(&["run", "m.yaml", "--sweep", sweep]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("succeeded").count(), 2, "{text}");
    assert!(text.contains("failed") && text.contains("exit 3"), "{text}");
    assert!(text.contains("pipe resume"), "{text}");

    let out = sb.pipe(&["run", "m.yaml", "--sweep", sweep, "--fail-fast", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let st = run_statuses(&doc);
    assert_eq!(st, ["succeeded", "failed", "interrupted"], "{doc}");
    // Resumed: the failed variant runs again (and fails again), the unstarted one runs.
    let out = sb.pipe(&["resume", doc["sweep_id"].as_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let st = run_statuses(&doc);
    assert_eq!(st, ["succeeded", "failed", "succeeded"], "{doc}");
}

/// Bad sweeps are located errors (exit 2) and nothing runs.
#[test]
fn bad_sweeps_are_located_errors_and_nothing_runs() {
    let sb = setup("sweep-bad", 10, 5);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--sweep", "train.nope=1,2"], "--sweep train.nope=1,2"),
        (vec!["--sweep", "nostage.x=1,2"], "no stage named"),
        (vec!["--sweep", "train.max_iters="], "no values"),
        (
            vec![
                "--sweep",
                "train.max_iters=1,2",
                "--set",
                "train.max_iters=3",
            ],
            "swept twice",
        ),
    ];
    for (extra, says) in cases {
        let mut args = vec!["run", "tiny.yaml"];
        args.extend(extra.iter());
        let out = sb.pipe(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let text = format!(
        "{}sweep:\n  grid:\n    train.max_iters: []\n",
        tiny_manifest(10, 5)
    );
    sb.write("empty.yaml", &text);
    let out = sb.pipe(&["run", "empty.yaml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let line = text
        .lines()
        .position(|l| l.contains("train.max_iters: []"))
        .unwrap()
        + 1;
    assert!(stderr.contains(&format!("empty.yaml:{line}")), "{stderr}");
    let many: Vec<String> = (1..=1001).map(|i| i.to_string()).collect();
    let axis = format!("train.max_iters={}", many.join(","));
    let out = sb.pipe(&["run", "tiny.yaml", "--sweep", &axis]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert!(run_ids(&sb).is_empty(), "a run was created");
    assert!(!sb.cache().join("sweeps").exists());
}

/// `compare`: the columns are exactly the parameters that differ, rows sort by the metric,
/// `--json`'s shape holds, and `--plot` writes an SVG and a self-contained HTML page.
#[test]
fn compare_shows_the_differing_parameters_sorted_with_json_csv_and_plots() {
    let sb = setup("compare", 20, 10);
    let doc = sb.json(&[
        "run",
        "tiny.yaml",
        "--sweep",
        "train.learning_rate=3e-3,1e-3,3e-4",
        "--json",
    ]);
    let c = sb.json(&["compare", "--json"]);
    assert_eq!(c["params"], serde_json::json!(["train.learning_rate"]));
    let rows = c["runs"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let best: Vec<f64> = rows
        .iter()
        .map(|r| r["metrics"]["best_val_loss"].as_f64().unwrap())
        .collect();
    assert!(best.windows(2).all(|w| w[0] <= w[1]), "{best:?}");
    for r in rows {
        assert_eq!(r["status"], "succeeded");
        assert_eq!(r["params"].as_object().unwrap().len(), 1);
        for m in [
            "best_val_loss",
            "best_iter",
            "final_train_loss",
            "final_val_loss",
            "tokens_per_second",
            "wall_seconds",
        ] {
            assert!(r["metrics"].get(m).is_some(), "{m}: {r}");
        }
        // The sweep's runs, by the sweep id too.
        assert!(sweep_runs(&doc).iter().any(|d| d["run_id"] == r["run_id"]));
    }
    let by_id = sb.json(&["compare", doc["sweep_id"].as_str().unwrap(), "--json"]);
    assert_eq!(by_id["runs"].as_array().unwrap().len(), 3);
    let sorted = sb.json(&["compare", "--sort", "final_train_loss", "--json"]);
    let train: Vec<f64> = sorted["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metrics"]["final_train_loss"].as_f64().unwrap())
        .collect();
    assert!(train.windows(2).all(|w| w[0] <= w[1]), "{train:?}");
    let all = sb.json(&["compare", "--all", "--json"]);
    assert!(all["params"].as_array().unwrap().len() > 10, "{all}");
    assert_eq!(
        sb.pipe(&["compare", "--sort", "nope"]).status.code(),
        Some(2)
    );
    let table = String::from_utf8_lossy(&sb.pipe(&["compare"]).stdout).to_string();
    let header = table.lines().next().unwrap();
    assert!(
        header.contains("train.learning_rate") && !header.contains("max_iters"),
        "{table}"
    );
    let csv = String::from_utf8_lossy(&sb.pipe(&["compare", "--csv"]).stdout).to_string();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(
        csv.starts_with("run_id,status,train.learning_rate,best_val_loss"),
        "{csv}"
    );
    for file in ["c.svg", "c.html"] {
        let out = sb.pipe(&["compare", "--plot", file]);
        assert!(out.status.success());
        let text = std::fs::read_to_string(sb.dir.join(file)).unwrap();
        assert_eq!(text.matches("<svg").count(), text.matches("</svg>").count());
        // Two panels, each with 3 curves and 3 legend lines.
        assert_eq!(text.matches("stroke-width=\"2\"").count(), 12, "{file}");
        assert!(text.contains("learning_rate=0.003"), "{file}: the legend");
        assert!(
            !text.contains("<script") && !text.contains("src=\"http"),
            "{file}"
        );
        if file.ends_with(".html") {
            assert!(text.starts_with("<!DOCTYPE html>") && text.contains("<table>"));
        }
    }
}

/// `--fail-fast` with two variants at once: the first failure (a command that fails after 2 s)
/// cancels the other variant while it trains, at its next step.
#[test]
fn fail_fast_cancels_a_variant_that_is_training() {
    let sb = setup("sweep-cancel", 50_000, 25_000);
    let text = format!(
        "{}  gate:\n    kind: command\n    cmd: 'true'\n",
        tiny_manifest(50_000, 25_000)
    );
    sb.write("gated.yaml", &text);
    let sweep = "gate.cmd=sleep 2; exit 1,echo ok";
    let t0 = Instant::now();
    let out = sb.pipe(&[
        "run",
        "gated.yaml",
        "--sweep",
        sweep,
        "-j",
        "2",
        "--fail-fast",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "{:?}: not cancelled",
        t0.elapsed()
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = sweep_runs(&doc);
    assert_eq!(stage(&runs[0], "gate")["status"], "failed", "{doc}");
    let train = stage(&runs[1], "train");
    assert_eq!(train["status"], "failed", "{doc}");
    assert!(
        train["error"].as_str().unwrap().contains("cancelled"),
        "{doc}"
    );
    assert_eq!(runs[1]["status"], "failed");
}
