//! The store's runs and sweeps, a line each (`pipe show`), and one sweep's variants
//! (`pipe show SWEEP`). `--json` prints these types as they are.

use crate::run::{RunRecord, RunStatus, list_run_ids};
use crate::store::Store;
use crate::sweep::SweepRecord;
use anyhow::Result;
use serde::Serialize;

/// `pipe show`: every run, then every sweep.
#[derive(Serialize)]
pub struct RunsList {
    pub runs: Vec<RunListing>,
    pub sweeps: Vec<SweepListing>,
}

/// One run's line. `name` and `manifest` are null for a damaged run, whose `error` says why.
#[derive(Serialize)]
pub struct RunListing {
    pub run_id: String,
    pub name: Option<String>,
    pub manifest: Option<String>,
    pub status: RunStatus,
    pub started: Option<String>,
    pub duration_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A sweep: its id, name, status, and each variant's run, status and overrides.
#[derive(Serialize)]
pub struct SweepListing {
    pub sweep_id: String,
    pub name: String,
    pub manifest: String,
    pub created: String,
    pub status: RunStatus,
    pub runs: Vec<SweepVariant>,
}

#[derive(Serialize)]
pub struct SweepVariant {
    pub run_id: String,
    pub status: RunStatus,
    pub overrides: Vec<String>,
}

impl RunsList {
    pub fn read(store: &Store) -> Result<RunsList> {
        let mut runs = Vec::new();
        for id in list_run_ids(store)? {
            let rec = RunRecord::load(store, &id)?;
            let text = |field: &str| {
                rec.plan
                    .get(field)
                    .and_then(|v| v.as_str())
                    .map(String::from)
            };
            runs.push(RunListing {
                name: text("name"),
                manifest: text("path"),
                status: rec.status,
                started: rec.started().map(str::to_string),
                duration_seconds: rec.active_seconds(),
                error: rec.damage.clone(),
                run_id: rec.id,
            });
        }
        let sweeps = SweepRecord::list(store)?
            .iter()
            .map(|s| SweepListing::read(store, s))
            .collect();
        Ok(RunsList { runs, sweeps })
    }

    pub fn print(&self) {
        if self.runs.is_empty() {
            println!("no runs yet (start one with `pipe run pipelines/<manifest>.yaml`)");
            return;
        }
        println!(
            "{:<22} {:<28} {:<12} {:<21} {:>9}",
            "RUN", "NAME", "STATUS", "STARTED", "DURATION"
        );
        for r in &self.runs {
            println!(
                "{:<22} {:<28} {:<12} {:<21} {:>9}",
                r.run_id,
                r.name.as_deref().unwrap_or(""),
                r.status,
                r.started.as_deref().unwrap_or(""),
                r.duration_seconds.map(fmt_duration).unwrap_or_default()
            );
        }
        if !self.sweeps.is_empty() {
            println!(
                "\n{:<32} {:<28} {:<12} {:>8}",
                "SWEEP", "NAME", "STATUS", "VARIANTS"
            );
            for s in &self.sweeps {
                println!(
                    "{:<32} {:<28} {:<12} {:>8}",
                    s.sweep_id,
                    s.name,
                    s.status,
                    s.runs.len()
                );
            }
        }
    }
}

impl SweepListing {
    pub fn read(store: &Store, s: &SweepRecord) -> SweepListing {
        let statuses = s.run_statuses(store);
        SweepListing {
            sweep_id: s.sweep_id.clone(),
            name: s.name.clone(),
            manifest: s.manifest.clone(),
            created: s.created.clone(),
            status: crate::sweep::status_of(&statuses),
            runs: s
                .variants
                .iter()
                .zip(statuses)
                .map(|(v, status)| SweepVariant {
                    run_id: v.run_id.clone(),
                    status,
                    overrides: v.overrides.clone(),
                })
                .collect(),
        }
    }

    /// One sweep's table: each variant's run, status and overrides.
    pub fn print(&self) {
        println!(
            "sweep {} ({}: {} variants): {}",
            self.sweep_id,
            self.name,
            self.runs.len(),
            self.status
        );
        println!("  {:<22} {:<12} OVERRIDES", "RUN", "STATUS");
        for r in &self.runs {
            println!(
                "  {:<22} {:<12} {}",
                r.run_id,
                r.status,
                r.overrides.join(" ")
            );
        }
    }
}

/// `95s` as `1m35s`, `4000s` as `1h06m`.
pub fn fmt_duration(s: u64) -> String {
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}
