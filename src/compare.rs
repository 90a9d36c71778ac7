//! `pipe compare`: one row per run, with the parameters that differ between the rows and each
//! run's training metrics (best val loss and its iteration, final losses, tokens/s, wall time),
//! sorted by a metric; as a table, `--json` or `--csv`, and `--plot` overlays the runs' curves.
//!
//! It reads run records (plan.json, log.jsonl) and, for a train stage that was reused from the
//! cache rather than run, that stage's `metrics.json`: never a checkpoint. A run still training
//! shows its latest evaluation (the log gets each one as it happens).

use crate::plot::{Series, loss_svg};
use crate::run::{RunEvent, RunRecord, RunStatus};
use crate::store::Store;
use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// The metrics `--sort` takes; lower is better for the losses and wall time, higher for
/// tokens/s, and rows without the metric come last.
pub const METRICS: [&str; 6] = [
    "best_val_loss",
    "best_iter",
    "final_train_loss",
    "final_val_loss",
    "tokens_per_second",
    "wall_seconds",
];

/// One run's row.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub run_id: String,
    pub status: RunStatus,
    /// `stage.key` (or `seed`, `device`, `dtype`) -> value: every parameter of the run's plan.
    pub params: BTreeMap<String, Value>,
    pub metrics: Metrics,
    /// The train stage's evaluations, (iter, train loss, val loss), for `--plot`.
    #[serde(skip)]
    pub evals: Vec<(u64, f64, f64)>,
    /// Its logged iterations, (iter, train loss): from the run's live curve while it trains (or
    /// after), else from its metrics.json.
    #[serde(skip)]
    pub steps: Vec<(u64, f64)>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Metrics {
    pub best_val_loss: Option<f64>,
    pub best_iter: Option<u64>,
    pub final_train_loss: Option<f64>,
    pub final_val_loss: Option<f64>,
    pub tokens_per_second: Option<f64>,
    pub wall_seconds: Option<u64>,
}

impl Metrics {
    fn get(&self, name: &str) -> Option<f64> {
        match name {
            "best_val_loss" => self.best_val_loss,
            "best_iter" => self.best_iter.map(|x| x as f64),
            "final_train_loss" => self.final_train_loss,
            "final_val_loss" => self.final_val_loss,
            // Higher is better: sorted by its negation.
            "tokens_per_second" => self.tokens_per_second.map(|x| -x),
            "wall_seconds" => self.wall_seconds.map(|x| x as f64),
            _ => None,
        }
    }
}

/// The rows for runs `ids`, sorted by `sort` (one of [`METRICS`]).
pub fn rows(store: &Store, ids: &[String], sort: &str) -> Result<Vec<Row>> {
    if !METRICS.contains(&sort) {
        bail!(
            "--sort {sort:?}: not a metric (choose one of {})",
            METRICS.join(", ")
        );
    }
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(row(store, id)?);
    }
    out.sort_by(|a, b| {
        let (x, y) = (a.metrics.get(sort), b.metrics.get(sort));
        match (x, y) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        }
        .then_with(|| a.run_id.cmp(&b.run_id))
    });
    Ok(out)
}

