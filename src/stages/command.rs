//! `command`: a user's own step in the DAG, as in DVC. `cmd` runs with `sh -c` in the manifest's
//! folder. It reads the outputs of the stages it `needs` through environment variables
//! `PIPE_IN_<STAGE>_<OUTPUT>` (upper-cased, other characters as `_`), and writes each declared
//! `outs` file into `$PIPE_OUT`. Its key covers `cmd`, the content of every `deps` file and the
//! input hashes.
//!
//! The inputs are private copies, checked against their hashes as they are copied, so a command
//! can never change what is in the store; after it finishes they are hashed again, and a command
//! that changed one fails (its outputs may depend on bytes that are not its inputs). Its stdout
//! and stderr stream to the terminal and to `runs/<id>/<stage>.log`, never into memory.

use super::{Ctx, Produced, resolve_path, typed};
use crate::error::err;
use crate::manifest::StageSpec;
use crate::store::{Hash, OutputName, Outputs, Store, temp_name};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub cmd: String,
    #[serde(default)]
    pub deps: Vec<String>,
    #[serde(default)]
    pub outs: Vec<OutputName>,
}

const HELP: &str = "command takes `cmd` (a shell command), `deps` (files it reads, hashed into the key) and `outs` (file names it writes into $PIPE_OUT)";

pub fn params(spec: &StageSpec, p: &serde_json::Map<String, Value>) -> Result<Params> {
    // Each `outs` entry checked here first, for a message that says what an output is.
    let outs = p
        .get("outs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for o in outs.filter_map(Value::as_str) {
        if let Err(why) = OutputName::parse(o) {
            return Err(err(
                spec.origin_of("outs").clone(),
                format!("`outs` entry {o:?} must be a plain file name: {why}"),
                Some("outputs are files written directly into $PIPE_OUT"),
            ));
        }
    }
    typed(spec, p, HELP)
}

pub fn key_parts(base: &Path, spec: &StageSpec, params: &Params) -> Result<(Value, Value)> {
    let mut deps = BTreeMap::new();
    for d in &params.deps {
        let full = resolve_path(base, d);
        let bytes = super::read_input_file(&full).map_err(|e| {
            err(
                spec.origin_of("deps").clone(),
                format!("cannot read dependency {}: {e}", full.display()),
                Some("deps are files relative to the manifest's folder"),
            )
        })?;
        deps.insert(d.clone(), blake3::hash(&bytes).to_hex().to_string());
    }
    Ok((
        json!({ "cmd": params.cmd, "outs": params.outs }),
        json!({ "deps": deps }),
    ))
}

/// Two inputs must not share an environment variable (stages `a-b` and `a_b` both give
/// `PIPE_IN_A_B_...`): one would silently hide the other.
pub fn check_input_names(m: &crate::manifest::Manifest, spec: &StageSpec) -> Result<()> {
    let mut seen: BTreeMap<String, (String, String)> = BTreeMap::new();
    for need in spec.needs.iter().filter_map(|n| m.stage(n)) {
        for output in super::output_names(need) {
            let var = env_name(&need.name, &output);
            if let Some((other, other_out)) = seen.get(&var) {
                return Err(err(
                    spec.origin_of("needs").clone(),
                    format!(
                        "inputs `{other}/{other_out}` and `{}/{output}` would both be ${var}",
                        need.name
                    ),
                    Some(
                        "rename one of these stages (or outputs) so their names differ in more than punctuation and case",
                    ),
                ));
            }
            seen.insert(var, (need.name.clone(), output));
        }
    }
    Ok(())
}

pub fn env_name(stage: &str, output: &str) -> String {
    let clean = |s: &str| {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect::<String>()
    };
    format!("PIPE_IN_{}_{}", clean(stage), clean(output))
}

pub fn execute(ctx: &Ctx, p: &Params) -> Result<Produced> {
    let work = ctx
        .store
        .root
        .join("tmp")
        .join(temp_name(&format!("cmd-{}", ctx.key.short())));
    let result = run_in(ctx, p, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// One input as the command sees it: a private copy of a store object.
struct InputCopy {
    var: String,
    path: PathBuf,
    hash: Hash,
}

fn run_in(ctx: &Ctx, p: &Params, work: &Path) -> Result<Produced> {
    let out_dir = work.join("out");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut copies = Vec::new();
    for input in &ctx.inputs {
        let dir = work.join("in").join(&input.stage);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, hash) in &input.outputs {
            let path = name.path_in(&dir);
            ctx.store.copy_out(hash, &path)?;
            copies.push(InputCopy {
                var: env_name(&input.stage, name.as_str()),
                path,
                hash: hash.clone(),
            });
        }
    }
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(&p.cmd)
        .current_dir(&ctx.base_dir)
        .env("PIPE_OUT", &out_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for c in &copies {
        cmd.env(&c.var, &c.path);
    }
    let log_path = ctx.run.dir.join(format!("{}.log", ctx.spec.name));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let log = Mutex::new(log);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting `sh -c {:?}` in {}", p.cmd, ctx.base_dir.display()))?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let stderr_tail = std::thread::scope(|s| {
        let out = s.spawn(|| stream_output(stdout, &log, 0));
        let err = s.spawn(|| stream_output(stderr, &log, 4096));
        let _ = out.join();
        err.join().unwrap_or_default()
    });
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{}`", p.cmd))?;
    if !status.success() {
        bail!(
            "command `{}` failed ({status}):\n{}\n  (its whole output is in {})",
            p.cmd,
            last_lines(&stderr_tail, 10),
            log_path.display()
        );
    }
    for c in &copies {
        if Store::hash_file(&c.path).ok().as_ref() != Some(&c.hash) {
            bail!(
                "command `{}` changed its input ${} ({}): inputs are read-only; write a changed copy into $PIPE_OUT instead",
                p.cmd,
                c.var,
                c.path.file_name().unwrap_or_default().to_string_lossy()
            );
        }
    }
    let mut outputs = Outputs::new();
    for o in &p.outs {
        let path = o.path_in(&out_dir);
        if !path.exists() {
            bail!(
                "command `{}` did not write its declared output `{o}` into $PIPE_OUT",
                p.cmd
            );
        }
        outputs.insert(o.clone(), ctx.store.put_file(&path)?);
    }
    Ok(Produced {
        outputs,
        metrics: json!({}),
        resumed: false,
    })
}

/// Copies a child's output as it comes to stderr and the stage's log file, in bounded chunks;
/// returns the last `keep` bytes (for the error message).
fn stream_output(pipe: Option<impl Read>, log: &Mutex<std::fs::File>, keep: usize) -> Vec<u8> {
    let mut tail = Vec::new();
    let Some(mut pipe) = pipe else { return tail };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let chunk = &buf[..n];
        if let Ok(mut f) = log.lock() {
            let _ = f.write_all(chunk);
        }
        let _ = std::io::stderr().write_all(chunk);
        tail.extend_from_slice(chunk);
        if tail.len() > keep {
            tail.drain(..tail.len() - keep);
        }
    }
    tail
}

/// The last `n` lines of a command's stderr.
fn last_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
