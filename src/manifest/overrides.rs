//! `--set stage.key=value`: parsing an override, and applying it to the defaults or a stage.

use super::*;
use anyhow::Result;
use std::path::Path;

/// One `--set target.key=value` override.
#[derive(Clone, Debug)]
pub struct Override {
    pub target: Option<String>,
    pub key: String,
    pub value: serde_json::Value,
    pub raw: String,
}

pub fn parse_override(s: &str) -> Result<Override> {
    let Some((lhs, rhs)) = s.split_once('=') else {
        return Err(err(
            Origin {
                file: "--set".into(),
                ..Default::default()
            },
            format!("`{s}` is not of the form stage.key=value"),
            Some("for example --set train.max_iters=500 or --set device=cpu"),
        ));
    };
    // The value is parsed as YAML so numbers and booleans get their types ("500" -> 500).
    let set = Origin {
        file: format!("--set {s}"),
        ..Default::default()
    };
    let key = lhs.rsplit('.').next().unwrap_or(lhs);
    let value = match from_yaml::<Yaml>(rhs) {
        Ok(v) => param_value(&v, key, &set)?,
        Err(_) => serde_json::Value::String(rhs.to_string()),
    };
    let value =
        if value.is_null() && !rhs.trim().is_empty() && rhs.trim() != "null" && rhs.trim() != "~" {
            serde_json::Value::String(rhs.to_string())
        } else {
            value
        };
    let (target, key) = match lhs.split_once('.') {
        Some((t, k)) => (Some(t.to_string()), k.to_string()),
        None => (None, lhs.to_string()),
    };
    Ok(Override {
        target,
        key,
        value,
        raw: s.to_string(),
    })
}

/// The command line's `--set` overrides, in order.
pub(super) fn apply_overrides(
    overrides: &[Override],
    defaults: &mut DefaultsText,
    stages: &mut [StageSpec],
) -> Result<()> {
    let names: Vec<String> = stages.iter().map(|s| s.name.clone()).collect();
    for o in overrides {
        let set = Origin {
            file: format!("--set {}", o.raw),
            line: 0,
            col: 0,
        };
        match &o.target {
            Some(t) if t == "defaults" => set_default(defaults, &o.key, &o.value, &set)?,
            Some(t) => {
                let Some(s) = stages.iter_mut().find(|s| &s.name == t) else {
                    return Err(err(
                        set,
                        format!("there is no stage named `{t}`"),
                        Some(&format!("stages in this manifest: {}", names.join(", "))),
                    ));
                };
                if matches!(o.key.as_str(), "kind" | "needs" | "use") {
                    return Err(err(
                        set,
                        format!("`{}` cannot be overridden from the command line", o.key),
                        Some("edit the manifest instead"),
                    ));
                }
                if let Some(field) = o.key.strip_prefix("resources.") {
                    s.resources.set(field, &o.value, &set)?;
                    continue;
                }
                if o.key == "resources" {
                    let Some(fields) = o.value.as_object() else {
                        return Err(err(
                            set,
                            "`resources` must be a mapping",
                            Some("e.g. --set 'train.resources={gpus: 2, time: 4:00:00}'"),
                        ));
                    };
                    for (field, v) in fields {
                        s.resources.set(field, v, &set)?;
                    }
                    continue;
                }
                if o.key == "sbatch_args" {
                    s.sbatch_args = sbatch_args_of(&o.value, &set)?;
                    continue;
                }
                s.params
                    .insert(o.key.clone(), absolute_if_path(&o.key, o.value.clone()));
                s.param_origins.insert(o.key.clone(), set);
            }
            None if is_default_key(&o.key) => set_default(defaults, &o.key, &o.value, &set)?,
            None => {
                return Err(err(
                    set,
                    format!(
                        "`{}` names neither a default (device, seed, dtype) nor a stage parameter",
                        o.key
                    ),
                    Some("use stage.key=value, e.g. --set train.max_iters=500"),
                ));
            }
        }
    }
    Ok(())
}

/// Parameters holding file paths. Relative paths in a manifest are relative to the manifest's
/// folder; relative paths given with `--set` are relative to the current directory, so they are made
/// absolute here.
pub const PATH_KEYS: [&str; 3] = ["path", "hf_dir", "to"];

pub(super) fn absolute_if_path(key: &str, v: serde_json::Value) -> serde_json::Value {
    let file_arg = v
        .as_str()
        .and_then(|s| s.strip_prefix("FILE:"))
        .filter(|p| Path::new(p).is_relative());
    if let (Some(p), Ok(cwd)) = (file_arg, std::env::current_dir()) {
        return serde_json::Value::String(format!("FILE:{}", cwd.join(p).display()));
    }
    match (&v, PATH_KEYS.contains(&key)) {
        (serde_json::Value::String(s), true) if Path::new(s).is_relative() => {
            match std::env::current_dir() {
                Ok(cwd) => serde_json::Value::String(cwd.join(s).display().to_string()),
                Err(_) => v,
            }
        }
        _ => v,
    }
}

pub(super) fn is_default_key(k: &str) -> bool {
    matches!(k, "device" | "seed" | "dtype")
}

pub(super) fn set_default(
    d: &mut DefaultsText,
    key: &str,
    v: &serde_json::Value,
    origin: &Origin,
) -> Result<()> {
    match key {
        "device" | "dtype" => {
            let s = v
                .as_str()
                .ok_or_else(|| err(origin.clone(), format!("`{key}` must be a string"), None))?
                .to_string();
            if key == "device" {
                d.device = s
            } else {
                d.dtype = s
            }
        }
        "seed" => {
            d.seed = v.as_u64().ok_or_else(|| {
                err(
                    origin.clone(),
                    "`seed` must be a non-negative integer",
                    None,
                )
            })?
        }
        _ => {
            return Err(err(
                origin.clone(),
                format!("unknown default `{key}`"),
                Some("defaults are device, seed and dtype"),
            ));
        }
    }
    Ok(())
}
