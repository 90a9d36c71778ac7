//! nanoGPT's ckpt.pt in and out. The fixtures (tests/fixtures/nanogpt, made by
//! scripts/make_nanogpt_fixture.py with torch) are checkpoints as nanoGPT's train.py saves them
//! and what PyTorch computes from them; the export checks run torch itself
//! (scripts/nanogpt_check.py loads the file as sample.py and train.py do, with weights_only=True).

mod common;
use common::*;
use pipe::gpt::checkpoint::{Checkpoint, CheckpointFile, tensor_f32};
use pipe::gpt::nanogpt::{ExportNames, NanoCheckpoint, write_ckpt_pt};
use pipe::gpt::optim::clip_grad_norm;
use pipe::gpt::params::ParamLayout;
use pipe::gpt::{Gpt, TrainConfig};
use safetensors::SafeTensors;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// Logits: max |pipe - torch| (the bound). Measured: 6.0e-8.
const LOGIT_BOUND: f32 = 1e-5;
/// Weights after one train.py iteration from the imported state, relative to each tensor's largest
/// element, key biases aside (see `key_biases`): about 7x the largest error measured, 1.3e-6
/// (transformer.h.1.attn.c_attn.weight; the others are below 2e-7).
const STEP_BOUND: f32 = 1e-5;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/nanogpt")
        .join(rel)
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("reference.json")).unwrap()).unwrap()
}

