//! GPT-2 weights in and out, end to end: fine-tuning from a Hugging Face folder, evaluating an
//! imported model against transformers' loss, and exporting a folder that transformers loads with
//! the same logits.

mod common;
use common::*;
use pipe::gpt::{Checkpoint, Gpt};

#[test]
fn exported_model_loads_in_transformers_with_the_same_logits() {
    let sb = Sandbox::new("export");
    sb.write("text.txt", &corpus(20_000));
    let mut m = tiny_manifest(10, 5);
    m.push_str("  export:\n    kind: export\n    needs: [train]\n    to: exported\n");
    sb.write("tiny.yaml", &m);
    let run = sb.json(&["run", "tiny.yaml", "--json"]);
    let exp = stage(&run, "export");
    assert_eq!(exp["status"], "executed");
    let dir = sb.dir.join("exported");
    assert!(dir.join("config.json").exists() && dir.join("model.safetensors").exists());
    // Deleted by hand, the copy comes back on the next (cached) run.
    std::fs::remove_dir_all(&dir).unwrap();
    let again = sb.json(&["run", "tiny.yaml", "--json"]);
    assert_eq!(stage(&again, "export")["status"], "cached");
    assert!(dir.join("model.safetensors").exists());

    // Our logits for the trained checkpoint.
    let ckpt_hash = stage(&run, "train")["outputs"]["ckpt"].as_str().unwrap();
    let bytes = std::fs::read(
        sb.cache()
            .join("objects")
            .join(&ckpt_hash[..2])
            .join(&ckpt_hash[2..]),
    )
    .unwrap();
    let ck = Checkpoint::from_bytes(&bytes).unwrap();
    let mut ours = Gpt::from_params(ck.config.clone(), ck.params.clone()).unwrap();
    let ids: Vec<u32> = (0..20)
        .map(|i| (i * 5 % ck.config.vocab_size) as u32)
        .collect();
    ours.forward(&ids, None, 1, ids.len(), None);
    let our_logits = ours.logits().to_vec();

    // Re-importing the export gives the same model.
    let mut back = pipe::gpt::hf::load_hf_dir(&dir).unwrap();
    back.forward(&ids, None, 1, ids.len(), None);
    assert_eq!(back.logits(), &our_logits[..]);

    let Some(py) = python_with("torch, transformers") else {
        missing(
            "the transformers check: no Python with torch and transformers (set PIPE_TEST_PYTHON)",
        );
        return;
    };
    let ids_arg = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let v = python_json(&py, "hf_logits.py", &[dir.as_os_str(), ids_arg.as_ref()]);
    let theirs: Vec<f32> = v["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
        })
        .collect();
    assert_eq!(theirs.len(), our_logits.len());
    let max = our_logits
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(max < 1e-4, "max |logit difference| {max}");
}

#[test]
fn finetune_from_a_hugging_face_folder_and_match_transformers_loss() {
    let Some(tiny) = shared("fixtures/tiny-gpt2") else {
        missing("../shared/fixtures/tiny-gpt2 is absent");
        return;
    };
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny.join("reference.json")).unwrap())
            .unwrap();
    let Some(text) = shared("data/tinyshakespeare.txt") else {
        missing("../shared/data/tinyshakespeare.txt is absent");
        return;
    };
    let sb = Sandbox::new("finetune");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // The shipped manifest, with the fixture standing in for gpt2 and a short schedule.
    let manifest = root.join("pipelines/finetune_shakespeare.yaml");
    let sets = [
        format!("data.path={}", text.display()),
        format!("model.hf_dir={}", tiny.display()),
        "model.block_size=64".to_string(),
        "train.max_iters=4".to_string(),
        "train.eval_interval=2".to_string(),
        "train.eval_iters=2".to_string(),
        "train.gradient_accumulation_steps=2".to_string(),
        "evaluate.eval_iters=2".to_string(),
        "sample.max_new_tokens=10".to_string(),
    ];
    let mut args: Vec<String> = vec![
        "run".into(),
        manifest.display().to_string(),
        "--json".into(),
    ];
    for s in &sets {
        args.push("--set".into());
        args.push(s.clone());
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = sb.json(&argv);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        stage(&run, "model")["metrics"]["parameters"]
            .as_u64()
            .unwrap(),
        50257 * 64 + 64 * 64 + 2 * (12 * 64 * 64 + 13 * 64) + 2 * 64
    );
    let ev = &stage(&run, "evaluate")["metrics"];
    assert!(
        ev["val_loss"].as_f64().unwrap() > 5.0,
        "a random tiny model stays near ln(50257): {ev}"
    );

    // Evaluate the imported model on the reference text: transformers' loss within 1e-4.
    sb.write(
        "eval.yaml",
        &format!("name: eval_fixture\nstages:\n  model:\n    kind: init\n    from: gpt2\n    hf_dir: {}\n  evaluate:\n    kind: evaluate\n    needs: [model]\n    text: \"Hello, my dog is cute\"\n", tiny.display()),
    );
    let ev = sb.json(&["run", "eval.yaml", "--json"]);
    let loss = stage(&ev, "evaluate")["metrics"]["text_loss"]
        .as_f64()
        .unwrap();
    let want = reference["mean_next_token_cross_entropy"].as_f64().unwrap();
    assert!(
        (loss - want).abs() < 1e-4,
        "loss {loss} vs transformers {want}"
    );
}

#[test]
fn gpt2_weights_are_downloaded_into_the_hugging_face_cache() {
    // A stand-in for the Hub on localhost: python's http.server over {repo}/resolve/{rev}/{file}.
    let sb = Sandbox::new("hub");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt2-mini");
    let served = sb.dir.join("hub/gpt2/resolve/main");
    std::fs::create_dir_all(&served).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(f), served.join(f)).unwrap();
    }
    let mut server = HttpServer::serve(&sb.dir.join("hub"));
    let port = server.port;
    sb.write(
        "m.yaml",
        "name: hub\nstages:\n  model:\n    kind: init\n    from: gpt2\n",
    );
    let cache = sb.dir.join("hf");
    let run = |offline: bool| {
        let mut c = sb.cmd(&["run", "m.yaml", "--json"]);
        c.env("HF_ENDPOINT", format!("http://127.0.0.1:{port}"))
            .env("HF_HUB_CACHE", &cache)
            .env_remove("HF_HOME");
        if offline {
            c.env("HF_HUB_OFFLINE", "1");
        }
        c.output().unwrap()
    };
    let out = run(false);
    server.stop();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        stage(&doc, "model")["metrics"]["model_args"]["vocab_size"],
        97
    );
    let snapshot = cache.join("models--gpt2/snapshots/main");
    assert_eq!(
        std::fs::read(snapshot.join("model.safetensors")).unwrap(),
        std::fs::read(fixture.join("model.safetensors")).unwrap()
    );
    // Offline, with the server gone, the cached copy is used (and the key is the same).
    std::fs::remove_dir_all(sb.cache()).unwrap();
    let out = run(true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stage(&again, "model")["key"], stage(&doc, "model")["key"]);
    // Offline with an empty cache: a clear error that says what to do.
    std::fs::remove_dir_all(&cache).unwrap();
    let out = run(true);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("hf_dir"));
}