fn row(store: &Store, id: &str) -> Result<Row> {
    let rec = RunRecord::load(store, id)?;
    let params = params_of(&rec.plan);
    // The last train stage of the plan is the one compared.
    let train = rec.plan["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .find(|s| s["kind"] == "train")
        .and_then(|s| s["name"].as_str())
        .map(str::to_string);
    let mut evals: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    let mut finished: Option<&Map<String, Value>> = None;
    let mut metrics_json = None;
    for e in &rec.events {
        match e {
            RunEvent::Eval {
                stage,
                iter,
                train_loss,
                val_loss,
                ..
            } if Some(stage) == train.as_ref() => {
                // A resumed stage evaluates its checkpoint's iteration once more: last one wins.
                evals.insert(*iter, (widen(*train_loss), widen(*val_loss)));
            }
            RunEvent::StageFinished {
                stage,
                metrics,
                outputs,
                ..
            } if Some(stage) == train.as_ref() => {
                finished = metrics.as_object();
                metrics_json = outputs.get("metrics.json").cloned();
            }
            _ => {}
        }
    }
    let mut steps: Vec<(u64, f64)> = match &train {
        Some(stage) => {
            let dir = store.root.join("runs").join(&rec.id);
            crate::curves::read_curve(&crate::curves::curve_path(&dir, stage))?
                .steps
                .iter()
                .map(|p| (p.iter, widen(p.loss)))
                .collect()
        }
        None => Vec::new(),
    };
    // Reused from the cache (or pulled): its evaluations and steps are in its metrics.json.
    if (evals.is_empty() || steps.is_empty())
        && let Some(h) = metrics_json
        && let Ok(bytes) = store.get(&h)
        && let Ok(doc) = serde_json::from_slice::<Value>(&bytes)
    {
        if evals.is_empty() {
            for e in doc["evals"].as_array().into_iter().flatten() {
                if let (Some(i), Some(t), Some(v)) = (
                    e["iter"].as_u64(),
                    e["train_loss"].as_f64(),
                    e["val_loss"].as_f64(),
                ) {
                    evals.insert(i, (t, v));
                }
            }
        }
        if steps.is_empty() {
            steps = doc["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| Some((e["iter"].as_u64()?, e["loss"].as_f64()?)))
                .collect();
        }
    }
    let evals: Vec<(u64, f64, f64)> = evals.into_iter().map(|(i, (t, v))| (i, t, v)).collect();
    let best = evals
        .iter()
        .filter(|e| e.2.is_finite())
        .min_by(|a, b| a.2.total_cmp(&b.2));
    let last = evals.last();
    let metrics = Metrics {
        best_val_loss: best.map(|e| e.2),
        best_iter: best.map(|e| e.0),
        final_train_loss: last.map(|e| e.1),
        final_val_loss: last.map(|e| e.2),
        tokens_per_second: finished.and_then(|m| m.get("tokens_per_second")?.as_f64()),
        wall_seconds: rec.active_seconds(),
    };
    Ok(Row {
        run_id: rec.id,
        status: rec.status,
        params,
        metrics,
        evals,
        steps,
    })
}

/// An f32 loss as the f64 with the same shortest decimal form (3.1307447, not 3.130744695663452).
fn widen(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}

/// Every parameter of a plan as `stage.key` -> value (defaults as `seed`, `device`, `dtype`).
fn params_of(plan: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for (k, v) in plan["defaults"].as_object().into_iter().flatten() {
        out.insert(k.clone(), v.clone());
    }
    for s in plan["stages"].as_array().into_iter().flatten() {
        let name = s["name"].as_str().unwrap_or("");
        for (k, v) in s["params"].as_object().into_iter().flatten() {
            out.insert(format!("{name}.{k}"), v.clone());
        }
    }
    out
}

/// The parameters whose values are not the same in every row (a parameter missing from some
/// rows counts as differing), in name order.
pub fn differing(rows: &[Row]) -> Vec<String> {
    let mut keys: Vec<&String> = rows.iter().flat_map(|r| r.params.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| {
            let first = rows.first().and_then(|r| r.params.get(*k));
            rows.iter().any(|r| r.params.get(*k) != first)
        })
        .cloned()
        .collect()
}

/// What `--json` prints: each row with the shown parameters only.
pub fn to_json(rows: &[Row], shown: &[String]) -> Value {
    let runs: Vec<Value> = rows
        .iter()
        .map(|r| {
            let params: Map<String, Value> = shown
                .iter()
                .map(|k| (k.clone(), r.params.get(k).cloned().unwrap_or(Value::Null)))
                .collect();
            json!({ "run_id": r.run_id, "status": r.status, "params": params, "metrics": r.metrics })
        })
        .collect();
    json!({ "params": shown, "runs": runs })
}

fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

fn num(x: Option<f64>, digits: usize) -> String {
    x.map_or("-".into(), |x| format!("{x:.digits$}"))
}

/// The metric columns: header and text of a row.
fn metric_cells(m: &Metrics) -> [String; 6] {
    [
        num(m.best_val_loss, 4),
        m.best_iter.map_or("-".into(), |i| i.to_string()),
        num(m.final_train_loss, 4),
        num(m.final_val_loss, 4),
        num(m.tokens_per_second, 0),
        m.wall_seconds.map_or("-".into(), crate::show::fmt_duration),
    ]
}

const METRIC_HEADERS: [&str; 6] = ["best_val", "best_iter", "train", "val", "tok/s", "wall"];

/// The table, for a terminal.
pub fn table(rows: &[Row], shown: &[String]) -> String {
    let mut header: Vec<String> = vec!["RUN".into(), "STATUS".into()];
    header.extend(shown.iter().cloned());
    header.extend(METRIC_HEADERS.iter().map(|s| s.to_string()));
    let mut lines: Vec<Vec<String>> = vec![header];
    for r in rows {
        let mut l = vec![r.run_id.clone(), r.status.to_string()];
        l.extend(shown.iter().map(|k| cell(r.params.get(k))));
        l.extend(metric_cells(&r.metrics));
        lines.push(l);
    }
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The rows as CSV (RFC 4180 quoting), the metrics unrounded.
pub fn csv(rows: &[Row], shown: &[String]) -> String {
    let quote = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let mut header: Vec<String> = vec!["run_id".into(), "status".into()];
    header.extend(shown.iter().cloned());
    header.extend(METRICS.iter().map(|s| s.to_string()));
    let mut out = header
        .iter()
        .map(|h| quote(h))
        .collect::<Vec<_>>()
        .join(",");
    out.push('\n');
    for r in rows {
        let m = serde_json::to_value(&r.metrics).unwrap_or_default();
        let mut l = vec![r.run_id.clone(), r.status.to_string()];
        l.extend(shown.iter().map(|k| cell(r.params.get(k))));
        l.extend(METRICS.iter().map(|k| match &m[k] {
            Value::Null => String::new(),
            v => v.to_string(),
        }));
        out.push_str(&l.iter().map(|c| quote(c)).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}

/// Each run's label in a plot's legend: its differing parameters (or its id, if none differ).
fn label(r: &Row, shown: &[String]) -> String {
    if shown.is_empty() {
        return r.run_id.clone();
    }
    shown
        .iter()
        .map(|k| {
            format!(
                "{}={}",
                k.rsplit('.').next().unwrap_or(k),
                cell(r.params.get(k))
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Two panels, val loss (at the evaluations) and train loss (at every logged iteration, or at
/// the evaluations for a run that has no steps), one colour per run (the same run has the same
/// colour in both), as one SVG document.
pub fn plot_svg(rows: &[Row], shown: &[String]) -> String {
    let series = |points: &dyn Fn(&Row) -> Vec<(f64, f64)>| -> Vec<Series> {
        rows.iter()
            .map(|r| Series {
                name: label(r, shown),
                points: points(r),
            })
            .collect()
    };
    let val = loss_svg(
        "validation loss",
        &series(&|r| r.evals.iter().map(|e| (e.0 as f64, e.2)).collect()),
    );
    let train = loss_svg(
        "train loss",
        &series(&|r| {
            if r.steps.is_empty() {
                r.evals.iter().map(|e| (e.0 as f64, e.1)).collect()
            } else {
                r.steps.iter().map(|s| (s.0 as f64, s.1)).collect()
            }
        }),
    );
    let (w, h) = (720, 420);
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" viewBox=\"0 0 {w} {}\">\n{}{}</svg>\n",
        2 * h,
        2 * h,
        val.replacen("<svg ", "<svg x=\"0\" y=\"0\" ", 1),
        train.replacen("<svg ", &format!("<svg x=\"0\" y=\"{h}\" "), 1),
    )
}

/// One self-contained page: the plot inline and the table, no scripts, nothing fetched.
pub fn plot_html(rows: &[Row], shown: &[String]) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut head = String::from("<tr><th>run</th><th>status</th>");
    for k in shown {
        head.push_str(&format!("<th>{}</th>", esc(k)));
    }
    for k in METRIC_HEADERS {
        head.push_str(&format!("<th>{k}</th>"));
    }
    head.push_str("</tr>\n");
    let mut body = String::new();
    for r in rows {
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td>",
            esc(&r.run_id),
            r.status
        ));
        for k in shown {
            body.push_str(&format!("<td>{}</td>", esc(&cell(r.params.get(k)))));
        }
        for c in metric_cells(&r.metrics) {
            body.push_str(&format!("<td>{}</td>", esc(&c)));
        }
        body.push_str("</tr>\n");
    }
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>pipe compare</title>\n\
         <style>body{{font-family:Helvetica,Arial,sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head><body>\n\
         <h1>pipe compare: {} runs</h1>\n{}\n<table>\n{head}{body}</table>\n</body></html>\n",
        rows.len(),
        plot_svg(rows, shown)
    )
}

/// Which runs to compare: a sweep's (`SWEEP_ID`), the given runs, or those of a manifest (the
/// runs whose plan came from `manifest`, by its file name); with none of these, the latest sweep,
/// or the runs of the latest run's manifest.
pub fn select(store: &Store, targets: &[String], manifest: Option<&str>) -> Result<Vec<String>> {
    use crate::sweep::SweepRecord;
    if let Some(m) = manifest {
        let wanted = std::fs::canonicalize(m).with_context(|| format!("--manifest {m}"))?;
        // A plan keeps the manifest's path as typed, and the folder it was resolved against.
        return runs_where(store, |plan| {
            let (Some(path), Some(base)) = (plan["path"].as_str(), plan["base_dir"].as_str())
            else {
                return false;
            };
            let file = std::path::Path::new(path).file_name().unwrap_or_default();
            std::fs::canonicalize(std::path::Path::new(base).join(file)).is_ok_and(|p| p == wanted)
        });
    }
    if let [one] = targets
        && let Some(s) = SweepRecord::find(store, one)?
    {
        return Ok(s.variants.into_iter().map(|v| v.run_id).collect());
    }
    if !targets.is_empty() {
        for t in targets {
            RunRecord::load(store, t).with_context(|| {
                format!("{t:?} is neither a sweep nor a run (`pipe show` lists them)")
            })?;
        }
        return Ok(targets.to_vec());
    }
    if let Some(s) = SweepRecord::list(store)?.pop() {
        return Ok(s.variants.into_iter().map(|v| v.run_id).collect());
    }
    let Some(last) = crate::run::list_run_ids(store)?.pop() else {
        bail!("no runs to compare in {}", store.root.display());
    };
    let name = RunRecord::load(store, &last)?.plan["name"].clone();
    runs_where(store, |plan| plan["name"] == name)
}

fn runs_where(store: &Store, f: impl Fn(&Value) -> bool) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for id in crate::run::list_run_ids(store)? {
        let path = store.root.join("runs").join(&id).join("plan.json");
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let Ok(plan) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        if f(&plan) {
            out.push(id);
        }
    }
    Ok(out)
}
