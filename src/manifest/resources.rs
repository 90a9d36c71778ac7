//! A stage's `resources:` (what a Slurm job asks for) and `sbatch_args:` (passed to sbatch
//! verbatim). Neither is part of the stage key: they change where a stage runs, not its outputs.
//!
//! ```yaml
//! train:
//!   use: train_shakespeare_char
//!   resources: {gpus: 1, cpus: 8, mem: 32G, time: "2:00:00", partition: gpu}
//!   sbatch_args: ["--qos=high"]
//! ```

use super::*;
use serde_json::Value;

/// What a stage's Slurm job asks for; `None` leaves it to Slurm's defaults (or, for `gpus`, to
/// [`Resources::for_stage`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Resources {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks_per_node: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u64>,
    /// As sbatch's `--mem` takes it: `16G`, `512M`, or a number of megabytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem: Option<String>,
    /// As sbatch's `--time` takes it: `2:00:00`, `1-12:00:00`, or a number of minutes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
}

pub const RESOURCE_FIELDS: &str = "gpus, nodes, tasks_per_node, cpus, mem, time, partition";

impl Resources {
    pub fn is_empty(&self) -> bool {
        *self == Resources::default()
    }

    /// What a stage's job asks for: its own resources, and one GPU for a stage that runs the
    /// engine (train, evaluate, sample) on a cuda manifest that did not say how many.
    pub fn for_stage(spec: &StageSpec, defaults: &Defaults) -> Resources {
        let mut r = spec.resources.clone();
        let on_gpu = spec.kind.runs_engine() && defaults.device.is_cuda();
        if on_gpu && r.gpus.is_none() {
            r.gpus = Some(1);
        }
        r
    }

    /// Sets one field from a JSON value (a manifest entry or a `--set stage.resources.FIELD=`).
    pub fn set(&mut self, field: &str, v: &Value, o: &Origin) -> Result<()> {
        let count = |min: u64| -> Result<Option<u64>> {
            match v.as_u64() {
                Some(n) if n >= min => Ok(Some(n)),
                _ => Err(err(
                    o.clone(),
                    format!(
                        "`resources.{field}` must be a whole number of at least {min}, found {v}"
                    ),
                    None,
                )),
            }
        };
        // Strings go into `#SBATCH` lines: one word, no shell or line breaks in it.
        let word = |example: &str| -> Result<Option<String>> {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) if n.is_u64() => n.to_string(),
                _ => String::new(),
            };
            if s.is_empty() || !s.chars().all(|c| c.is_ascii_graphic() && c != '\'') {
                return Err(err(
                    o.clone(),
                    format!("`resources.{field}` must be one word, found {v}"),
                    Some(&format!("e.g. `{field}: {example}`")),
                ));
            }
            Ok(Some(s))
        };
        let checked =
            |s: Option<String>, ok: fn(&str) -> bool, what: &str| -> Result<Option<String>> {
                match s {
                    Some(s) if !ok(&s) => Err(err(
                        o.clone(),
                        format!("`resources.{field}` must be {what}, found {s:?}"),
                        None,
                    )),
                    s => Ok(s),
                }
            };
        match field {
            "gpus" => self.gpus = count(0)?,
            "nodes" => self.nodes = count(1)?,
            "tasks_per_node" => self.tasks_per_node = count(1)?,
            "cpus" => self.cpus = count(1)?,
            "mem" => {
                self.mem = checked(
                    word("16G")?,
                    is_mem,
                    "a size: a number with an optional unit K, M, G or T (16G, 512M, 4096)",
                )?
            }
            "time" => {
                self.time = checked(
                    word("\"2:00:00\"")?,
                    is_time,
                    "minutes (30), MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS, as sbatch --time takes it",
                )?
            }
            "partition" => self.partition = word("gpu")?,
            _ => {
                return Err(err(
                    o.clone(),
                    format!("unknown field `{field}` in `resources`"),
                    Some(&format!("resources are: {RESOURCE_FIELDS}")),
                ));
            }
        }
        Ok(())
    }

    /// Merges a YAML `resources:` mapping over `self`, field by field (so a stage can add `time`
    /// to the `gpus` its `use:` definition asks for). Errors name the field's location.
    pub(super) fn merge_yaml(&mut self, v: &Yaml, o: &Origin) -> Result<()> {
        let Some(map) = v.as_mapping() else {
            return Err(err(
                o.clone(),
                format!("`resources` must be a mapping, found {}", describe(v)),
                Some(&format!(
                    "e.g. `resources: {{gpus: 1, time: \"1:00:00\"}}` (fields: {RESOURCE_FIELDS})"
                )),
            ));
        };
        for e in map.iter() {
            let at = Origin {
                file: o.file.clone(),
                line: e.at.0,
                col: e.at.1,
            };
            let Some(field) = e.key.as_str() else {
                return Err(err(
                    at,
                    format!(
                        "`resources` keys are field names, found {}",
                        describe(&e.key)
                    ),
                    Some(&format!("resources are: {RESOURCE_FIELDS}")),
                ));
            };
            let value = param_value(&e.value, field, &at)?;
            self.set(field, &value, &at)?;
        }
        Ok(())
    }
}

