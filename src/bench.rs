//! `pipe bench`: the engine's speed on nanoGPT's configurations, with synthetic data (speed does not
//! depend on the text). Training runs through the trainer `pipe run` uses, on either device, and
//! reports the median of its per-iteration times after warm-up (forward, backward, clip, AdamW)
//! and tokens/s; sampling runs through the same engine as the sample stage.

use crate::gpt::device::{Device, Precision};
use crate::gpt::engine::Engine;
use crate::gpt::sample::SampleConfig;
use crate::gpt::train::{Event, Report};
use crate::gpt::{Gelu, Gpt, GptConfig, TrainConfig, Trainer};
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

/// Median milliseconds per training iteration on `device` with `threads` CPU threads, over the
/// `iters` iterations after `warmup`: the trainer's own per-iteration time (its `log` events),
/// one micro-step per iteration, with its evaluation (one batch, at the start and the end)
/// outside the timed steps.
pub fn time_training(
    cfg: &BenchConfig,
    device: Device,
    threads: usize,
    warmup: usize,
    iters: usize,
) -> Result<f64> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    pool.install(|| {
        let data = synthetic_data(cfg.model.vocab_size);
        let max_iters = (warmup + iters) as u64;
        let tc = TrainConfig {
            max_iters,
            eval_interval: max_iters,
            eval_iters: 1,
            log_interval: 1,
            batch_size: cfg.batch_size,
            gradient_accumulation_steps: 1,
            decay_lr: false,
            learning_rate: 1e-3,
            ..TrainConfig::default()
        };
        let model = Gpt::new_random(cfg.model.clone(), 1)?;
        let mut trainer = Trainer::new(model, tc, &data, &data)?;
        trainer.use_device(device)?;
        let mut times = Vec::new();
        trainer.run_streaming(&mut |report| {
            if let Report::Event(Event::Log { iter, ms, .. }) = report
                && iter >= warmup as u64
            {
                times.push(ms);
            }
            Ok(())
        })?;
        anyhow::ensure!(!times.is_empty(), "no timed iterations");
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    })
}

/// Tokens per second generating `new_tokens` after a one-token prompt (KV cache, cropping past
/// block_size like nanoGPT), one sample, with sample.py's temperature and top-k.
pub fn time_sampling(
    cfg: &GptConfig,
    device: Device,
    new_tokens: usize,
    threads: usize,
) -> Result<f64> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    pool.install(|| {
        let init = Gpt::new_random(cfg.clone(), 1)?;
        let mut engine = Engine::new(device, cfg.clone(), init.params)?;
        let sc = SampleConfig {
            max_new_tokens: new_tokens,
            temperature: 0.8,
            top_k: Some(200),
            seed: 1,
        };
        let t0 = Instant::now();
        let out = engine.generate_many(&[0], &sc, 0..1)?;
        Ok(out[0].len() as f64 / t0.elapsed().as_secs_f64())
    })
}

fn print_training(c: &BenchConfig, column: &str, ms: f64) {
    println!(
        "{:<32} {column:>8} {ms:>12.2} {:>14.0}",
        c.name,
        (c.batch_size * c.model.block_size) as f64 / ms * 1e3
    );
}

/// `pipe bench --device cuda`: the GPU table (f32, TF32 and bf16 matrix products).
pub fn run_gpu(quick: bool) -> Result<()> {
    println!("on {}", crate::gpt::cuda::gpu_name()?);
    let (w, n) = if quick { (2, 5) } else { (3, 20) };
    let threads = rayon::current_num_threads();
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
            let ms = time_training(&c, Device::Cuda(precision), threads, w, n)?;
            print_training(&c, label, ms);
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
        let tps = time_sampling(&cfg, Device::Cuda(Precision::F32), tokens, threads)?;
        println!("{label:<32} {:>8} {tokens:>12} {tps:>14.0}", "f32");
    }
    Ok(())
}

/// `pipe bench`: the CPU table.
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
        let ms = time_training(&c, Device::Cpu, threads, w, n)?;
        print_training(&c, &threads.to_string(), ms);
    }
    let c = config_m();
    let threads = rayon::current_num_threads();
    let ms = time_training(&c, Device::Cpu, threads, 1, if quick { 2 } else { 5 })?;
    print_training(&c, &threads.to_string(), ms);
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
        let tps = time_sampling(&s, Device::Cpu, tokens, 1)?;
        println!("{label:<32} {:>8} {tokens:>12} {tps:>14.0}", 1);
    }
    Ok(())
}
