//! `pipe bench`: the engine's speed on nanoGPT's configurations, with synthetic data (speed does not
//! depend on the text). Reports ms/iter after warm-up (the median on the CPU, the mean of the
//! GPU's queued steps) and tokens/s.

use crate::gpt::cuda::GpuGpt;
use crate::gpt::device::Precision;
use crate::gpt::optim::{AdamW, clip_grad_norm};
use crate::gpt::params::ParamLayout;
use crate::gpt::rng::Rng;
use crate::gpt::sample::{SampleConfig, generate};
use crate::gpt::train::get_batch;
use crate::gpt::{DropoutPlan, Gelu, Gpt, GptConfig, TrainConfig};
use anyhow::Result;
use std::time::Instant;

pub struct BenchConfig {
    pub name: &'static str,
    pub model: GptConfig,
    pub batch_size: usize,
}

pub fn config_s() -> BenchConfig {
    // nanoGPT README's CPU recipe (shakespeare_char, vocab 65).
    BenchConfig {
        name: "S (4L 4H 128d, T=64, B=12)",
        model: GptConfig {
            n_layer: 4,
            n_head: 4,
            n_embd: 128,
            block_size: 64,
            vocab_size: 65,
            bias: false,
            dropout: 0.0,
            gelu: Gelu::Erf,
        },
        batch_size: 12,
    }
}

pub fn config_m() -> BenchConfig {
    // nanoGPT's config/train_shakespeare_char.py (its GPU config).
    BenchConfig {
        name: "M (6L 6H 384d, T=256, B=64)",
        model: GptConfig {
            n_layer: 6,
            n_head: 6,
            n_embd: 384,
            block_size: 256,
            vocab_size: 65,
            bias: false,
            dropout: 0.2,
            gelu: Gelu::Erf,
        },
        batch_size: 64,
    }
}

pub fn config_gpt2() -> BenchConfig {
    // GPT-2 124M with nanoGPT's train_gpt2.py micro-batch (12 x 1024) and padded vocabulary.
    BenchConfig {
        name: "GPT-2 124M (T=1024, B=12)",
        model: GptConfig {
            n_layer: 12,
            n_head: 12,
            n_embd: 768,
            block_size: 1024,
            vocab_size: 50304,
            bias: true,
            dropout: 0.0,
            gelu: Gelu::Tanh,
        },
        batch_size: 12,
    }
}

fn synthetic_data(vocab: usize) -> Vec<u16> {
    (0..200_000)
        .map(|i| ((i * 7919 + i / 13) % vocab) as u16)
        .collect()
}

/// Mean milliseconds per training iteration on the GPU (forward, backward, clip, AdamW).
pub fn time_training_gpu(
    cfg: &BenchConfig,
    precision: Precision,
    warmup: usize,
    iters: usize,
) -> Result<f64> {
    let init = Gpt::new_random(cfg.model.clone(), 1)?;
    let mut g = GpuGpt::new(&cfg.model, &init.params, precision)?;
    drop(init);
    let mut opt = AdamW::new(
        TrainConfig::default().adamw(),
        &ParamLayout::new(&cfg.model),
    );
    let mut rng = Rng::new(0);
    let data = synthetic_data(cfg.model.vocab_size);
    let (b, t) = (cfg.batch_size, cfg.model.block_size);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let mut t0 = Instant::now();
    for it in 0..warmup + iters {
        if it == warmup {
            g.synchronize()?;
            t0 = Instant::now();
        }
        get_batch(&data, b, t, &mut rng, &mut x, &mut y);
        let dropout = DropoutPlan {
            p: cfg.model.dropout,
            seed: it as u64,
        };
        g.forward(&x, Some(&y), (b, t), Some(dropout), true)?;
        g.backward(1.0)?;
        g.step(&mut opt, 1e-4, 1.0)?;
    }
    g.synchronize()?;
    Ok(t0.elapsed().as_secs_f64() * 1e3 / iters as f64)
}

/// What the sampling benchmarks generate: sample.py's temperature and top-k.
fn sampling_config(new_tokens: usize) -> SampleConfig {
    SampleConfig {
        max_new_tokens: new_tokens,
        temperature: 0.8,
        top_k: Some(200),
        seed: 1,
    }
}

/// Tokens per second generating `new_tokens` after a one-token prompt on the GPU, one sample.
pub fn time_sampling_gpu(cfg: &GptConfig, new_tokens: usize) -> Result<f64> {
    let init = Gpt::new_random(cfg.clone(), 1)?;
    let mut g = GpuGpt::new(cfg, &init.params, Precision::F32)?;
    let sc = sampling_config(new_tokens);
    let t0 = Instant::now();
    let out = g.generate_many(&[0], &sc, 1)?;
    Ok(out[0].len() as f64 / t0.elapsed().as_secs_f64())
}

