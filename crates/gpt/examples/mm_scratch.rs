use pipe_gpt::matmul::{matmul, MatRef};
use std::time::Instant;
fn t<F: FnMut()>(name: &str, flops: f64, mut f: F) {
    for _ in 0..20 { f(); }
    let n = 300;
    let s = Instant::now();
    for _ in 0..n { f(); }
    let dt = s.elapsed().as_secs_f64() / n as f64;
    println!("{name:40} {:8.1} us  {:6.1} GFLOP/s", dt * 1e6, flops / dt / 1e9);
}
unsafe fn whole(c: &mut [f32], a: MatRef, b: MatRef, acc: bool, par: gemm::Parallelism) {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    unsafe { gemm::gemm(m, n, k, c.as_mut_ptr(), 1, n as isize, acc, a.data.as_ptr(), a.cs as isize, a.rs as isize,
        b.data.as_ptr(), b.cs as isize, b.rs as isize, if acc {1.0} else {0.0}, 1.0, false, false, false, par) }
}
fn main() {
    let threads: usize = std::env::args().nth(1).map(|a| a.parse().unwrap()).unwrap_or(1);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().unwrap();
    let par = gemm::Parallelism::None;
    let bt = 768;
    for (ic, oc) in [(128, 384), (128, 128), (128, 512), (512, 128)] {
        let x: Vec<f32> = (0..bt * ic).map(|i| (i % 7) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..oc * ic).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut out = vec![0.0; bt * oc];
        let fl = 2.0 * (bt * ic * oc) as f64;
        let (xm, wm, wtm) = (MatRef::new(&x, bt, ic), MatRef::new(&w, oc, ic), MatRef::new(&w, ic, oc));
        t(&format!("fwd split {ic}->{oc}"), fl, || matmul(&mut out, xm, wm.t(), false));
        t(&format!("fwd whole {ic}->{oc}"), fl, || unsafe { whole(&mut out, xm, wm.t(), false, par) });
        t(&format!("fwd whole Wt {ic}->{oc}"), fl, || unsafe { whole(&mut out, xm, wtm, false, par) });
        let dout = out.clone();
        let dm = MatRef::new(&dout, bt, oc);
        let mut dx = vec![0.0; bt * ic];
        t(&format!("dinp split {ic}->{oc}"), fl, || matmul(&mut dx, dm, wm, false));
        t(&format!("dinp whole {ic}->{oc}"), fl, || unsafe { whole(&mut dx, dm, wm, false, par) });
        let mut dw = vec![0.0; oc * ic];
        t(&format!("dW split {ic}->{oc}"), fl, || matmul(&mut dw, dm.t(), xm, true));
        t(&format!("dW whole {ic}->{oc}"), fl, || unsafe { whole(&mut dw, dm.t(), xm, true, par) });
    }
}
