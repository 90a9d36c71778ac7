//! The GPT engine against independent references: finite differences, Hugging Face transformers'
//! outputs, itself across thread counts and interruptions, and a learning sanity check.

use pipe::gpt::checkpoint::Checkpoint;
use pipe::gpt::hf;
use pipe::gpt::rng::Rng;
use pipe::gpt::sample::{Decoder, SampleConfig, generate};
use pipe::gpt::train::{Event, Report};
use pipe::gpt::{DropoutPlan, Gelu, Gpt, GptConfig, TrainConfig, Trainer};
use std::path::Path;

mod common;

fn tiny(bias: bool, gelu: Gelu, dropout: f32) -> GptConfig {
    GptConfig {
        n_layer: 2,
        n_head: 2,
        n_embd: 8,
        block_size: 5,
        vocab_size: 7,
        bias,
        dropout,
        gelu,
    }
}

fn random_model(cfg: GptConfig, seed: u64) -> Gpt {
    common::random_model(cfg, seed, 0.3)
}

fn gradient_check(cfg: GptConfig) {
    let (b, t) = (2, cfg.block_size);
    let mut rng = Rng::new(5);
    let x: Vec<u32> = (0..b * t)
        .map(|_| rng.below(cfg.vocab_size) as u32)
        .collect();
    let y: Vec<u32> = (0..b * t)
        .map(|_| rng.below(cfg.vocab_size) as u32)
        .collect();
    let drop = Some(DropoutPlan {
        p: cfg.dropout,
        seed: 99,
    });
    let mut m = random_model(cfg, 3);
    m.forward(&x, Some(&y), b, t, drop);
    m.backward(1.0);
    let analytic = m.grads.clone();
    // Central differences at h and h/2 combined by Richardson extrapolation: truncation error
    // O(h^4), so h can be large enough that f32 rounding in the loss stays negligible.
    let h = 2e-2f32;
    let central = |m: &mut Gpt, i: usize, h: f32| {
        let orig = m.params[i];
        m.params[i] = orig + h;
        let lp = m.forward(&x, Some(&y), b, t, drop) as f64;
        m.params[i] = orig - h;
        let lm = m.forward(&x, Some(&y), b, t, drop) as f64;
        m.params[i] = orig;
        (lp - lm) / (2.0 * h as f64)
    };
    for tensor in m.layout.tensors.clone() {
        let (mut diff2, mut norm_a, mut norm_n) = (0.0f64, 0.0f64, 0.0f64);
        for i in tensor.range.clone() {
            let numeric = (4.0 * central(&mut m, i, h / 2.0) - central(&mut m, i, h)) / 3.0;
            let a = analytic[i] as f64;
            diff2 += (a - numeric).powi(2);
            norm_a += a * a;
            norm_n += numeric * numeric;
        }
        let rel = diff2.sqrt() / norm_a.sqrt().max(norm_n.sqrt()).max(1e-12);
        assert!(
            rel < 1e-3,
            "{}: relative error {rel:.2e} (|analytic| {:.3e}, |numeric| {:.3e})",
            tensor.name,
            norm_a.sqrt(),
            norm_n.sqrt()
        );
        assert!(norm_a > 0.0, "{}: zero gradient", tensor.name);
    }
}

#[test]
fn gradients_match_finite_differences_with_biases_erf_and_dropout() {
    gradient_check(tiny(true, Gelu::Erf, 0.2));
}

#[test]
fn gradients_match_finite_differences_without_biases_tanh() {
    gradient_check(tiny(false, Gelu::Tanh, 0.0));
}

fn check_hf_parity(
    dir: &Path,
    ids: &[u32],
    logits_at: impl Fn(usize, usize) -> Option<f32>,
    loss: f64,
) {
    let mut m = hf::load_hf_dir(dir).unwrap();
    let v = m.config.vocab_size;
    let n = ids.len();
    let ours = m.forward(&ids[..n - 1], Some(&ids[1..]), 1, n - 1, None);
    assert!(
        (ours as f64 - loss).abs() < 1e-4,
        "loss {ours} vs transformers {loss}"
    );
    m.forward(ids, None, 1, n, None);
    let logits = m.logits().to_vec();
    let mut compared = 0;
    for pos in 0..n {
        for j in 0..v {
            if let Some(r) = logits_at(pos, j) {
                let o = logits[pos * v + j];
                assert!(
                    (o - r).abs() < 1e-4,
                    "logit [{pos}, {j}]: {o} vs transformers {r}"
                );
                compared += 1;
            }
        }
    }
    assert!(compared >= 10);
}

