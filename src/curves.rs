//! A train stage's live curve in its run's folder: `runs/<run-id>/curves/<stage>.jsonl`, one JSON
//! object per line, appended (one write each, no buffering) while the stage trains, so another
//! process can follow it. Not a store output: it holds wall-clock values (throughput, elapsed
//! seconds), and a stage that was cached writes none.
//!
//! Lines, told apart by `kind`:
//! - `{"kind": "step", "iter", "loss", "lr", "grad_norm", "tokens_per_second", "elapsed_s"}`: every
//!   `log_interval` iterations, the training loss of iteration `iter`'s last micro-batch, its
//!   learning rate and gradient norm (`null` without clipping, when it is not computed), the train
//!   tokens per second over the iterations since the previous step line, and seconds of training
//!   so far in this run;
//! - `{"kind": "eval", "iter", "train_loss", "val_loss", "elapsed_s"}`: every evaluation;
//! - `{"kind": "start", "iter"}`: an attempt (re)starts at `iter`: the points at `iter` and later
//!   written before it are void (a killed attempt's points past its last checkpoint, which the
//!   resumed one computes again). Points copied from the stage's progress record have no
//!   `tokens_per_second` or `elapsed_s`.
//!
//! [`read_curve`] reads what is there: a torn line (a writer killed mid-line) is skipped, and
//! each iteration keeps one point of each kind, the last written.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One logged training iteration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepPoint {
    pub iter: u64,
    pub loss: f32,
    pub lr: f64,
    /// `None` when the norm is not computed (`grad_clip: 0`).
    pub grad_norm: Option<f32>,
    /// Train tokens per second since the previous step point (see the module's documentation).
    pub tokens_per_second: Option<f64>,
    /// Seconds of training in this run up to this point.
    pub elapsed_s: Option<f64>,
}

/// One evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalPoint {
    pub iter: u64,
    pub train_loss: f32,
    pub val_loss: f32,
    pub elapsed_s: Option<f64>,
}

/// One line of a curve file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CurveLine {
    Step(StepPoint),
    Eval(EvalPoint),
    /// An attempt starts at `iter`: earlier lines' points at `iter` and later are void.
    Start {
        iter: u64,
    },
}

/// A curve as read back: each kind's points in iteration order, one per iteration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Curve {
    pub steps: Vec<StepPoint>,
    pub evals: Vec<EvalPoint>,
}

impl Curve {
    /// The latest logged iteration.
    pub fn last_step(&self) -> Option<&StepPoint> {
        self.steps.last()
    }

    /// The latest evaluation.
    pub fn last_eval(&self) -> Option<&EvalPoint> {
        self.evals.last()
    }
}

/// Where stage `stage` of the run whose folder is `run_dir` writes its curve.
pub fn curve_path(run_dir: &Path, stage: &str) -> PathBuf {
    run_dir.join("curves").join(format!("{stage}.jsonl"))
}

