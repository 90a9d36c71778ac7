//! Stage keys: what decides whether a stage's cached outputs can be reused.
//!
//! A key is the blake3 hash of a canonical JSON document (object keys sorted, numbers normalised by
//! parsing into typed parameters first, so `1e-3` and `0.001` are the same key) holding:
//!
//! - `format`: [`ENGINE_FORMAT`], bumped whenever the engine or a stage would produce different bytes
//!   from the same inputs (so old cache entries stop matching instead of being wrongly reused);
//!   `tests/golden.rs` fails when a tiny run's output hashes change while it stays the same;
//! - `kind`: the stage kind;
//! - `device`: cpu and cuda results differ in the last bits, so they are different outputs (with
//!   `dtype: tf32` the device reads `cuda:tf32`). Stages that never use the engine (prepare,
//!   init, export, command) read `any`, so switching devices does not redo them;
//! - `params`: the stage's typed parameters *that change its output* (defaults filled in, so an
//!   omitted parameter and its default value are the same key);
//! - `sources`: content hashes of files the stage reads from outside the store (the prepare stage's
//!   text or corpus files, a command's `deps`, a `FILE:` prompt or evaluation text, imported GPT-2
//!   weights, the checkpoint an `init from: resume` names), never their modification times;
//! - `inputs`: the output hashes of the stages it needs, by role (`data`, `model`) or, for
//!   `command` stages, by stage name.
//!
//! Inputs are hashes of *outputs*, not keys of upstream stages: if an upstream stage reruns and
//! produces the same bytes, everything downstream stays cached (early cutoff).
//!
//! # What the key does not capture
//!
//! A cached output is reused whenever the key matches, so everything below can change without a
//! rerun. Some of it is deliberate (it does not change the bytes); the rest is a limit to know:
//!
//! - **The `pipe` binary itself.** A new engine or stage implementation is noticed only through
//!   [`ENGINE_FORMAT`]; `tests/golden.rs` enforces the bump for the bytes a tiny pipeline of every
//!   stage kind but `command` makes (CPU, char tokenizer), not for every path through the code.
//! - **A command stage's environment and undeclared files.** Its key is `cmd`, `outs`, the content
//!   of its `deps` and its inputs. Environment variables (`PATH`, `HOME`, anything the command
//!   reads), the programs it calls, and any file it reads that is not listed in `deps` are not
//!   keyed: declare them in `deps`, or change `cmd`, to force a rerun.
//! - **System libraries**: libc, and on a GPU the driver, cuBLAS and NVRTC versions. GPU results
//!   are not bit-stable from run to run anyway (the embedding gradient uses atomics).
//! - **The CPU's ISA path** (`gpt::isa`: AVX-512, AVX2 or portable), deliberately, as a limit to
//!   know: the GEMMs' micro-kernels accumulate in a different order on each path, so an engine
//!   stage's bytes can differ between an AVX-512 and an AVX2 machine (or an AVX-512 machine with a
//!   `--no-default-features` build) in the last bits, and a store shared between them reuses
//!   either's outputs for both. Keying it would recompute every engine stage on each kind of
//!   machine for differences of rounding. `pipe show` says which path computed a stage (`cpu_isa`
//!   in its metrics), and `tests/golden.rs` keeps one table per path.
//! - **The thread count** (`--threads`), deliberately: CPU results are bit-identical across thread
//!   counts by construction (gemm calls with k in fixed chunks, reductions in fixed blocks added in
//!   order, counter-based dropout).
//! - **`keep_checkpoints`** (train), deliberately: which intermediate checkpoints are retained,
//!   never an output's bytes. (`log_interval` is keyed since `ENGINE_FORMAT` 2: metrics.json
//!   records every `log_interval`-th iteration's loss, learning rate and gradient norm; and a
//!   checkpoint's metadata holds the whole training config, `log_interval` included.)
//! - **`resources` and `sbatch_args`**, deliberately: they say where a Slurm job runs and what it
//!   may use (GPUs, memory, time, partition), not what it computes; the executor (`local` or
//!   `slurm`) is not keyed either, so a stage run on Slurm is cached for a local run and back.
//! - **Stage names and file paths, mostly.** Renaming a stage or moving a file must not recompute
//!   it: the stage's own name is never keyed, an input is keyed by its role, and a file by its
//!   content. The exceptions, keyed by name or path as well as by content: export `to` (its
//!   resolved path: asking for a copy somewhere new writes it there), a command's `deps` (the paths
//!   as written, with their hashes), a command's inputs (by the needed stage's name, which is its
//!   `$PIPE_IN_*` variable), `FILE:` values of `start`/`text` (the string as written is a
//!   parameter), and a corpus's files (by their names under the corpus root, which fix the
//!   document order).
//! - **Where sources came from**: a text's `url`, GPT-2's `hf_dir` or `revision`, a checkpoint's
//!   `RUN_ID/STAGE` name; only the content they resolve to.
//! - **The wall clock**: no time or date enters any key, so outputs must not depend on it (the
//!   `seconds`, ms/iter and tokens/s a run measures are metrics in its action record and run
//!   log, or in the run folder's curves and TensorBoard files, not in any output's bytes).

use crate::hash::Key;
use serde_json::{Value, json};

/// Bump when any stage's output for the same key material would change. 2: a train stage's
/// metrics.json has `steps` (every `log_interval` iterations), its loss.svg draws them.
pub const ENGINE_FORMAT: u32 = 3;

pub fn material(kind: &str, device: &str, params: Value, sources: Value, inputs: Value) -> Value {
    json!({ "format": ENGINE_FORMAT, "kind": kind, "device": device, "params": params, "sources": sources, "inputs": inputs })
}

pub fn key_of(material: &Value) -> Key {
    // serde_json's Map is a BTreeMap (no preserve_order feature), so serialisation is canonical.
    blake3::hash(&serde_json::to_vec(material).expect("JSON serialises")).into()
}

/// The key a train stage's progress record (its resume points) is kept under: its key without
/// the `data_parallel` part, so the same training at another number of ranks continues from the
/// same checkpoints (which are independent of the world size). One rank's is its key.
pub fn progress_key(material: &Value) -> Key {
    let mut m = material.clone();
    if let Some(p) = m.get_mut("params").and_then(Value::as_object_mut) {
        p.remove("data_parallel");
    }
    key_of(&m)
}

/// Human-readable differences between two key materials, for `pipe status`.
pub fn explain(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    diff("", old, new, &mut out);
    out
}

fn diff(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    Some(vb) => diff(&p, va, vb, out),
                    None => out.push(format!("{p} removed (was {})", short(va))),
                }
            }
            for (k, vb) in b {
                if !a.contains_key(k) {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    out.push(format!("{p} added ({})", short(vb)));
                }
            }
        }
        _ if old != new => out.push(format!("{path}: {} -> {}", short(old), short(new))),
        _ => {}
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(57).map_or(s.len(), |x| x.0)]
        )
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_canonical_and_diffs_name_the_change() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": 2.0, "x": "s"}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a": {"x": "s", "y": 2.0}, "b": 1}"#).unwrap();
        assert_eq!(key_of(&a), key_of(&b));
        let c: Value =
            serde_json::from_str(r#"{"a": {"x": "s", "y": 3.0}, "b": 1, "c": true}"#).unwrap();
        assert_ne!(key_of(&a), key_of(&c));
        assert_eq!(
            explain(&a, &c),
            vec!["a.y: 2.0 -> 3.0".to_string(), "c added (true)".to_string()]
        );
    }
}
