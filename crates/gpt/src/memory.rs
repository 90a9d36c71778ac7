//! Memory checks made before a model or its activations are allocated, so that sizes the machine
//! cannot hold are a stage error that gives the numbers, rather than an allocation failure that
//! aborts the process. The estimate itself is
//! [`GptConfig::footprint`](super::config::GptConfig::footprint).

use anyhow::{Result, bail};

/// What a stage does with a model, which decides the buffers it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// Holding the parameters (init, import).
    Load,
    /// Training on (batch, block_size) windows: gradients, AdamW moments and every layer's
    /// activations as well.
    Train { batch: usize },
    /// Evaluating (batch, t) windows: one layer's activations at a time.
    Eval { batch: usize, t: usize },
    /// Sampling `parallel` sequences at once, each with a KV cache of block_size positions.
    Sample { parallel: usize },
}

/// Bytes a stage will hold, by what holds them; f64, so absurd sizes cannot overflow.
#[derive(Clone, Debug, PartialEq)]
pub struct Footprint {
    /// The model's buffers, e.g. `("parameters", 4.0e8)`.
    pub model: Vec<(&'static str, f64)>,
    /// Activations (or KV caches) and what they are for, e.g. `(3.1e9, "batch 12 x block 1024")`.
    pub activations: Option<(f64, String)>,
}

impl Footprint {
    pub fn total(&self) -> f64 {
        self.model.iter().map(|(_, b)| b).sum::<f64>()
            + self.activations.as_ref().map_or(0.0, |a| a.0)
    }

    /// "the model needs 12.0 GB for parameters (4.0 GB) and gradients (8.0 GB), and 1.0 GB for
    /// activations (batch 12 x block 64)".
    fn describe(&self) -> String {
        let mut s = String::new();
        if !self.model.is_empty() {
            let model: f64 = self.model.iter().map(|(_, b)| b).sum();
            let parts: Vec<String> = if self.model.len() == 1 {
                vec![self.model[0].0.to_string()]
            } else {
                self.model
                    .iter()
                    .map(|(what, b)| format!("{what} ({})", human_bytes(*b)))
                    .collect()
            };
            s = format!(
                "the model needs {} for {}",
                human_bytes(model),
                join_and(&parts)
            );
        }
        if let Some((bytes, what)) = &self.activations {
            if !s.is_empty() {
                s.push_str(", and ");
            }
            s.push_str(&format!("{} for activations ({what})", human_bytes(*bytes)));
        }
        s
    }
}

/// "a", "a and b", "a, b and c".
fn join_and(parts: &[String]) -> String {
    match parts.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        Some((last, _)) => last.clone(),
        None => String::new(),
    }
}

/// Decimal units, one decimal: "52.3 GB".
pub fn human_bytes(b: f64) -> String {
    let units = [(1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")];
    match units.iter().find(|(u, _)| b >= *u) {
        Some((u, name)) => format!("{:.1} {name}", b / u),
        None => format!("{b:.0} B"),
    }
}

/// A memory's size and how much of it can be had now, in bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Memory {
    pub total: f64,
    pub available: f64,
}

impl Memory {
    /// This machine's RAM from /proc/meminfo (`None` where there is none, e.g. not Linux).
    pub fn host() -> Option<Memory> {
        parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)
    }
}

/// MemTotal and MemAvailable (MemFree on kernels older than 3.14), given in kB.
fn parse_meminfo(text: &str) -> Option<Memory> {
    let field = |name: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024.0)
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:").or_else(|| field("MemFree:"))?;
    Some(Memory { total, available })
}

