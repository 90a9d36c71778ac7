//! Times config S (or M) training iterations, for profiling with perf:
//! `cargo run --release --example bench_s -- ITERS THREADS [m]`.
fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: usize| args.get(i).map_or(Ok(default), |a| a.parse());
    let iters = number(0, 50)?;
    let threads = number(1, 1)?;
    let config = match args.get(2).map(String::as_str) {
        Some("m") => pipe::config_m(),
        _ => pipe::config_s(),
    };
    let ms = pipe::time_training(&config, pipe::gpt::device::Device::Cpu, threads, 1, iters)?;
    println!("{}: {ms:.1} ms/iter ({threads} threads)", config.name);
    Ok(())
}