/// `{prefix}.{name}` of reference.safetensors for every parameter, in pipe's buffer order.
fn reference_flat(layout: &ParamLayout, prefix: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixture("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out = vec![0.0f32; layout.total];
    for t in &layout.tensors {
        let view = st.tensor(&format!("{prefix}.{}", t.name)).unwrap();
        out[t.range.clone()].copy_from_slice(&tensor_f32(&view).unwrap());
    }
    out
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter())
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Imports a nanoGPT checkpoint into pipe's format, as `init: {from: nanogpt}` does.
fn import(path: &Path) -> (Vec<u8>, Checkpoint) {
    let nano = NanoCheckpoint::open(path).unwrap();
    let mut bytes = Vec::new();
    nano.write_pipe(None, &mut bytes).unwrap();
    let ck = Checkpoint::from_bytes(&bytes).unwrap();
    (bytes, ck)
}

fn logits_of(ck: &Checkpoint, idx: &Value) -> Vec<f32> {
    let x = ids(idx);
    let rows = idx.as_array().unwrap().len();
    let mut m = Gpt::from_params(ck.config.clone(), ck.params.clone()).unwrap();
    m.forward(&x, None, rows, x.len() / rows, None);
    m.logits().to_vec()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn a_compiled_models_checkpoint_imports_with_torchs_logits() {
    let r = reference();
    // The out_dir, as nanoGPT users name it; its ckpt.pt has `_orig_mod.` keys and mask buffers.
    let (_, ck) = import(&fixture("out-tiny"));
    assert_eq!(ck.config.vocab_size, 65);
    assert_eq!(ck.config.n_layer, 2);
    let d = max_diff(&logits_of(&ck, &r["idx"]), &floats(&r["logits"]));
    eprintln!("logits: max |pipe - torch| {d:.2e}");
    assert!(d <= LOGIT_BOUND, "logits differ from torch's by {d}");
}

#[test]
fn bf16_weights_import_as_torch_reads_them() {
    let r = reference();
    let (_, ck) = import(&fixture("bf16.pt"));
    // Weights only: nothing to continue, so a train stage starts a fresh optimizer.
    assert!(ck.optimizer.is_none() && ck.progress.is_none());
    let d = max_diff(&logits_of(&ck, &r["idx"]), &floats(&r["bf16_logits"]));
    assert!(d <= LOGIT_BOUND, "bf16 logits differ from torch's by {d}");
}

#[test]
fn the_import_keeps_iter_num_best_val_loss_and_adamws_moments() {
    let r = reference();
    let (_, ck) = import(&fixture("out-tiny/ckpt.pt"));
    let p = ck
        .progress
        .as_ref()
        .expect("a checkpoint with an optimizer continues");
    assert_eq!(p.iter_num, r["iter_num"].as_u64().unwrap());
    assert_eq!(p.adam_step, r["adam_step"].as_u64().unwrap());
    assert_eq!(p.best_val_loss, r["best_val_loss"].as_f64().unwrap() as f32);
    assert_eq!((p.adam.beta1, p.adam.beta2, p.adam.eps), (0.9, 0.99, 1e-8));
    assert_eq!(p.adam.weight_decay, 0.1);
    let layout = ParamLayout::new(&ck.config);
    let (m, v) = ck.optimizer.as_ref().unwrap();
    // Copied, not recomputed: bit for bit, each parameter's moments in its place.
    assert!(m == &reference_flat(&layout, "exp_avg"), "exp_avg differs");
    assert!(
        v == &reference_flat(&layout, "exp_avg_sq"),
        "exp_avg_sq differs"
    );
}

/// The key third of each c_attn.bias: its true gradient is zero (softmax ignores a shift shared
/// by a row's keys), so both engines step it by rounding noise that AdamW amplifies differently
/// (tests/reference.rs explains). Left out of the per-tensor bound.
fn key_biases(ck: &Checkpoint) -> Vec<std::ops::Range<usize>> {
    let c = ck.config.n_embd;
    ParamLayout::new(&ck.config)
        .blocks
        .iter()
        .map(|b| {
            let r = b.c_attn_b.clone().unwrap();
            r.start + c..r.start + 2 * c
        })
        .collect()
}

/// One train.py iteration (one micro-step, clip, AdamW at get_lr(iter_num)) from `ck`'s state.
fn pipe_step(ck: &Checkpoint, cfg: &TrainConfig, x: &[u32], y: &[u32], b: usize) -> Gpt {
    let p = ck.progress.as_ref().unwrap();
    let mut opt = ck.restore_optimizer(p.adam.clone());
    let mut m = Gpt::from_params(ck.config.clone(), ck.params.clone()).unwrap();
    let lr = cfg.schedule().at(p.iter_num);
    m.forward(x, Some(y), b, x.len() / b, None);
    m.backward(1.0);
    clip_grad_norm(&mut m.grads, cfg.grad_clip as f32);
    opt.update(&mut m.params, &m.grads, lr);
    m
}

fn train_config(r: &Value) -> TrainConfig {
    let c = &r["config"];
    TrainConfig {
        learning_rate: c["learning_rate"].as_f64().unwrap(),
        warmup_iters: c["warmup_iters"].as_u64().unwrap(),
        lr_decay_iters: c["lr_decay_iters"].as_u64().unwrap(),
        min_lr: c["min_lr"].as_f64().unwrap(),
        grad_clip: c["grad_clip"].as_f64().unwrap(),
        ..TrainConfig::default()
    }
}

fn rel_err(ours: &[f32], theirs: &[f32]) -> f32 {
    let scale = theirs.iter().map(|x| x.abs()).fold(0.0, f32::max);
    max_diff(ours, theirs) / scale.max(f32::MIN_POSITIVE)
}

#[test]
fn the_next_step_after_import_equals_train_py_resuming() {
    let r = reference();
    let (_, ck) = import(&fixture("out-tiny"));
    let cfg = train_config(&r);
    assert_eq!(
        cfg.schedule().at(ck.progress.as_ref().unwrap().iter_num),
        r["next"]["lr"].as_f64().unwrap(),
        "the learning rate continues where train.py left it"
    );
    let (x, y) = (ids(&r["next"]["x"]), ids(&r["next"]["y"]));
    let b = r["next"]["x"].as_array().unwrap().len();
    let m = pipe_step(&ck, &cfg, &x, &y, b);
    let mut theirs = reference_flat(&m.layout, "next");
    for k in key_biases(&ck) {
        theirs[k.clone()].copy_from_slice(&m.params[k]);
    }
    for t in &m.layout.tensors {
        let e = rel_err(&m.params[t.range.clone()], &theirs[t.range.clone()]);
        eprintln!("next.{}: {e:.2e}", t.name);
        assert!(e <= STEP_BOUND, "{}: {e:e} from torch's step", t.name);
    }
}

/// The error `NanoCheckpoint::open` gives, as one string.
fn open_error(path: &Path) -> String {
    match NanoCheckpoint::open(path) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn bad_checkpoints_get_errors_that_name_the_file_and_the_problem() {
    let sb = Sandbox::new("nanogpt-bad");
    let text = sb.write("notes.pt", "this is not a torch file\n");
    let good = std::fs::read(fixture("out-tiny/ckpt.pt")).unwrap();
    let cut = sb.dir.join("cut.pt");
    std::fs::write(&cut, &good[..good.len() / 2]).unwrap();
    std::fs::create_dir_all(sb.dir.join("empty-out")).unwrap();
    let cases: Vec<(PathBuf, &[&str])> = vec![
        (text, &["notes.pt", "cannot be read as a PyTorch file"]),
        (cut.clone(), &["cut.pt", "damaged or truncated zip"]),
        (
            fixture("no_model.pt"),
            &["no_model.pt", "no `model` state dict"],
        ),
        (
            fixture("bad_shape.pt"),
            &[
                "bad_shape.pt",
                "transformer.wte.weight",
                "[65, 16]",
                "[64, 16]",
            ],
        ),
        (
            fixture("int64.pt"),
            &["int64.pt", "transformer.ln_f.weight", "I64", "float32"],
        ),
        (
            sb.dir.join("empty-out"),
            &["empty-out", "without a ckpt.pt"],
        ),
        (sb.dir.join("nowhere"), &["nowhere", "does not exist"]),
    ];
    for (path, words) in cases {
        let e = open_error(&path);
        eprintln!("{}: {e}", path.display());
        for w in words {
            assert!(
                e.contains(w),
                "error for {}: {e:?} lacks {w:?}",
                path.display()
            );
        }
    }
}

/// Runs scripts/nanogpt_check.py on `request`; its JSON answer.
fn torch_check(py: &str, dir: &Path, request: Value) -> Value {
    let req = dir.join("request.json");
    std::fs::write(&req, request.to_string()).unwrap();
    python_json(py, "nanogpt_check.py", &[req.as_os_str()])
}

#[test]
fn an_exported_ckpt_pt_loads_in_torch_and_continues_as_pipe_does() {
    let r = reference();
    let sb = Sandbox::new("nanogpt-export");
    let (bytes, ck) = import(&fixture("out-tiny"));
    let out = sb.dir.join("out-pipe");
    std::fs::create_dir_all(&out).unwrap();
    let exported = out.join("ckpt.pt");
    let names = ExportNames {
        dataset: "shakespeare_char",
        out_dir: "out-pipe",
    };
    let file = CheckpointFile::parse(&bytes).unwrap();
    write_ckpt_pt(&file, &names, &exported).unwrap();

    // Back into pipe: the same weights, moments and progress, bit for bit.
    let (_, back) = import(&exported);
    assert_eq!(back.config, ck.config);
    assert!(
        back.params == ck.params,
        "weights changed in the round trip"
    );
    assert!(
        back.optimizer == ck.optimizer,
        "moments changed in the round trip"
    );
    let (p, q) = (
        ck.progress.as_ref().unwrap(),
        back.progress.as_ref().unwrap(),
    );
    assert_eq!(
        (q.iter_num, q.adam_step, q.best_val_loss, &q.adam),
        (p.iter_num, p.adam_step, p.best_val_loss, &p.adam)
    );
    // Written twice, the same bytes (the store keys it by content).
    let again = sb.dir.join("again.pt");
    write_ckpt_pt(&file, &names, &again).unwrap();
    assert!(std::fs::read(&again).unwrap() == std::fs::read(&exported).unwrap());

    let Some(py) = python_with("torch") else {
        missing("the torch.load check: no Python with torch (set PIPE_TEST_PYTHON)");
        return;
    };
    let cfg = train_config(&r);
    let (x, y) = (ids(&r["next"]["x"]), ids(&r["next"]["y"]));
    let b = r["next"]["x"].as_array().unwrap().len();
    let lr = cfg.schedule().at(p.iter_num);
    let theirs = torch_check(
        &py,
        &sb.dir,
        json!({
            "ckpt": exported,
            "idx": r["idx"],
            "step": { "x": r["next"]["x"], "y": r["next"]["y"], "lr": lr, "grad_clip": cfg.grad_clip },
        }),
    );
    assert_eq!(theirs["iter_num"], json!(p.iter_num));
    assert_eq!(
        theirs["best_val_loss"].as_f64().unwrap() as f32,
        p.best_val_loss
    );
    assert_eq!(theirs["config"]["dataset"], "shakespeare_char");
    assert_eq!(theirs["tied"], true, "lm_head.weight is wte's tensor");
    assert_eq!(theirs["adam_step_before"], json!(p.adam_step as f64));
    let d = max_diff(&logits_of(&ck, &r["idx"]), &floats(&theirs["logits"]));
    assert!(
        d <= LOGIT_BOUND,
        "torch's logits of the export differ by {d}"
    );

    // torch's AdamW step from the exported state equals pipe's next step.
    let m = pipe_step(&ck, &cfg, &x, &y, b);
    let keys = key_biases(&ck);
    for t in &m.layout.tensors {
        let mut want = floats(&theirs["params"][&t.name]);
        for k in &keys {
            if t.range.start <= k.start && k.end <= t.range.end {
                let o = k.start - t.range.start;
                want[o..o + k.len()].copy_from_slice(&m.params[k.clone()]);
            }
        }
        let e = rel_err(&m.params[t.range.clone()], &want);
        assert!(
            e <= STEP_BOUND,
            "{}: {e:e} from torch's step on the export",
            t.name
        );
    }
}

#[test]
fn init_from_nanogpt_continues_training_and_exports_for_nanogpt() {
    let sb = Sandbox::new("nanogpt-run");
    let Some(text) = shared("data/tinyshakespeare.txt") else {
        missing(
            "../shared/data/tinyshakespeare.txt (the fixture's vocabulary is its 65 characters)",
        );
        return;
    };
    let out = sb.dir.join("out-tiny");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(fixture("out-tiny/ckpt.pt"), out.join("ckpt.pt")).unwrap();
    let manifest = format!(
        "name: from_nanogpt\nstages:\n  data:\n    kind: prepare\n    path: {}\n    tokenizer: char\n  model:\n    kind: init\n    from: nanogpt\n    path: out-tiny\n  train:\n    kind: train\n    needs: [model, data]\n    max_iters: 5\n    eval_interval: 5\n    eval_iters: 1\n    batch_size: 2\n    gradient_accumulation_steps: 1\n  export:\n    kind: export\n    needs: [train, data]\n    format: nanogpt\n    dataset: shakespeare_char\n    to: out-pipe\n",
        text.display()
    );
    sb.write("m.yaml", &manifest);
    let run = sb.json(&["run", "m.yaml", "--json"]);
    assert_eq!(stage(&run, "model")["metrics"]["iter_num"], 3);
    let train = &stage(&run, "train")["metrics"];
    assert_eq!(train["resumed_from_iter"], 3, "{train}");
    assert_eq!(train["iters"], 5);
    assert!(sb.dir.join("out-pipe/ckpt.pt").is_file());
    let meta = std::fs::read(sb.dir.join("out-pipe/meta.pkl")).unwrap();
    assert!(meta.starts_with(&[0x80, 2]), "meta.pkl is a pickle");

    // Where the file lies is not in the key: moved, the import is a cache hit.
    let moved = sb.dir.join("elsewhere");
    std::fs::rename(&out, &moved).unwrap();
    let again = sb.json(&[
        "run",
        "m.yaml",
        "--json",
        "--set",
        "model.path=elsewhere/ckpt.pt",
    ]);
    assert_eq!(stage(&again, "model")["status"], "cached");
    assert_eq!(stage(&again, "model")["key"], stage(&run, "model")["key"]);

    // The manifest's mistakes are located.
    let bad = manifest.replace("    path: out-tiny\n", "");
    sb.write("bad.yaml", &bad);
    let o = sb.pipe(&["run", "bad.yaml"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("`from: nanogpt` needs `path`"),
        "{e}"
    );
    assert!(e.contains("bad.yaml"), "{e}");
}

#[test]
fn nanogpts_vocabulary_sizes_round_trip_bit_for_bit() {
    // 65 (char), 50257 (GPT-2's own), 50304 (train.py's padded default).
    let sb = Sandbox::new("nanogpt-vocab");
    for vocab in [65, 50257, 50304] {
        let cfg = pipe::gpt::GptConfig {
            n_layer: 1,
            n_head: 2,
            n_embd: 8,
            block_size: 8,
            vocab_size: vocab,
            bias: false,
            dropout: 0.0,
            gelu: pipe::gpt::Gelu::Erf,
        };
        let m = random_model(cfg, 7, 0.5);
        let ck = Checkpoint {
            config: m.config.clone(),
            params: m.params.clone(),
            optimizer: None,
            progress: None,
        };
        let bytes = ck.to_bytes().unwrap();
        let path = sb.dir.join(format!("v{vocab}.pt"));
        let names = ExportNames {
            dataset: "d",
            out_dir: "o",
        };
        write_ckpt_pt(&CheckpointFile::parse(&bytes).unwrap(), &names, &path).unwrap();
        let (_, back) = import(&path);
        assert_eq!(back.config, ck.config, "vocab {vocab}");
        assert!(back.params == ck.params, "vocab {vocab}: weights changed");
        // An init stage's model exports a fresh optimizer (zero moments, step 0), which imports as
        // a state at iter 0.
        let p = back
            .progress
            .expect("an exported ckpt.pt always has an optimizer");
        assert_eq!((p.iter_num, p.adam_step), (0, 0));
        assert!(back.optimizer.unwrap().0.iter().all(|x| *x == 0.0));
    }
}