/// The rule: refuse what needs more than the memory's *available* part (MemAvailable on the host,
/// the free memory on a GPU). That is what can be had without swapping or the OOM killer; the
/// estimate counts only the big buffers, so it is a lower bound: what is refused can never fit,
/// and what passes may still be tight. Without a reading (`None`), only sizes beyond the address
/// space are refused, since allocating them would abort.
pub fn ensure_fits(need: &Footprint, mem: Option<Memory>, place: &str) -> Result<()> {
    let bytes = need.total();
    let parts = need.model.len() + usize::from(need.activations.is_some());
    let mut what = need.describe();
    if parts > 1 {
        what.push_str(&format!(", {} in all", human_bytes(bytes)));
    }
    match mem {
        Some(m) if bytes > m.available => bail!(
            "not enough memory: {what}; {place} has {} of memory, {} of it available. Reduce {REDUCE}",
            human_bytes(m.total),
            human_bytes(m.available)
        ),
        None if bytes > isize::MAX as f64 => {
            bail!("not enough memory: {what}, more than can be addressed. Reduce {REDUCE}")
        }
        _ => Ok(()),
    }
}

/// What to shrink, as the refusal suggests it.
const REDUCE: &str = "n_embd, n_layer, block_size or batch_size";

/// Checks `need` against this machine's memory. Which parts of a footprint live on the host
/// depends on the device: `device::check_host` decides, so this module never imports the device.
pub fn check_host(need: &Footprint) -> Result<()> {
    ensure_fits(need, Memory::host(), "this machine")
}

/// Checks `need` against a GPU's free and total memory (the CUDA engine reads them).
pub fn check_gpu(need: &Footprint, free: usize, total: usize) -> Result<()> {
    let mem = Memory {
        total: total as f64,
        available: free as f64,
    };
    ensure_fits(need, Some(mem), "the GPU")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Gelu;
    use crate::config::GptConfig;

    fn cfg(n_embd: usize, block_size: usize) -> GptConfig {
        GptConfig {
            n_layer: 4,
            n_head: 4,
            n_embd,
            block_size,
            vocab_size: 65,
            bias: false,
            dropout: 0.0,
            gelu: Gelu::Erf,
        }
    }

    const MEM: Memory = Memory {
        total: 24e9,
        available: 20e9,
    };

    #[test]
    fn absurd_sizes_are_refused_with_the_numbers() {
        let huge = cfg(40_000, 64).footprint(Work::Train { batch: 12 });
        let e = ensure_fits(&huge, Some(MEM), "this machine")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("for parameters (") && e.contains("AdamW moments ("),
            "{e}"
        );
        assert!(
            e.contains("24.0 GB of memory, 20.0 GB of it available"),
            "{e}"
        );
        assert!(e.contains("Reduce n_embd"), "{e}");
        let long = cfg(128, 1_000_000_000_000).footprint(Work::Load);
        let e = ensure_fits(&long, Some(MEM), "this machine")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the model needs 512.0 TB for parameters; this machine"),
            "{e}"
        );
        // Beyond the address space: refused without a reading too.
        let absurd = cfg(1 << 20, 1 << 50).footprint(Work::Load);
        let e = ensure_fits(&absurd, None, "this machine")
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than can be addressed"), "{e}");
    }

    #[test]
    fn a_small_model_fits() {
        let small = cfg(128, 64).footprint(Work::Train { batch: 12 });
        assert!(small.total() < 1e8);
        ensure_fits(&small, Some(MEM), "this machine").unwrap();
        ensure_fits(&small, None, "this machine").unwrap();
    }

    #[test]
    fn meminfo_is_read_in_kb() {
        let text = "MemTotal:       24683656 kB\nMemFree:        22950400 kB\nMemAvailable:   24221152 kB\n";
        let m = parse_meminfo(text).unwrap();
        assert_eq!(m.total, 24683656.0 * 1024.0);
        assert_eq!(m.available, 24221152.0 * 1024.0);
        assert_eq!(
            parse_meminfo("MemTotal: 2048 kB\nMemFree: 1024 kB\n")
                .unwrap()
                .available,
            1024.0 * 1024.0
        );
        assert!(parse_meminfo("nonsense").is_none());
    }

    #[test]
    fn bytes_read_like_a_person_writes_them() {
        assert_eq!(human_bytes(52.3e9), "52.3 GB");
        assert_eq!(human_bytes(1.28e14), "128.0 TB");
        assert_eq!(human_bytes(512.0), "512 B");
    }
}