/// A JSON array of numbers as f32 (token ids fit exactly).
fn json_f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("a JSON array")
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn matches_transformers_on_committed_fixture() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt2-mini");
    let r = read_json(&dir.join("reference.json"));
    let ids: Vec<u32> = json_f32s(&r["token_ids"])
        .iter()
        .map(|&x| x as u32)
        .collect();
    let logits = json_f32s(&r["logits"]);
    let v = 97;
    check_hf_parity(
        &dir,
        &ids,
        |pos, j| Some(logits[pos * v + j]),
        r["loss"].as_f64().unwrap(),
    );
}

#[test]
fn matches_transformers_on_shared_tiny_gpt2() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/tiny-gpt2");
    if !dir.exists() {
        common::missing(&format!("{} is absent", dir.display()));
        return;
    }
    let r = read_json(&dir.join("reference.json"));
    let ids: Vec<u32> = json_f32s(&r["token_ids"])
        .iter()
        .map(|&x| x as u32)
        .collect();
    let first10 = json_f32s(&r["last_position_logits_first10"]);
    let last = ids.len() - 1;
    check_hf_parity(
        &dir,
        &ids,
        |pos, j| (pos == last && j < 10).then(|| first10[j]),
        r["mean_next_token_cross_entropy"].as_f64().unwrap(),
    );
}

/// Enough rows that the fixed row blocks (64) split work across threads.
fn small_cfg(dropout: f32) -> GptConfig {
    GptConfig {
        n_layer: 2,
        n_head: 4,
        n_embd: 64,
        block_size: 32,
        vocab_size: 40,
        bias: true,
        dropout,
        gelu: Gelu::Erf,
    }
}

fn synthetic_tokens(n: usize, vocab: usize, seed: u64) -> Vec<u16> {
    // A few fixed "words" in random order: learnable structure, not memorisable noise.
    let mut rng = Rng::new(seed);
    let words: Vec<Vec<u16>> = (0..12)
        .map(|w| {
            (0..3 + w % 5)
                .map(|k| ((w * 7 + k * 3) % (vocab - 1) + 1) as u16)
                .collect()
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.extend(&words[rng.below(words.len())]);
        out.push(0);
    }
    out.truncate(n);
    out
}

fn train_cfg(max_iters: u64, eval_interval: u64) -> TrainConfig {
    TrainConfig {
        max_iters,
        eval_interval,
        eval_iters: 2,
        batch_size: 4,
        gradient_accumulation_steps: 2,
        learning_rate: 1e-3,
        warmup_iters: 2,
        lr_decay_iters: max_iters,
        min_lr: 1e-4,
        beta2: 0.99,
        ..TrainConfig::default()
    }
}

/// Runs training; returns (losses logged, checkpoints saved).
fn run(tr: &mut Trainer) -> (Vec<f32>, Vec<(u64, Vec<u8>)>) {
    let (mut losses, mut ckpts) = (Vec::new(), Vec::new());
    tr.run_streaming(&mut |r| {
        match r {
            Report::Event(Event::Log { loss, .. }) => losses.push(loss),
            Report::Event(Event::Eval {
                train_loss,
                val_loss,
                ..
            }) => losses.extend([train_loss, val_loss]),
            Report::Checkpoint { iter, state, .. } => ckpts.push((iter, state.to_bytes()?)),
        }
        Ok(())
    })
    .unwrap();
    (losses, ckpts)
}

fn train_in_pool(threads: usize, data: &[u16]) -> (Vec<f32>, Vec<(u64, Vec<u8>)>) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let model = Gpt::new_random(small_cfg(0.1), 1).unwrap();
        let mut tr = Trainer::new(model, train_cfg(4, 2), data, data).unwrap();
        run(&mut tr)
    })
}

