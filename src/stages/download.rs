//! Downloads (a pinned source text, GPT-2 weights from the Hub) with curl, bounded: a connect
//! timeout, a stall timeout (less than 1 byte/s for that long) and an overall limit, each set by
//! an environment variable, and errors that say what happened (HTTP 404, a body cut short, a
//! timeout, a host that does not resolve) rather than "offline?".
//!
//! Why curl and not an HTTP crate: ARCHITECTURE.md ("Written by hand, and why").

use anyhow::{Result, bail};
use std::path::Path;
use std::process::Command;

/// Seconds from `var`, else `default`.
fn seconds(var: &str, default: u64) -> Result<u64> {
    match std::env::var(var) {
        Err(_) => Ok(default),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(s) if s > 0 => Ok(s),
            _ => bail!("{var}={v:?}: expected a whole number of seconds, 1 or more"),
        },
    }
}

/// The limits of one download, from the environment.
struct Limits {
    connect: u64,
    stall: u64,
    total: u64,
    retries: u64,
}

impl Limits {
    fn from_env() -> Result<Limits> {
        Ok(Limits {
            connect: seconds("PIPE_DOWNLOAD_CONNECT_TIMEOUT", 20)?,
            stall: seconds("PIPE_DOWNLOAD_STALL_TIMEOUT", 60)?,
            total: seconds("PIPE_DOWNLOAD_MAX_TIME", 6 * 3600)?,
            retries: match std::env::var("PIPE_DOWNLOAD_RETRIES") {
                Ok(v) => v.trim().parse().map_err(|_| {
                    anyhow::anyhow!("PIPE_DOWNLOAD_RETRIES={v:?}: expected a whole number")
                })?,
                Err(_) => 2,
            },
        })
    }
}

/// Downloads `url` into `dest` (created or truncated). On failure `dest` is removed and the
/// error says why, in words.
pub fn fetch(url: &str, dest: &Path) -> Result<()> {
    let l = Limits::from_env()?;
    let out = Command::new("curl")
        .args(["-sS", "-L", "--fail", "-w", "%{http_code}"])
        .args(["--connect-timeout", &l.connect.to_string()])
        .args(["--speed-limit", "1", "--speed-time", &l.stall.to_string()])
        .args(["--max-time", &l.total.to_string()])
        .args(["--retry", &l.retries.to_string()])
        .arg("-o")
        .arg(dest)
        .arg(url)
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("could not download {url}: curl is not installed (pipe downloads with curl)")
        }
        Err(e) => bail!("could not download {url}: running curl: {e}"),
    };
    if out.status.success() {
        return Ok(());
    }
    let _ = std::fs::remove_file(dest);
    let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let why = match out.status.code() {
        Some(22) => format!("the server answered HTTP {code}{}", http_meaning(&code)),
        Some(28) => format!(
            "it timed out (no connection within {} s, less than 1 byte/s for {} s, or more than {} s in all; PIPE_DOWNLOAD_CONNECT_TIMEOUT, PIPE_DOWNLOAD_STALL_TIMEOUT and PIPE_DOWNLOAD_MAX_TIME set them)",
            l.connect, l.stall, l.total
        ),
        Some(18) => "the body was cut short (the server closed the connection before sending all it announced)".into(),
        Some(6) => "the host name does not resolve (offline, or a typo in the URL?)".into(),
        Some(7) => "the connection was refused (is the server up?)".into(),
        Some(35) | Some(60) => format!("the TLS handshake failed: {stderr}"),
        Some(c) => format!("curl exited with {c}: {stderr}"),
        None => "curl was killed by a signal".into(),
    };
    bail!("could not download {url}: {why}")
}

fn http_meaning(code: &str) -> &'static str {
    match code {
        "401" | "403" => " (access denied)",
        "404" => " (not found)",
        "429" => " (too many requests: try again later)",
        c if c.starts_with('5') => " (a server error: try again later)",
        _ => "",
    }
}
