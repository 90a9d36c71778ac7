//! Values the engine cannot use, end to end through the binary: sizes that do not fit in memory
//! fail their stage (exit 1, never an abort), meaningless hyper-parameters are refused where the
//! manifest sets them (exit 2), diverging training fails, and sampling temperatures near 0 are greedy.

mod common;
use common::*;

/// A tiny char-level pipeline: prepare, init, train, evaluate, sample.
const MANIFEST: &str = r#"name: limits
defaults:
  seed: 7
stages:
  data:
    kind: prepare
    path: text.txt
    tokenizer: char
  model:
    kind: init
    needs: [data]
    from: scratch
    n_layer: 2
    n_head: 2
    n_embd: 32
    block_size: 32
  train:
    kind: train
    needs: [model, data]
    max_iters: 20
    eval_interval: 10
    eval_iters: 2
    batch_size: 4
    gradient_accumulation_steps: 1
    learning_rate: 1.0e-3
    beta1: 0.9
    beta2: 0.99
  ev:
    kind: evaluate
    needs: [train, data]
    eval_iters: 2
    batch_size: 3
  sample:
    kind: sample
    needs: [train, data]
    num_samples: 2
    max_new_tokens: 40
    start: "the "
    temperature: 0.8
"#;

/// The manifest with each `(line, replacement)` swapped in (each line must occur exactly once).
fn manifest(changes: &[(&str, &str)]) -> String {
    changes.iter().fold(MANIFEST.to_string(), |m, (from, to)| {
        let from = format!("    {from}\n");
        assert_eq!(m.matches(&from).count(), 1, "{from:?}");
        m.replace(&from, &format!("    {to}\n"))
    })
}

fn setup(name: &str, changes: &[(&str, &str)]) -> Sandbox {
    let sb = Sandbox::new(name);
    sb.write("text.txt", &corpus(20_000));
    sb.write("m.yaml", &manifest(changes));
    sb
}