/// `sbatch_args`: a list of sbatch options, each written as its own `#SBATCH` line.
pub fn sbatch_args_of(v: &Value, o: &Origin) -> Result<Vec<String>> {
    let help = "e.g. `sbatch_args: [\"--qos=high\", \"--account=proj\"]`";
    let Some(items) = v.as_array() else {
        return Err(err(
            o.clone(),
            format!("`sbatch_args` must be a list of sbatch options, found {v}"),
            Some(help),
        ));
    };
    items
        .iter()
        .map(|x| match x.as_str() {
            Some(s) if s.starts_with('-') && !s.contains(['\n', '\r']) => Ok(s.to_string()),
            _ => Err(err(
                o.clone(),
                format!("`sbatch_args` entries must be options starting with `-`, found {x}"),
                Some(help),
            )),
        })
        .collect()
}

/// sbatch's `--mem`: digits, then at most one unit letter.
fn is_mem(s: &str) -> bool {
    let digits = s.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && s.len() - digits.len() <= 1
}

/// sbatch's `--time`: `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M` or `D-H:M:S` (all numbers).
fn is_time(s: &str) -> bool {
    let number = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (Some(d), r),
        None => (None, s),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    days.is_none_or(number) && parts.iter().all(|p| number(p)) && (1..=3).contains(&parts.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpt::device::Precision;

    fn spec(kind: StageKind, resources: Resources) -> StageSpec {
        StageSpec {
            name: "s".into(),
            kind,
            needs: vec![],
            params: Default::default(),
            origin: Origin::default(),
            param_origins: Default::default(),
            resources,
            sbatch_args: vec![],
        }
    }

    #[test]
    fn engine_stages_on_cuda_ask_for_a_gpu_unless_told() {
        let cuda = Defaults {
            device: Device::Cuda(Precision::F32),
            ..Defaults::default()
        };
        let cpu = Defaults::default();
        let none = Resources::default();
        let gpus = |kind, r: &Resources, d: &Defaults| {
            Resources::for_stage(&spec(kind, r.clone()), d).gpus
        };
        assert_eq!(gpus(StageKind::Train, &none, &cuda), Some(1));
        assert_eq!(gpus(StageKind::Sample, &none, &cuda), Some(1));
        assert_eq!(gpus(StageKind::Prepare, &none, &cuda), None);
        assert_eq!(gpus(StageKind::Train, &none, &cpu), None);
        let four = Resources {
            gpus: Some(4),
            ..Default::default()
        };
        assert_eq!(gpus(StageKind::Train, &four, &cuda), Some(4));
    }

    #[test]
    fn fields_are_checked() {
        let o = Origin::default();
        let mut r = Resources::default();
        r.set("mem", &serde_json::json!("16G"), &o).unwrap();
        r.set("time", &serde_json::json!(30), &o).unwrap();
        assert_eq!(
            (r.mem.as_deref(), r.time.as_deref()),
            (Some("16G"), Some("30"))
        );
        assert!(r.set("nodes", &serde_json::json!(0), &o).is_err());
        for good in ["16G", "512m", "4096"] {
            assert!(r.set("mem", &serde_json::json!(good), &o).is_ok(), "{good}");
        }
        for bad in ["lots", "16GB", "G", "1.5G"] {
            assert!(r.set("mem", &serde_json::json!(bad), &o).is_err(), "{bad}");
        }
        for good in ["30", "30:00", "2:00:00", "1-12", "1-12:30", "1-12:30:00"] {
            assert!(
                r.set("time", &serde_json::json!(good), &o).is_ok(),
                "{good}"
            );
        }
        for bad in ["forever", "1:2:3:4", "-1", "1-", "a-1", "1:x"] {
            assert!(r.set("time", &serde_json::json!(bad), &o).is_err(), "{bad}");
        }
        assert!(r.set("partition", &serde_json::json!("a b"), &o).is_err());
        let e = r.set("gpu", &serde_json::json!(1), &o).unwrap_err();
        assert!(e.to_string().contains("unknown field `gpu`"), "{e}");
        assert!(sbatch_args_of(&serde_json::json!(["--qos=high"]), &o).is_ok());
        assert!(sbatch_args_of(&serde_json::json!(["qos=high"]), &o).is_err());
    }
}
