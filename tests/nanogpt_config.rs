//! `pipe import nanogpt`: nanoGPT-style configs (written here, in the style of its config/*.py)
//! become manifests whose stages hold what train.py would use, and the manifests run.

mod common;
use common::*;
use serde_json::{Value, json};
use std::path::Path;

/// `pipe import nanogpt ARGS... -o out.yaml` in the sandbox; the manifest as pipe loads it.
fn import(sb: &Sandbox, args: &[&str]) -> pipe::Manifest {
    let mut all = vec!["import", "nanogpt"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "imported.yaml", "--force"]);
    let o = sb.pipe(&all);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    pipe::load_manifest(&sb.dir.join("imported.yaml"), &[]).unwrap()
}

fn params(m: &pipe::Manifest, stage: &str) -> Value {
    let s = m
        .stages
        .iter()
        .find(|s| s.name == stage)
        .unwrap_or_else(|| panic!("no stage {stage}"));
    Value::Object(s.params.clone())
}

/// The error of `pipe import nanogpt ARGS`.
fn import_error(sb: &Sandbox, args: &[&str]) -> String {
    let mut all = vec!["import", "nanogpt"];
    all.extend_from_slice(args);
    let o = sb.pipe(&all);
    assert!(
        !o.status.success(),
        "imported: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).to_string()
}

const CHAR_CONFIG: &str = "\
# a small character-level model, in nanoGPT's style
out_dir = 'out-tiny-char'
eval_interval = 50 # frequent: it overfits
eval_iters = 20
log_interval = 5
always_save_checkpoint = False

wandb_log = False
wandb_project = 'tiny'
wandb_run_name = 'ft-' + str(time.time())

dataset = 'shakespeare_char'
gradient_accumulation_steps = 2 * 2
batch_size = 32
block_size = 128

n_layer = 3
n_head = 4
n_embd = 64
dropout = 0.1

learning_rate = 2e-3
max_iters = 500
lr_decay_iters = max_iters # as usual
min_lr = learning_rate / 10
beta2 = 0.99
warmup_iters = 50
";

#[test]
fn a_char_config_maps_every_key_to_what_train_py_would_use() {
    let sb = Sandbox::new("import-char");
    sb.write(
        "config/tiny_char.py",
        &format!("import time\n{CHAR_CONFIG}"),
    );
    let m = import(
        &sb,
        &[
            "config/tiny_char.py",
            "--device=cpu",
            "--batch_size=16",
            "--compile=False",
        ],
    );
    assert_eq!(m.defaults.device.name(), "cpu");
    assert_eq!(m.defaults.seed, 1337);
    let data = params(&m, "data");
    assert_eq!(data["tokenizer"], "char");
    assert_eq!(data["val_fraction"], 0.1);
    assert_eq!(data["path"], "data/shakespeare_char/input.txt");
    assert!(data["sha256"].is_string() && data["url"].is_string());
    let model = params(&m, "model");
    assert_eq!(
        model,
        json!({"from": "scratch", "n_layer": 3, "n_head": 4, "n_embd": 64, "block_size": 128,
               "bias": false, "dropout": 0.1})
    );
    // The override wins over the file, arithmetic on earlier names is evaluated, the rest are
    // train.py's defaults.
    let train = params(&m, "train");
    let want = json!({
        "max_iters": 500, "eval_interval": 50, "eval_iters": 20, "log_interval": 5,
        "always_save_checkpoint": false, "batch_size": 16, "gradient_accumulation_steps": 4,
        "learning_rate": 2e-3, "decay_lr": true, "warmup_iters": 50, "lr_decay_iters": 500,
        "min_lr": 2e-4, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.99, "grad_clip": 1.0,
    });
    assert_eq!(train, want);
    let text = std::fs::read_to_string(sb.dir.join("imported.yaml")).unwrap();
    for note in ["out_dir 'out-tiny-char'", "wandb_log", "backend 'nccl'"] {
        assert!(text.contains(note), "no note on {note}:\n{text}");
    }
}

#[test]
fn the_imported_manifest_runs_and_a_resume_config_continues_a_ckpt_pt() {
    let Some(text) = shared("data/tinyshakespeare.txt") else {
        missing("../shared/data/tinyshakespeare.txt");
        return;
    };
    let sb = Sandbox::new("import-run");
    sb.write("config/tiny_char.py", CHAR_CONFIG);
    let tiny = [
        "--device=cpu",
        "--max_iters=4",
        "--eval_interval=2",
        "--eval_iters=1",
        "--batch_size=2",
        "--n_layer=1",
        "--n_head=2",
        "--n_embd=16",
        "--block_size=16",
    ];
    let mut args = vec!["config/tiny_char.py"];
    args.extend_from_slice(&tiny);
    import(&sb, &args);
    let set = format!("data.path={}", text.display());
    let run = sb.json(&["run", "imported.yaml", "--json", "--set", &set]);
    assert_eq!(stage(&run, "train")["metrics"]["iters"], 4);

    // init_from = 'resume' reads out_dir's ckpt.pt (here the nanoGPT fixture) and continues it.
    let out = sb.dir.join("out-tiny");
    std::fs::create_dir_all(&out).unwrap();
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nanogpt/out-tiny/ckpt.pt");
    std::fs::copy(fixture, out.join("ckpt.pt")).unwrap();
    sb.write(
        "config/resume.py",
        "out_dir = 'out-tiny'\ninit_from = 'resume'\ndataset = 'shakespeare_char'\nmax_iters = 5\neval_interval = 5\neval_iters = 1\nbatch_size = 2\n",
    );
    let m = import(
        &sb,
        &[
            "config/resume.py",
            "--device=cpu",
            "--gradient_accumulation_steps=1",
        ],
    );
    assert_eq!(
        params(&m, "model"),
        json!({"from": "nanogpt", "path": "out-tiny", "dropout": 0.0})
    );
    let run = sb.json(&["run", "imported.yaml", "--json", "--set", &set]);
    let train = &stage(&run, "train")["metrics"];
    assert_eq!(train["resumed_from_iter"], 3, "{train}");
}

#[test]
fn eval_only_and_gpt2_configs_map_to_evaluate_and_gpt2_weights() {
    let sb = Sandbox::new("import-eval");
    sb.write(
        "eval.py",
        "batch_size = 8\neval_iters = 500\neval_only = True\nwandb_log = False\ninit_from = 'gpt2'\nblock_size = 256\n",
    );
    let m = import(&sb, &["eval.py", "--device=cpu"]);
    assert!(m.stages.iter().all(|s| s.name != "train"));
    assert_eq!(
        params(&m, "evaluate"),
        json!({"batch_size": 8, "eval_iters": 500})
    );
    assert_eq!(
        params(&m, "model"),
        json!({"from": "gpt2", "dropout": 0.0, "block_size": 256})
    );
    // openwebtext, train.py's default dataset.
    let data = params(&m, "data");
    assert_eq!(data["val_fraction"], 0.0005);
    assert_eq!(data["seed"], 2357);
    // bfloat16 on cuda is bf16 (the manifest text: a build without `cuda` refuses to load it).
    let o = sb.pipe(&["import", "nanogpt", "eval.py", "--device=cuda"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("  device: cuda\n  dtype: bf16\n"), "{text}");
}

#[test]
fn what_train_py_would_refuse_or_pipe_cannot_read_is_a_located_error() {
    let sb = Sandbox::new("import-errors");
    sb.write("unknown.py", "batch_size = 4\nlearning_rte = 1e-3\n");
    let e = import_error(&sb, &["unknown.py"]);
    assert!(
        e.contains("unknown.py:2:1") && e.contains("unknown key `learning_rte`"),
        "{e}"
    );
    assert!(
        e.contains("learning_rate"),
        "the help lists the known keys: {e}"
    );

    sb.write("code.py", "batch_size = 4\nif batch_size: max_iters = 2\n");
    let e = import_error(&sb, &["code.py"]);
    assert!(e.contains("code.py:2:"), "{e}");

    sb.write("call.py", "max_iters = int(time.time())\n");
    let e = import_error(&sb, &["call.py"]);
    assert!(
        e.contains("call.py:1:") && e.contains("never executes"),
        "{e}"
    );

    sb.write("undefined.py", "lr_decay_iters = total_iters\n");
    let e = import_error(&sb, &["undefined.py"]);
    assert!(
        e.contains("undefined.py:1:18") && e.contains("`total_iters` is not defined"),
        "{e}"
    );

    let e = import_error(&sb, &["--learning_rate=1"]);
    assert!(e.contains("is an int") && e.contains("is a float"), "{e}");
    assert!(
        e.contains("--learning_rate=1.0"),
        "the fix is in the help: {e}"
    );
    let e = import_error(&sb, &["--max_iter=10"]);
    assert!(e.contains("unknown key `max_iter`"), "{e}");
    let e = import_error(&sb, &["--max_iters"]);
    assert!(e.contains("has no value"), "{e}");
    let e = import_error(&sb, &["--device=mps"]);
    assert!(
        e.contains("device `mps`") && e.contains("--device=cpu"),
        "{e}"
    );
    let e = import_error(&sb, &["missing.py"]);
    assert!(e.contains("missing.py"), "{e}");
}