/// The 1-based line of `m.yaml` holding `text`, as errors locate it (`m.yaml:LINE:`).
fn line_of(sb: &Sandbox, text: &str) -> String {
    let m = std::fs::read_to_string(sb.dir.join("m.yaml")).unwrap();
    let i = m.lines().position(|l| l.contains(text)).unwrap();
    format!("m.yaml:{}:", i + 1)
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn run_id(o: &std::process::Output) -> String {
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    doc["run_id"].as_str().unwrap().to_string()
}

/// The samples of a successful run's sample stage.
fn samples(sb: &Sandbox, changes: &[&str]) -> String {
    let mut args = vec!["run", "m.yaml", "--json"];
    for c in changes {
        args.extend(["--set", c]);
    }
    let doc = sb.json(&args);
    let h = stage(&doc, "sample")["outputs"]["samples.txt"]
        .as_str()
        .unwrap()
        .to_string();
    String::from_utf8(sb.pipe(&["cat", &h]).stdout).unwrap()
}

#[test]
fn sizes_that_do_not_fit_fail_their_stage_with_the_numbers_and_resume_fails_the_same_way() {
    let cases = [
        ("n_embd", ("n_embd: 32", "n_embd: 40000"), "model"),
        (
            "block_size",
            ("block_size: 32", "block_size: 1000000000000"),
            "model",
        ),
        (
            "batch",
            ("batch_size: 4", "batch_size: 1000000000"),
            "train",
        ),
        (
            "eval-batch",
            ("batch_size: 3", "batch_size: 1000000000000"),
            "ev",
        ),
    ];
    for (name, change, failing) in cases {
        let sb = setup(&format!("mem-{name}"), &[change]);
        let out = sb.pipe(&["run", "m.yaml", "--json"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains(&format!(
                "{failing}: failed: not enough memory: the model needs"
            )) && err.contains(" of memory, ")
                && err.contains("of it available. Reduce n_embd"),
            "{name}: {err}"
        );
        assert!(!err.contains("memory allocation of"), "{name}: {err}");
        if failing != "model" {
            assert!(
                err.contains("for activations (batch 1000000000"),
                "{name}: {err}"
            );
        }

        let again = sb.pipe(&["resume", &run_id(&out), "--json"]);
        let err = stderr(&again);
        assert_eq!(again.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains("not enough memory"), "{name}: {err}");
    }
}

/// A diverging run fails its train stage, naming the knob most likely at fault first, with its value.
#[test]
fn a_diverging_run_fails_the_train_stage() {
    for (name, knob, first_cause) in [
        (
            "diverge-lr",
            ("learning_rate: 1.0e-3", "learning_rate: 1.0e+6"),
            "likely causes: learning_rate 1e6 too high",
        ),
        (
            "diverge-wd",
            (
                "learning_rate: 1.0e-3",
                "learning_rate: 1.0e-3\n    weight_decay: 1.0e+30",
            ),
            "likely causes: weight_decay 1e30 too large",
        ),
    ] {
        let sb = setup(name, &[knob]);
        let out = sb.pipe(&["run", "m.yaml", "--json"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains("train: failed: training diverged at iter") && err.contains(first_cause),
            "{name}: {err}"
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(stage(&doc, "train")["status"], "failed");
    }
}

#[test]
fn betas_of_one_are_refused_where_the_manifest_sets_them() {
    let sb = setup(
        "betas",
        &[("beta1: 0.9", "beta1: 1.0"), ("beta2: 0.99", "beta2: 1.0")],
    );
    let out = sb.pipe(&["run", "m.yaml"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&line_of(&sb, "beta1: 1.0")) && err.contains("`beta1`: must be in [0, 1)"),
        "{err}"
    );
}

#[test]
fn a_negative_temperature_is_refused_where_the_manifest_sets_it() {
    let sb = setup("negative-t", &[("temperature: 0.8", "temperature: -0.5")]);
    let out = sb.pipe(&["run", "m.yaml"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&line_of(&sb, "temperature: -0.5"))
            && err.contains("`temperature`: must be a finite number >= 0")
            && err.contains("found -5e-1"),
        "{err}"
    );
    // Finite as a 64-bit float, infinite as the 32-bit one sampling uses.
    let sb = setup("huge-t", &[("temperature: 0.8", "temperature: 1.0e+300")]);
    let out = sb.pipe(&["run", "m.yaml"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("fits a 32-bit float (at most 3.4028235e38), found 1e300"),
        "{err}"
    );
}

#[test]
fn temperature_zero_is_greedy_and_a_tiny_one_is_too() {
    let sb = setup("greedy", &[]);
    let greedy = samples(&sb, &["sample.temperature=0"]);
    // top_k 1 keeps only the most likely token: greedy whatever the temperature.
    assert_eq!(
        samples(&sb, &["sample.temperature=0.8", "sample.top_k=1"]),
        greedy
    );
    // 1e-45 overflowed the logits to infinity and sampled NaN probabilities (always token 0, a
    // newline); now it is the limit it approaches: greedy.
    assert_eq!(samples(&sb, &["sample.temperature=1e-45"]), greedy);
    assert!(
        greedy
            .split("---------------")
            .filter(|s| !s.trim().is_empty())
            .all(|s| s
                .trim()
                .trim_start_matches("the ")
                .chars()
                .any(|c| c.is_ascii_alphabetic())),
        "{greedy:?}"
    );
    // Sampling at a real temperature draws something else.
    assert_ne!(
        samples(&sb, &["sample.temperature=1.0", "sample.top_k=null"]),
        greedy
    );
}

/// Messages that tell the truth: each case's exit code and the first line of its error.
#[test]
fn messages_name_what_is_wrong_with_the_exit_code_of_bad_input() {
    // A temperature finite as an f64 but infinite as the f32 sampling uses.
    let sb = setup("huge-t", &[("temperature: 0.8", "temperature: 1.0e300")]);
    let out = sb.pipe(&["run", "m.yaml"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.lines()
            .next()
            .unwrap()
            .contains(&line_of(&sb, "temperature: 1.0e300"))
            && err.contains("must be a finite number >= 0"),
        "{err}"
    );

    // Unpinning what is not pinned says so, and pinning twice says it already was.
    let sb = setup("pins", &[]);
    let h = {
        let doc = sb.json(&["run", "m.yaml", "--json"]);
        stage(&doc, "train")["outputs"]["ckpt"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let out = sb.pipe(&["pin", "--remove", &h]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out).lines().next().unwrap(),
        format!("error: {h} is not pinned, so there is nothing to unpin")
    );
    // A hash the store does not have is an input error too (exit 2), for pinning and unpinning.
    for args in [
        &["pin", "abcdef0123"][..],
        &["pin", "--remove", "abcdef0123"],
    ] {
        let out = sb.pipe(args);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let first = stderr(&out).lines().next().unwrap().to_string();
        assert!(
            first.starts_with("error: no object \"abcdef0123\""),
            "{first}"
        );
    }
    assert!(sb.pipe(&["pin", &h]).status.success());
    let again = sb.pipe(&["pin", &h]);
    assert_eq!(
        String::from_utf8_lossy(&again.stdout).trim(),
        format!("already pinned {h}")
    );

    // A remote given to a build that has none is refused by every command, not only by `run`.
    if !cfg!(feature = "remote") {
        let out = sb.pipe(&["--remote", "s3://bucket/prefix", "gc", "--dry-run"]);
        assert_eq!(out.status.code(), Some(2));
        let first = stderr(&out).lines().next().unwrap().to_string();
        assert!(
            first.contains("this pipe was built without remote stores"),
            "{first}"
        );
    }
}
