//! The Slurm commands pipe calls: `sbatch` (submit), `squeue` and `sacct` (job states),
//! `scancel`. Each is looked up on PATH (the tests put fakes first).

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// A scheduler command that is not on PATH: fatal (asking again cannot help), unlike a command
/// that failed or did not answer in time.
#[derive(Debug)]
pub struct Missing(pub String);

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "`{}` is not on PATH: is Slurm installed here? (--executor slurm runs sbatch, squeue, sacct and scancel)",
            self.0
        )
    }
}

impl std::error::Error for Missing {}

/// How long one scheduler command may take: `PIPE_SLURM_CALL_TIMEOUT` seconds, default 60.
fn call_timeout() -> Duration {
    std::env::var("PIPE_SLURM_CALL_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(Duration::from_secs(60), Duration::from_secs_f64)
}

/// Runs a scheduler command and returns its output. A missing command is [`Missing`]; one that
/// does not finish within [`call_timeout`] is killed (its whole process group) and is an error.
fn call(program: &str, args: &[String]) -> Result<Output> {
    tracing::debug!(%program, ?args, "slurm");
    // In its own process group, so a Ctrl-C at the terminal reaches pipe (which then cancels
    // its jobs) but not an sbatch halfway through submitting one.
    let child = Command::new(program)
        .args(args)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Missing(program.to_string()).into());
        }
        Err(e) => return Err(e).with_context(|| format!("running `{program}`")),
    };
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let limit = call_timeout();
    match rx.recv_timeout(limit) {
        Ok(out) => out.with_context(|| format!("waiting for `{program}`")),
        Err(_) => {
            // SAFETY: signals the process group this call started (its pgid is the child's pid).
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            bail!(
                "`{program}` did not answer within {:.0} s (killed); PIPE_SLURM_CALL_TIMEOUT sets the limit",
                limit.as_secs_f64()
            )
        }
    }
}

/// Submits `script` after the jobs in `after` succeed; returns the job id.
pub fn submit(script: &Path, after: &[String]) -> Result<String> {
    let mut args = vec!["--parsable".to_string()];
    if !after.is_empty() {
        args.push(format!("--dependency=afterok:{}", after.join(":")));
        // A job whose dependency failed leaves the queue instead of waiting forever.
        args.push("--kill-on-invalid-dep=yes".into());
    }
    args.push(script.display().to_string());
    let out = call("sbatch", &args)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    // `--parsable` prints `ID` or `ID;CLUSTER`.
    let id = stdout
        .trim()
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    if !out.status.success() || id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        bail!(
            "sbatch {} failed ({}): {}{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            stdout.trim()
        );
    }
    Ok(id)
}

/// Whether a Slurm job state is final (the job will not run, or run again).
pub fn is_terminal(state: &str) -> bool {
    matches!(
        state,
        "COMPLETED"
            | "FAILED"
            | "CANCELLED"
            | "TIMEOUT"
            | "OUT_OF_MEMORY"
            | "NODE_FAIL"
            | "BOOT_FAIL"
            | "DEADLINE"
            | "PREEMPTED"
            | "REVOKED"
            | "SPECIAL_EXIT"
    )
}

/// The states of jobs `ids`: squeue's for the jobs it lists, then sacct's for the others. An id
/// neither knows is absent from the map. An error means the scheduler could not be asked (try
/// again later), not that the jobs are gone.
pub fn states(ids: &[String]) -> Result<BTreeMap<String, String>> {
    let mut states = BTreeMap::new();
    if ids.is_empty() {
        return Ok(states);
    }
    let list = ids.join(",");
    // `-t all`: jobs that ended stay listed for a while (MinJobAge), which matters where sacct
    // has no accounting storage to ask.
    let out = call(
        "squeue",
        &["-h", "-t", "all", "-o", "%i %T", "-j", &list].map(String::from),
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // squeue refuses the whole list when it knows none of the ids (they left its memory).
    if !out.status.success() && !stderr.contains("Invalid job id") {
        bail!("squeue failed ({}): {}", out.status, stderr.trim());
    }
    parse_lines(&out.stdout, ' ', &mut states);
    let rest: Vec<String> = ids
        .iter()
        .filter(|id| !states.contains_key(*id))
        .cloned()
        .collect();
    if !rest.is_empty() {
        let args = ["-n", "-X", "-P", "-o", "JobID,State", "-j", &rest.join(",")].map(String::from);
        match call("sacct", &args) {
            Ok(out) if out.status.success() => parse_lines(&out.stdout, '|', &mut states),
            // Without accounting, finished jobs are known only while squeue still lists them.
            Ok(out) => tracing::warn!(
                "sacct failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) if e.is::<Missing>() => {
                tracing::debug!("{e:#}: finished jobs are known while squeue lists them")
            }
            Err(e) => tracing::warn!("{e:#}"),
        }
    }
    states.retain(|id, _| ids.contains(id));
    Ok(states)
}

/// `ID STATE` lines (squeue) or `ID|STATE` (sacct) into `states`. States are reduced to their
/// first word (`CANCELLED by 1000` is `CANCELLED`); the first line for an id wins.
fn parse_lines(out: &[u8], sep: char, states: &mut BTreeMap<String, String>) {
    for line in String::from_utf8_lossy(out).lines() {
        let mut parts = line.trim().splitn(2, sep);
        let (Some(id), Some(state)) = (parts.next(), parts.next()) else {
            continue;
        };
        let state = state.split_whitespace().next().unwrap_or("").to_string();
        if !id.is_empty() && !state.is_empty() {
            states.entry(id.to_string()).or_insert(state);
        }
    }
}

/// Cancels jobs (best effort: a job that already ended is not an error).
pub fn cancel(ids: &[String]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let out = call("scancel", ids)?;
    if !out.status.success() {
        tracing::warn!(
            "scancel {} ({}): {}",
            ids.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_read_from_squeue_and_sacct_lines() {
        let mut s = BTreeMap::new();
        parse_lines(b"12 RUNNING\n13 PENDING\n\n", ' ', &mut s);
        parse_lines(b"14|CANCELLED by 1000\n12|COMPLETED\nbad\n", '|', &mut s);
        assert_eq!(s["12"], "RUNNING");
        assert_eq!(s["13"], "PENDING");
        assert_eq!(s["14"], "CANCELLED");
        assert_eq!(s.len(), 3);
        assert!(is_terminal("CANCELLED") && is_terminal("OUT_OF_MEMORY"));
        assert!(!is_terminal("PENDING") && !is_terminal("COMPLETING"));
    }
}
