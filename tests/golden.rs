//! The engine format, pinned: a tiny deterministic pipeline's output hashes, recorded under the
//! `key::ENGINE_FORMAT` they were made with.
//!
//! Stage keys do not hash the `pipe` binary (see the top of src/key.rs): a change to the engine or
//! to a stage that makes different bytes from the same inputs must bump `ENGINE_FORMAT`, or old cache
//! entries are silently reused as if the new code had made them. This test is what enforces that:
//! with the recorded format, every output hash must be exactly the recorded one.
//!
//! When it fails:
//! - "output bytes changed": the change is intended? Bump `key::ENGINE_FORMAT`, run this test, and
//!   paste the table it prints into `GOLDEN`. Not intended? Something lost determinism or changed
//!   the arithmetic.
//! - "ENGINE_FORMAT changed": paste the table it prints into `GOLDEN`.

mod common;
use common::*;

/// (ENGINE_FORMAT, per CPU ISA path (`gpt::isa`), [("stage/output", blake3 hash)]) for `manifest()`
/// over `corpus(20_000)`. The GEMMs' accumulation order differs between paths, so the engine
/// stages' bytes do; one table per path CI machines run (AVX-512 on Intel Xeons, AVX2 on AMD EPYCs
/// and on any machine with a `--no-default-features` build). The table for the path a machine runs
/// must be here: a missing one fails, printing it.
#[allow(clippy::type_complexity)]
const GOLDEN: (u32, &[(&str, &[(&str, &str)])]) = (3, &[("avx2", TINY), ("avx512", TINY)]);

/// The two paths' table while they agree: for this model (n_embd 32, inner dimensions up to 128)
/// the AVX-512 and AVX2 micro-kernels give the same bits. For the main job's (n_embd 128, inner
/// dimensions up to 512) they do not: its train checkpoint differs between the two builds.
const TINY: &[(&str, &str)] = &[
    (
        "data/meta.json",
        "ef067106e945af08af3e9279e0a97c9c23a1091f831d1debe8b1a88d2d05748d",
    ),
    (
        "data/train.bin",
        "c9ff7944390139de74ca7db06f9a85198cf85f3343a1e0e947192669e2bcc9d1",
    ),
    (
        "data/val.bin",
        "b012b1aad082db8e67c1d1e0d9330bedbed8b1b2580655372c106f6838c1e493",
    ),
    (
        "evaluate/metrics.json",
        "acb527ffdec0da0a34124cfda9bcb2fe29e25343767cbb9c23d80921a032f639",
    ),
    (
        "export/config.json",
        "5b3358f923fed29238dd2d513afdcb3f4931517f74aa2a8d234db6b1d4563d44",
    ),
    (
        "export/model.safetensors",
        "2b993dd16f5001384547ce4ee55fbcefef904b2cd4ce1bcedacb0c0bc2283d7d",
    ),
    (
        "model/ckpt",
        "8b439081c670cb81a23229ab68ddfaf919c732e023adb2634a7192d94c468d81",
    ),
    (
        "sample/samples.txt",
        "c68e725838aa28a6fe721ad7cfa8da85badbee2236cbc44f778f3db06a543e10",
    ),
    (
        "train/ckpt",
        "afd864bbea2a99b0751455a0c4f554fe7f985cf3bec0dcf2b07c008a977e01fa",
    ),
    (
        "train/loss.svg",
        "235f468befc1e05a56628659bafe247519ada0e9fc50b65362a70ac50e60812f",
    ),
    (
        "train/metrics.json",
        "0d72cfcba74c987c18c2abbbcb5766a250cf92a6188cd8eb4ab0d106371212ff",
    ),
];

/// Every stage kind that makes bytes (all but `command`), small enough to run in about a second;
/// dropout on, so the counter-based masks (forward and backward) are covered.
fn manifest() -> String {
    r#"name: golden
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
    dropout: 0.1
  train:
    kind: train
    needs: [model, data]
    max_iters: 12
    eval_interval: 6
    eval_iters: 2
    batch_size: 4
    gradient_accumulation_steps: 2
    learning_rate: 1.0e-3
    warmup_iters: 3
    lr_decay_iters: 12
    min_lr: 1.0e-4
  evaluate:
    kind: evaluate
    needs: [train, data]
    eval_iters: 2
    batch_size: 4
  sample:
    kind: sample
    needs: [train, data]
    num_samples: 2
    max_new_tokens: 40
    start: "the "
  export:
    kind: export
    needs: [train]
"#
    .to_string()
}

/// `stage/output` -> hash, sorted, for one fresh run.
fn hashes(name: &str, extra: &[&str]) -> Vec<(String, String)> {
    let sb = Sandbox::new(name);
    sb.write("text.txt", &corpus(20_000));
    sb.write("golden.yaml", &manifest());
    let mut args = extra.to_vec();
    args.extend(["run", "golden.yaml", "--json"]);
    let doc = sb.json(&args);
    assert_eq!(doc["status"], "succeeded", "{doc}");
    let mut out = Vec::new();
    for s in doc["stages"].as_array().unwrap() {
        assert_eq!(s["status"], "executed", "{s}");
        for (output, hash) in s["outputs"].as_object().unwrap() {
            out.push((
                format!("{}/{output}", s["name"].as_str().unwrap()),
                hash.as_str().unwrap().to_string(),
            ));
        }
    }
    out.sort();
    out
}

/// One path's entry of `GOLDEN`, as Rust.
fn table(isa: &str, h: &[(String, String)]) -> String {
    let mut s = format!("        (\n            \"{isa}\",\n            &[\n");
    for (k, v) in h {
        s += &format!("                (\"{k}\", \"{v}\"),\n");
    }
    s + "            ],\n        ),"
}

#[test]
fn output_hashes_change_only_with_engine_format() {
    let all_threads = hashes("golden", &[]);
    let one_thread = hashes("golden-t1", &["--threads", "1"]);
    assert_eq!(
        all_threads, one_thread,
        "output bytes depend on the thread count"
    );

    let format = pipe::ENGINE_FORMAT;
    let isa = pipe::gpt::isa::Isa::active().name();
    let fresh = table(isa, &all_threads);
    let (recorded, tables) = GOLDEN;
    assert!(
        recorded == format,
        "ENGINE_FORMAT changed ({recorded} -> {format}): set GOLDEN's format in tests/golden.rs to \
         {format} and its tables to those of every path (this machine's, {isa}):\n{fresh}"
    );
    let Some((_, golden)) = tables.iter().find(|(path, _)| *path == isa) else {
        panic!(
            "GOLDEN in tests/golden.rs has no table for this machine's CPU path, {isa}: add\n{fresh}"
        );
    };
    let golden: Vec<(String, String)> = golden
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if golden != all_threads {
        let diffs: Vec<String> = all_threads
            .iter()
            .filter_map(|(k, v)| match golden.iter().find(|(g, _)| g == k) {
                Some((_, old)) if old == v => None,
                Some((_, old)) => Some(format!("  {k}: {old} -> {v}")),
                None => Some(format!("  {k}: new output {v}")),
            })
            .chain(
                golden
                    .iter()
                    .filter(|(g, _)| !all_threads.iter().any(|(k, _)| k == g))
                    .map(|(g, old)| format!("  {g}: output gone (was {old})")),
            )
            .collect();
        panic!(
            "output bytes changed on the {isa} path with ENGINE_FORMAT still {format}: bump \
             key::ENGINE_FORMAT and update GOLDEN in tests/golden.rs (every path's table)\n{}\n\
             new table:\n{fresh}",
            diffs.join("\n")
        );
    }
}