/// `pipe bench --device cuda`: the GPU table (f32, TF32 and bf16 matrix products).
pub fn run_gpu(quick: bool) -> Result<()> {
    println!("on {}", crate::gpt::cuda::gpu_name()?);
    let (w, n) = if quick { (2, 5) } else { (3, 20) };
    println!(
        "{:<32} {:>8} {:>12} {:>14}",
        "training on cuda", "matmul", "ms/iter", "tokens/s"
    );
    for c in [config_s(), config_m(), config_gpt2()] {
        for (label, precision) in [
            ("f32", Precision::F32),
            ("tf32", Precision::Tf32),
            ("bf16", Precision::Bf16),
        ] {
            let ms = time_training_gpu(&c, precision, w, n)?;
            println!(
                "{:<32} {:>8} {:>12.2} {:>14.0}",
                c.name,
                label,
                ms,
                (c.batch_size * c.model.block_size) as f64 / ms * 1e3
            );
        }
    }
    println!();
    println!(
        "{:<32} {:>8} {:>12} {:>14}",
        "sampling on cuda (1 sample)", "", "new tokens", "tokens/s"
    );
    for (label, cfg, tokens) in [
        ("S, 500 tokens (crops context)", config_s().model, 500),
        ("GPT-2 124M, 100 tokens", config_gpt2().model, 100),
    ] {
        let tps = time_sampling_gpu(&cfg, tokens)?;
        println!("{label:<32} {:>8} {tokens:>12} {tps:>14.0}", "f32");
    }
    Ok(())
}

/// Median milliseconds per training iteration (forward, backward, clip, AdamW).
pub fn time_training(
    cfg: &BenchConfig,
    threads: usize,
    warmup: usize,
    iters: usize,
) -> Result<f64> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    pool.install(|| {
        let mut model = Gpt::new_random(cfg.model.clone(), 1)?;
        let tc = TrainConfig::default();
        let mut opt = AdamW::new(tc.adamw(), &model.layout);
        let mut rng = Rng::new(0);
        let data = synthetic_data(cfg.model.vocab_size);
        let (b, t) = (cfg.batch_size, cfg.model.block_size);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        let mut times = Vec::new();
        for it in 0..warmup + iters {
            let t0 = Instant::now();
            get_batch(&data, b, t, &mut rng, &mut x, &mut y);
            model.forward(
                &x,
                Some(&y),
                b,
                t,
                Some(DropoutPlan {
                    p: cfg.model.dropout,
                    seed: it as u64,
                }),
            );
            model.backward(1.0);
            clip_grad_norm(&mut model.grads, 1.0);
            opt.update(&mut model.params, &model.grads, 1e-3);
            model.zero_grad();
            if it >= warmup {
                times.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    })
}

/// Tokens per second generating `new_tokens` after a one-token prompt (KV cache, cropping past
/// block_size like nanoGPT), one sample.
pub fn time_sampling(cfg: &GptConfig, new_tokens: usize, threads: usize) -> Result<f64> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    pool.install(|| {
        let model = Gpt::new_random(cfg.clone(), 1)?;
        let sc = sampling_config(new_tokens);
        let t0 = Instant::now();
        let out = generate(&model, &[0], &sc, &mut Rng::new(1));
        Ok(out.len() as f64 / t0.elapsed().as_secs_f64())
    })
}

pub fn run(quick: bool) -> Result<()> {
    let (w, n) = if quick { (2, 5) } else { (5, 30) };
    let isa = crate::gpt::isa::Isa::active();
    println!(
        "CPU path: {} (widest this CPU and build allow; see crates/gpt/src/isa.rs)\n",
        isa.name()
    );
    println!(
        "{:<32} {:>8} {:>12} {:>14}",
        "training", "threads", "ms/iter", "tokens/s"
    );
    for threads in [1, 2] {
        let c = config_s();
        let ms = time_training(&c, threads, w, n)?;
        println!(
            "{:<32} {:>8} {:>12.1} {:>14.0}",
            c.name,
            threads,
            ms,
            (c.batch_size * c.model.block_size) as f64 / ms * 1e3
        );
    }
    let c = config_m();
    let threads = rayon::current_num_threads();
    let ms = time_training(&c, threads, 1, if quick { 2 } else { 5 })?;
    println!(
        "{:<32} {:>8} {:>12.1} {:>14.0}",
        c.name,
        threads,
        ms,
        (c.batch_size * c.model.block_size) as f64 / ms * 1e3
    );
    println!();
    println!(
        "{:<32} {:>8} {:>12} {:>14}",
        "sampling (1 sample)", "threads", "new tokens", "tokens/s"
    );
    let s = config_s().model;
    for (label, tokens) in [
        ("S, within block_size", s.block_size - 1),
        ("S, 500 tokens (crops context)", 500),
    ] {
        let tps = time_sampling(&s, tokens, 1)?;
        println!("{label:<32} {:>8} {tokens:>12} {tps:>14.0}", 1);
    }
    Ok(())
}
