use pipe_gpt::attention::{attention_backward, attention_forward, AttnShape};
use std::time::Instant;
fn main() {
    let threads: usize = std::env::args().nth(1).map(|a| a.parse().unwrap()).unwrap_or(1);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().unwrap();
    let args: Vec<usize> = std::env::args().skip(2).map(|a| a.parse().unwrap()).collect();
    let (b, t, c, nh) = if args.len() == 4 { (args[0], args[1], args[2], args[3]) } else { (12, 64, 128, 4) };
    let s = AttnShape { b, t, c, n_head: nh };
    let qkv: Vec<f32> = (0..b * t * 3 * c).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
    let mut out = vec![0.0; b * t * c];
    let mut att = vec![0.0; b * nh * t * t];
    let dout: Vec<f32> = (0..b * t * c).map(|i| ((i * 104729) % 1000) as f32 * 1e-3 - 0.5).collect();
    let mut dqkv = vec![0.0; b * t * 3 * c];
    let mut datt = vec![0.0; b * nh * t * t];
    for _ in 0..5 { attention_forward(&mut out, &mut att, None, &qkv, &s, None); }
    let n = if b * t > 1000 { 3 } else { 300 };
    let st = Instant::now();
    for _ in 0..n { attention_forward(&mut out, &mut att, None, &qkv, &s, None); }
    let f = st.elapsed().as_secs_f64() / n as f64;
    let st = Instant::now();
    for _ in 0..n { attention_backward(&mut dqkv, &mut datt, &dout, &qkv, &att, None, &s, None); }
    let bw = st.elapsed().as_secs_f64() / n as f64;
    let sum: f64 = dqkv.iter().map(|&x| x as f64).sum::<f64>() + out.iter().map(|&x| x as f64).sum::<f64>();
    println!("attention S layer: forward {:.1} us, backward {:.1} us (x4 layers = {:.2} ms/step) check {sum:.6}", f * 1e6, bw * 1e6, 4.0 * (f + bw) * 1e3);
}
