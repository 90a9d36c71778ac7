//! The store-wide commands that read run records and change the store: `forget`, `verify`, `gc`
//! and `push`. (`show/` only reads.)

use crate::run::{RunRecord, RunStatus, list_run_ids};
use crate::store::{Repair, Store};
use anyhow::{Result, bail};

/// Deletes a run's record (refusing while it runs).
pub fn forget(store: &Store, id: &str) -> Result<String> {
    let rec = RunRecord::load(store, id)?;
    if rec.status == RunStatus::Running {
        bail!("run {} is running; stop it first", rec.id);
    }
    let dir = store.root.join("runs").join(&rec.id);
    std::fs::remove_dir_all(&dir)
        .map_err(|e| anyhow::anyhow!("removing {}: {e}", dir.display()))?;
    Ok(rec.id)
}

/// `pipe verify`: the store's objects and records (`Store::verify`), then the run records. A run
/// whose plan cannot be read is reported, and set aside into `damaged/` when its log names nothing
/// (a run that made outputs stays, so gc keeps them, until `pipe forget`). Log lines torn by a
/// kill are normal and ignored when reading.
pub fn verify(store: &Store, repair: Repair) -> Result<crate::store::VerifyReport> {
    let mut report = store.verify(repair)?;
    for id in list_run_ids(store)? {
        let rec = RunRecord::load(store, &id)?;
        if let Some(why) = rec.damage {
            let dir = store.root.join("runs").join(&id);
            if repair == Repair::ReportOnly {
                report
                    .damaged
                    .push(format!("run {id}: {why}; left in place (read-only store)"));
            } else if rec.events.is_empty() {
                let dest = store.root.join("damaged").join(format!("run-{id}"));
                std::fs::create_dir_all(store.root.join("damaged"))?;
                std::fs::rename(&dir, &dest).map_err(|e| {
                    anyhow::anyhow!("moving {} to {}: {e}", dir.display(), dest.display())
                })?;
                report
                    .damaged
                    .push(format!("run {id}: {why}; set aside as {}", dest.display()));
            } else {
                // Its log still names outputs that gc must keep: report it, leave it for `forget`.
                report.damaged.push(format!(
                    "run {id}: {why}; it cannot be shown or resumed (`pipe forget {id}` deletes it)"
                ));
            }
        }
    }
    Ok(report)
}

/// What `gc` removed (or, with `--dry-run`, would remove) and kept.
pub struct GcReport {
    pub removed: usize,
    pub bytes: u64,
    pub kept: usize,
    pub actions_removed: usize,
    /// A dry run made while a run was live: that run's newest objects may show as removable
    /// until it records them.
    pub during_a_run: bool,
}

/// `pipe gc`. It needs the store to itself; a dry run, which changes nothing, also looks while
/// runs are live (under the shared lock they hold too).
pub fn gc(store: &Store, dry_run: bool, keep_checkpoints: bool) -> Result<GcReport> {
    let (_lock, during_a_run) = match store.try_lock_store_exclusive()? {
        Some(lock) => (lock, false),
        None if dry_run => (store.lock_store_shared()?, true),
        None => bail!(
            "a pipe run is using the store {}; run gc when it has finished (`pipe gc --dry-run` shows what it would remove)",
            store.root.display()
        ),
    };
    let keep = crate::refs::References::gather(store)?.kept_by_gc(keep_checkpoints);
    let mut report = GcReport {
        removed: 0,
        bytes: 0,
        kept: 0,
        actions_removed: 0,
        during_a_run,
    };
    for h in store.all_objects()? {
        if keep.contains(&h) {
            report.kept += 1;
        } else {
            report.removed += 1;
            report.bytes += std::fs::metadata(store.object_path(&h))
                .map(|m| m.len())
                .unwrap_or(0);
            if !dry_run {
                store.remove_object(&h)?;
            }
        }
    }
    for a in store.actions()? {
        if !a.outputs.values().all(|h| keep.contains(h)) {
            if !dry_run {
                store.remove_action(&a.key)?;
            }
            report.actions_removed += 1;
        }
    }
    if !dry_run {
        store.clean_tmp()?;
    }
    Ok(report)
}

/// `pipe push [RUN]`: uploads every finished stage of a run (default: the latest) to `remote`,
/// outputs first and each record last.
pub fn push(store: &Store, remote: &crate::store::remote::Remote, id: Option<&str>) -> Result<()> {
    use anyhow::Context;
    let id = match id {
        Some(id) => id.to_string(),
        None => list_run_ids(store)?
            .pop()
            .with_context(|| format!("no runs in {} to push", store.root.display()))?,
    };
    let summary = crate::show::run_summary(store, &id)?;
    let mut pushed = 0;
    for st in &summary.stages {
        let Some(rec) = st
            .key
            .as_ref()
            .map(|k| store.action(k))
            .transpose()?
            .flatten()
        else {
            println!("{}: not finished in run {id}; nothing to push", st.name);
            continue;
        };
        let p = remote.push(store, &rec)?;
        println!(
            "{}: pushed to {} ({})",
            st.name,
            remote.url(),
            crate::exec::pushed_summary(&p)
        );
        pushed += 1;
    }
    println!(
        "run {}: {pushed} stage(s) in {}",
        summary.run_id,
        remote.url()
    );
    Ok(())
}