#[test]
fn training_is_bit_identical_across_runs_and_thread_counts() {
    let data = synthetic_tokens(5000, 40, 1);
    let one = train_in_pool(1, &data);
    let two = train_in_pool(2, &data);
    let again = train_in_pool(2, &data);
    let bits =
        |r: &(Vec<f32>, Vec<(u64, Vec<u8>)>)| r.0.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&one),
        bits(&two),
        "losses differ between 1 and 2 threads"
    );
    for (a, b) in one.1.iter().zip(&two.1) {
        let (ca, cb) = (
            Checkpoint::from_bytes(&a.1).unwrap(),
            Checkpoint::from_bytes(&b.1).unwrap(),
        );
        for t in Gpt::new_random(small_cfg(0.1), 1).unwrap().layout.tensors {
            let differ = ca.params[t.range.clone()]
                .iter()
                .zip(&cb.params[t.range.clone()])
                .filter(|(x, y)| x.to_bits() != y.to_bits())
                .count();
            assert_eq!(
                differ, 0,
                "iteration {}: {} differs in {differ} elements between 1 and 2 threads",
                a.0, t.name
            );
        }
        assert!(
            ca.optimizer == cb.optimizer,
            "iteration {}: optimizer state differs between 1 and 2 threads",
            a.0
        );
        assert_eq!(
            ca.progress, cb.progress,
            "iteration {}: progress differs between 1 and 2 threads",
            a.0
        );
    }
    assert!(
        two.1 == again.1,
        "checkpoints differ between two identical runs"
    );
    assert_eq!(one.1.len(), 2);
}

#[test]
fn resumed_training_is_bit_identical_to_an_uninterrupted_run() {
    let data = synthetic_tokens(5000, 40, 2);
    let model = Gpt::new_random(small_cfg(0.1), 7).unwrap();
    let mut full = Trainer::new(model, train_cfg(6, 3), &data, &data).unwrap();
    let (full_losses, full_ckpts) = run(&mut full);
    assert_eq!(
        full_ckpts.iter().map(|c| c.0).collect::<Vec<_>>(),
        vec![3, 6]
    );

    let mid = Checkpoint::from_bytes(&full_ckpts[0].1).unwrap();
    assert_eq!(mid.progress.as_ref().unwrap().iter_num, 3);
    let mut resumed = Trainer::resume(&mid, train_cfg(6, 3), &data, &data).unwrap();
    let (resumed_losses, resumed_ckpts) = run(&mut resumed);
    assert_eq!(resumed_ckpts.len(), 1);
    let (ca, cb) = (
        Checkpoint::from_bytes(&resumed_ckpts[0].1).unwrap(),
        Checkpoint::from_bytes(&full_ckpts[1].1).unwrap(),
    );
    assert!(ca.params == cb.params, "params differ after resume");
    assert!(
        ca.optimizer == cb.optimizer,
        "optimizer differs after resume"
    );
    assert_eq!(ca.progress, cb.progress);
    assert!(
        resumed_ckpts[0].1 == full_ckpts[1].1,
        "final checkpoint bytes differ after resume"
    );
    let tail: Vec<u32> = full_losses[full_losses.len() - resumed_losses.len()..]
        .iter()
        .map(|x| x.to_bits())
        .collect();
    assert_eq!(
        tail,
        resumed_losses
            .iter()
            .map(|x| x.to_bits())
            .collect::<Vec<_>>()
    );
}

#[test]
fn checkpoint_round_trips() {
    let data = synthetic_tokens(2000, 40, 3);
    let model = Gpt::new_random(small_cfg(0.0), 2).unwrap();
    let mut tr = Trainer::new(model, train_cfg(2, 2), &data, &data).unwrap();
    run(&mut tr);
    let ck = tr.checkpoint();
    let back = Checkpoint::from_bytes(&ck.to_bytes().unwrap()).unwrap();
    assert_eq!(back, ck);
    assert!(Checkpoint::from_bytes(b"not a checkpoint").is_err());
}

fn full_logits_last(m: &mut Gpt, seq: &[u32]) -> Vec<f32> {
    let t = seq.len();
    m.forward(seq, None, 1, t, None);
    let v = m.config.vocab_size;
    m.logits()[(t - 1) * v..t * v].to_vec()
}