/// Reads a curve file (see [`parse_curve`]). A missing file is an empty curve: the stage has
/// logged nothing yet (or was cached, or is not a train stage).
pub fn read_curve(path: &Path) -> Result<Curve> {
    match fs::read(path) {
        Ok(bytes) => Ok(parse_curve(&bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Curve::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// A curve from a file's bytes: lines that are not a whole [`CurveLine`] (torn by a kill, or of a
/// kind this version does not know) are skipped; a later point for an iteration replaces an
/// earlier one; `start` voids the points at its iteration and later.
pub fn parse_curve(bytes: &[u8]) -> Curve {
    let mut steps: BTreeMap<u64, StepPoint> = BTreeMap::new();
    let mut evals: BTreeMap<u64, EvalPoint> = BTreeMap::new();
    for line in String::from_utf8_lossy(bytes).lines() {
        match serde_json::from_str::<CurveLine>(line) {
            Ok(CurveLine::Step(s)) => {
                steps.insert(s.iter, s);
            }
            Ok(CurveLine::Eval(e)) => {
                evals.insert(e.iter, e);
            }
            Ok(CurveLine::Start { iter }) => {
                steps.split_off(&iter);
                evals.split_off(&iter);
            }
            Err(_) => {}
        }
    }
    Curve {
        steps: steps.into_values().collect(),
        evals: evals.into_values().collect(),
    }
}

/// Appends lines to a curve file.
pub struct CurveWriter {
    file: File,
    path: PathBuf,
}

impl CurveWriter {
    /// Opens `path` for appending (creating it and its folder); if its last line is torn, the
    /// next line starts on a fresh one.
    pub fn append(path: &Path) -> Result<CurveWriter> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let torn = match fs::read(path) {
            Ok(b) => b.last().is_some_and(|&c| c != b'\n'),
            Err(_) => false,
        };
        if torn {
            file.write_all(b"\n")?;
        }
        Ok(CurveWriter {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Appends one line, in one write.
    pub fn write(&mut self, line: &CurveLine) -> Result<()> {
        let mut bytes = serde_json::to_vec(line)?;
        bytes.push(b'\n');
        self.file
            .write_all(&bytes)
            .and_then(|()| self.file.flush())
            .with_context(|| format!("appending to {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(iter: u64, loss: f32) -> CurveLine {
        CurveLine::Step(StepPoint {
            iter,
            loss,
            lr: 1e-3,
            grad_norm: Some(0.5),
            tokens_per_second: Some(1000.0),
            elapsed_s: Some(iter as f64),
        })
    }

    fn eval(iter: u64, val_loss: f32) -> CurveLine {
        CurveLine::Eval(EvalPoint {
            iter,
            train_loss: val_loss + 0.1,
            val_loss,
            elapsed_s: None,
        })
    }

    fn text(lines: &[CurveLine]) -> String {
        lines
            .iter()
            .map(|l| serde_json::to_string(l).unwrap() + "\n")
            .collect()
    }

    /// (iter, loss) of the steps, (iter, val_loss) of the evaluations.
    type Points = Vec<(u64, f32)>;

    fn iters(c: &Curve) -> (Points, Points) {
        (
            c.steps.iter().map(|s| (s.iter, s.loss)).collect(),
            c.evals.iter().map(|e| (e.iter, e.val_loss)).collect(),
        )
    }

    #[test]
    fn lines_read_back_with_their_kind() {
        let s = serde_json::to_string(&step(10, 2.5)).unwrap();
        assert_eq!(
            s,
            r#"{"kind":"step","iter":10,"loss":2.5,"lr":0.001,"grad_norm":0.5,"tokens_per_second":1000.0,"elapsed_s":10.0}"#
        );
        let e = serde_json::to_string(&eval(20, 2.0)).unwrap();
        assert!(e.starts_with(r#"{"kind":"eval","iter":20,"#), "{e}");
        // Missing optional fields (points copied from a progress record) read as None.
        let c = parse_curve(br#"{"kind":"step","iter":3,"loss":1.0,"lr":0.1,"grad_norm":null}"#);
        assert_eq!(c.steps[0].tokens_per_second, None);
        assert_eq!(c.steps[0].grad_norm, None);
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let mut t = text(&[step(0, 4.0), eval(0, 4.1), step(10, 3.0)]);
        let torn = serde_json::to_string(&step(20, 2.0)).unwrap();
        t.push_str(&torn[..torn.len() / 2]);
        let c = parse_curve(t.as_bytes());
        assert_eq!(iters(&c), (vec![(0, 4.0), (10, 3.0)], vec![(0, 4.1)]));
        assert_eq!(c.last_step().unwrap().iter, 10);
        assert_eq!(c.last_eval().unwrap().iter, 0);
        // Not even a whole line, or nothing: an empty curve.
        assert_eq!(parse_curve(b"{\"kind\":\"st"), Curve::default());
        assert_eq!(parse_curve(b""), Curve::default());
    }

    #[test]
    fn each_iteration_keeps_its_last_point() {
        let c = parse_curve(
            text(&[
                step(0, 4.0),
                step(10, 3.0),
                eval(20, 2.9),
                step(20, 2.8),
                // A resume that logs iteration 20 again, then goes on.
                step(20, 2.7),
                eval(20, 2.6),
                step(30, 2.5),
            ])
            .as_bytes(),
        );
        assert_eq!(
            iters(&c),
            (
                vec![(0, 4.0), (10, 3.0), (20, 2.7), (30, 2.5)],
                vec![(20, 2.6)]
            )
        );
    }

    #[test]
    fn start_voids_the_points_from_its_iteration_on() {
        // Killed after iteration 40 with its last checkpoint at 20; the resumed attempt starts
        // at 20, writes the checkpoint's evaluation again and computes 20.. anew.
        let mut t = text(&[
            CurveLine::Start { iter: 0 },
            step(0, 4.0),
            eval(0, 4.1),
            step(10, 3.0),
            eval(20, 2.9),
            step(20, 2.8),
            step(30, 2.6),
            step(40, 2.4),
            eval(40, 2.3),
        ]);
        t.push_str("{\"kind\":\"step\",\"it");
        t.push('\n');
        t.push_str(&text(&[
            CurveLine::Start { iter: 20 },
            eval(20, 2.9),
            step(20, 2.8),
            step(30, 2.65),
        ]));
        let c = parse_curve(t.as_bytes());
        assert_eq!(
            iters(&c),
            (
                vec![(0, 4.0), (10, 3.0), (20, 2.8), (30, 2.65)],
                vec![(0, 4.1), (20, 2.9)]
            )
        );
    }

    #[test]
    fn the_writer_appends_after_a_torn_line() {
        let dir = std::env::temp_dir().join(format!(
            "pipe-curve-{}-{}",
            std::process::id(),
            crate::store::temp_name("t")
        ));
        let path = curve_path(&dir, "train");
        assert_eq!(read_curve(&path).unwrap(), Curve::default());
        let mut w = CurveWriter::append(&path).unwrap();
        w.write(&step(0, 4.0)).unwrap();
        drop(w);
        // A kill mid-line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"kind\":\"step\",\"iter\":10,\"lo").unwrap();
        let mut w = CurveWriter::append(&path).unwrap();
        w.write(&step(10, 3.0)).unwrap();
        let c = read_curve(&path).unwrap();
        assert_eq!(iters(&c).0, vec![(0, 4.0), (10, 3.0)]);
        fs::remove_dir_all(dir).unwrap();
    }
}
