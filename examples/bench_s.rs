//! Times config S training iterations (for profiling with perf): `cargo run --release --example bench_s -- ITERS THREADS`.
fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let iters = args.first().copied().unwrap_or(50);
    let threads = args.get(1).copied().unwrap_or(1);
    let ms = pipe::time_training(
        &pipe::config_s(),
        pipe::gpt::device::Device::Cpu,
        threads,
        3,
        iters,
    )?;
    println!("config S: {ms:.1} ms/iter ({threads} threads)");
    Ok(())
}