#[test]
fn kv_cache_equals_full_recomputation() {
    let cfg = GptConfig {
        block_size: 12,
        ..small_cfg(0.0)
    };
    let mut m = random_model(cfg.clone(), 4);
    let seq: Vec<u32> = (0..12).map(|i| (i * 7 % 40) as u32).collect();
    let model = Gpt::from_params(cfg.clone(), m.params.clone()).unwrap();
    let mut dec = Decoder::new(&model);
    // A 3-token prefill, then one token at a time.
    let mut got = vec![dec.extend(&seq[..3]).to_vec()];
    for i in 3..seq.len() {
        got.push(dec.extend(&seq[i..i + 1]).to_vec());
    }
    for (k, logits) in got.iter().enumerate() {
        let want = full_logits_last(&mut m, &seq[..k + 3]);
        for (a, b) in logits.iter().zip(&want) {
            assert!(
                (a - b).abs() < 1e-4 * (1.0 + b.abs()),
                "prefix {}: {a} vs {b}",
                k + 3
            );
        }
    }
    // Past block_size, generation crops the context like nanoGPT: compare with a greedy reference.
    let sc = SampleConfig {
        max_new_tokens: 20,
        temperature: 0.0,
        top_k: None,
        seed: 0,
    };
    let fast = generate(&model, &seq[..4], &sc, &mut Rng::new(0));
    let mut slow_seq = seq[..4].to_vec();
    for _ in 0..20 {
        let ctx = &slow_seq[slow_seq.len().saturating_sub(cfg.block_size)..].to_vec();
        let logits = full_logits_last(&mut m, ctx);
        let next = logits
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
            .0;
        slow_seq.push(next as u32);
    }
    assert_eq!(fast, slow_seq[4..].to_vec());
}

#[test]
fn evaluation_forward_gives_the_same_bits_with_less_memory() {
    let mut m = random_model(small_cfg(0.0), 5);
    let x: Vec<u32> = (0..2 * 32).map(|i| (i * 7 % 40) as u32).collect();
    let y: Vec<u32> = (0..2 * 32).map(|i| (i * 3 % 40) as u32).collect();
    let cheap = m.forward_no_grad(&x, Some(&y), 2, 32);
    m.forward_no_grad(&x, None, 2, 32);
    let cheap_logits = m.logits().to_vec();
    m.release_activations();
    let full = m.forward(&x, Some(&y), 2, 32, None);
    assert_eq!(cheap.to_bits(), full.to_bits());
    m.forward(&x, None, 2, 32, None);
    assert!(m.logits() == &cheap_logits[..], "logits differ");
}

#[test]
fn sampling_is_seeded() {
    let model = random_model(small_cfg(0.0), 9);
    let sc = SampleConfig {
        max_new_tokens: 40,
        temperature: 0.8,
        top_k: Some(5),
        seed: 3,
    };
    let a = pipe::gpt::sample::generate_many(&model, &[1, 2], &sc, 0..3);
    let b = pipe::gpt::sample::generate_many(&model, &[1, 2], &sc, 0..3);
    assert_eq!(a, b);
    assert_ne!(a[0], a[1], "samples should differ from one another");
    assert!(a.iter().all(|s| s.len() == 40));
    // The sample stage streams them in batches: the batches make the same samples.
    let mut batched = pipe::gpt::sample::generate_many(&model, &[1, 2], &sc, 0..1);
    batched.extend(pipe::gpt::sample::generate_many(&model, &[1, 2], &sc, 1..3));
    assert_eq!(batched, a);
}

#[test]
fn config_s_learns_a_synthetic_corpus() {
    let vocab = 32;
    let data = synthetic_tokens(40_000, vocab, 11);
    let (train, val) = data.split_at(36_000);
    let cfg = GptConfig {
        n_layer: 4,
        n_head: 4,
        n_embd: 128,
        block_size: 64,
        vocab_size: vocab,
        bias: false,
        dropout: 0.0,
        gelu: Gelu::Erf,
    };
    let model = Gpt::new_random(cfg, 1337).unwrap();
    let tc = TrainConfig {
        max_iters: 150,
        eval_interval: 150,
        eval_iters: 5,
        batch_size: 12,
        gradient_accumulation_steps: 1,
        learning_rate: 1e-3,
        warmup_iters: 10,
        lr_decay_iters: 150,
        min_lr: 1e-4,
        beta2: 0.99,
        ..TrainConfig::default()
    };
    let mut tr = Trainer::new(model, tc, train, val).unwrap();
    let mut evals = Vec::new();
    tr.run_streaming(&mut |r| {
        if let Report::Event(Event::Eval { val_loss, .. }) = r {
            evals.push(val_loss)
        }
        Ok(())
    })
    .unwrap();
    let uniform = (vocab as f32).ln();
    assert!(
        (evals[0] - uniform).abs() < 0.3,
        "initial loss {} should be near ln(vocab) {uniform}",
        evals[0]
    );
    let last = *evals.last().unwrap();
    assert!(
        last < 0.5 * uniform,
        "val loss {last} did not fall far below ln(vocab) = {uniform}"
    );
}
