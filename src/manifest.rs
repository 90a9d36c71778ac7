//! Manifests: YAML files declaring a pipeline's stages. This module turns one (plus the reusable
//! `stages/*.yaml` definitions it `use:`s and the command line's `--set` overrides) into a
//! [`Manifest`]: every stage with its kind, dependencies and merged parameters. Every error names
//! the file, line and column, what was expected, and how to fix it.
//!
//! ```yaml
//! name: train_shakespeare_char
//! defaults: {device: cpu, seed: 1337, dtype: float32}
//! stages:
//!   data:
//!     use: prepare_shakespeare_char      # stages/prepare_shakespeare_char.yaml
//!   model:
//!     kind: init
//!     needs: [data]
//!     from: scratch
//! ```

use crate::gpt::device::Device;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    Prepare,
    Init,
    Train,
    Evaluate,
    Sample,
    Export,
    Command,
}

pub const KINDS: &str = "prepare, init, train, evaluate, sample, export, command";

impl StageKind {
    pub fn parse(s: &str) -> Option<StageKind> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }
    pub fn name(self) -> &'static str {
        match self {
            StageKind::Prepare => "prepare",
            StageKind::Init => "init",
            StageKind::Train => "train",
            StageKind::Evaluate => "evaluate",
            StageKind::Sample => "sample",
            StageKind::Export => "export",
            StageKind::Command => "command",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Defaults {
    pub device: String,
    pub seed: u64,
    pub dtype: String,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            device: "cpu".into(),
            seed: 1337,
            dtype: "float32".into(),
        }
    }
}

/// Where a value came from, for error messages.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct Origin {
    pub file: String,
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file)
        } else {
            write!(f, "{}:{}:{}", self.file, self.line, self.col)
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StageSpec {
    pub name: String,
    pub kind: StageKind,
    pub needs: Vec<String>,
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Where the stage and each of its parameters were declared.
    pub origin: Origin,
    pub param_origins: BTreeMap<String, Origin>,
}

impl StageSpec {
    /// The origin of parameter `key` (or of the stage itself).
    pub fn origin_of(&self, key: &str) -> &Origin {
        self.param_origins.get(key).unwrap_or(&self.origin)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub name: String,
    /// The manifest file, and the folder that relative paths in it are resolved against.
    pub path: PathBuf,
    pub base_dir: PathBuf,
    pub defaults: Defaults,
    pub stages: Vec<StageSpec>,
}

impl Manifest {
    pub fn stage(&self, name: &str) -> Option<&StageSpec> {
        self.stages.iter().find(|s| s.name == name)
    }
}

/// A manifest error: where, what, and how to fix it.
#[derive(Debug)]
pub struct ManifestError {
    pub origin: Origin,
    pub message: String,
    pub help: Option<String>,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.message)?;
        if let Some(h) = &self.help {
            write!(f, "\n  help: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestError {}

pub fn err(origin: Origin, message: impl Into<String>, help: Option<&str>) -> anyhow::Error {
    ManifestError {
        origin,
        message: message.into(),
        help: help.map(str::to_string),
    }
    .into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    defaults: Option<RawDefaults>,
    stages: serde_yaml::Mapping,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    device: Option<String>,
    seed: Option<u64>,
    dtype: Option<String>,
}

/// Line numbers of the stages and their keys in a block-style YAML manifest.
/// (line, column) of a key.
type Pos = (usize, usize);

#[derive(Default)]
struct Lines {
    /// Stage name -> its position and the positions of its keys.
    stages: BTreeMap<String, (usize, usize, BTreeMap<String, Pos>)>,
    top: BTreeMap<String, (usize, usize)>,
}

fn indent(l: &str) -> usize {
    l.len() - l.trim_start().len()
}

fn key_of(l: &str) -> Option<String> {
    let t = l.trim_start().trim_start_matches("- ");
    let k = t.split(':').next()?;
    (t.contains(':') && !k.is_empty() && !k.contains(' '))
        .then(|| k.trim_matches(|c| c == '"' || c == '\'').to_string())
}

fn scan_lines(text: &str) -> Lines {
    let mut out = Lines::default();
    let mut in_stages = false;
    let (mut stage_indent, mut key_indent) = (None, None);
    let mut current: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let ind = indent(line);
        if ind == 0 {
            in_stages = t.starts_with("stages:");
            if let Some(k) = key_of(line) {
                out.top.insert(k, (i + 1, 1));
            }
            current = None;
            continue;
        }
        if !in_stages {
            continue;
        }
        let si = *stage_indent.get_or_insert(ind);
        if ind == si {
            if let Some(k) = key_of(line) {
                out.stages
                    .insert(k.clone(), (i + 1, ind + 1, BTreeMap::new()));
                current = Some(k);
                key_indent = None;
            }
        } else if let Some(s) = &current {
            let ki = *key_indent.get_or_insert(ind);
            if let Some(k) = key_of(line).filter(|_| ind == ki) {
                out.stages
                    .get_mut(s)
                    .expect("current stage recorded")
                    .2
                    .insert(k, (i + 1, ind + 1));
            }
        }
    }
    out
}

fn yaml_err(file: &str, e: &serde_yaml::Error, help: Option<&str>) -> anyhow::Error {
    let origin = match e.location() {
        Some(l) => Origin {
            file: file.to_string(),
            line: l.line(),
            col: l.column(),
        },
        None => Origin {
            file: file.to_string(),
            line: 0,
            col: 0,
        },
    };
    let msg = e.to_string();
    // serde_yaml appends " at line X column Y"; the origin already says it.
    let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
    err(origin, msg, help)
}

/// A UTF-8 byte-order mark (as some editors write) is not part of the YAML.
fn without_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// Whether a YAML value holds `.nan` or `.inf` anywhere (JSON, and so a key, cannot hold them).
fn has_non_finite(v: &serde_yaml::Value) -> bool {
    match v {
        serde_yaml::Value::Number(n) => n.as_f64().is_some_and(|f| !f.is_finite()),
        serde_yaml::Value::Sequence(s) => s.iter().any(has_non_finite),
        serde_yaml::Value::Mapping(m) => m.values().any(has_non_finite),
        serde_yaml::Value::Tagged(t) => has_non_finite(&t.value),
        _ => false,
    }
}

/// A parameter's YAML value as JSON; `.nan` and `.inf` are refused where they are written.
fn param_value(v: &serde_yaml::Value, key: &str, origin: &Origin) -> Result<serde_json::Value> {
    if has_non_finite(v) {
        return Err(err(
            origin.clone(),
            format!("`{key}` is not a finite number (.nan and .inf are not accepted)"),
            Some("give a finite value"),
        ));
    }
    Ok(yaml_to_json(v))
}

fn yaml_to_json(v: &serde_yaml::Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// Finds `stages/<name>.yaml` for `use: name`: next to the manifest, or one folder up (so
/// `pipelines/x.yaml` finds the repository's `stages/`).
fn find_stage_def(base_dir: &Path, name: &str) -> Option<PathBuf> {
    [base_dir.join("stages"), base_dir.join("..").join("stages")]
        .into_iter()
        .map(|d| d.join(format!("{name}.yaml")))
        .find(|p| p.exists())
}

pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// One `--set target.key=value` override.
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
    let value = match serde_yaml::from_str::<serde_yaml::Value>(rhs) {
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

pub fn load(path: &Path, overrides: &[Override]) -> Result<Manifest> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        err(
            Origin {
                file: file.clone(),
                ..Default::default()
            },
            format!("cannot read the manifest: {e}"),
            Some("check the path; shipped manifests are in pipelines/"),
        )
    })?;
    let text = without_bom(&text);
    let raw: RawManifest = serde_yaml::from_str(text).map_err(|e| yaml_err(&file, &e, Some("a manifest has `name`, optional `defaults` (device, seed, dtype) and `stages` (a map of stage name to stage)")))?;
    let lines = scan_lines(text);
    let at = |line: usize, col: usize| Origin {
        file: file.clone(),
        line,
        col,
    };
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base_dir = if base_dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base_dir
    };
    // Absolute, so `pipe resume` works from any directory.
    let base_dir = base_dir.canonicalize().unwrap_or(base_dir);

    if !valid_name(&raw.name) {
        let (l, c) = lines.top.get("name").copied().unwrap_or((0, 0));
        return Err(err(
            at(l, c),
            format!("invalid manifest name {:?}", raw.name),
            Some("use letters, digits, `_` and `-` only (it names files in the store)"),
        ));
    }
    let d = raw.defaults.unwrap_or_default();
    let mut defaults = Defaults::default();
    if let Some(v) = d.device {
        defaults.device = v;
    }
    if let Some(v) = d.seed {
        defaults.seed = v;
    }
    if let Some(v) = d.dtype {
        defaults.dtype = v;
    }
    if raw.stages.is_empty() {
        let (l, c) = lines.top.get("stages").copied().unwrap_or((0, 0));
        return Err(err(
            at(l, c),
            "`stages` is empty",
            Some("declare at least one stage, e.g. `data: {kind: prepare, ...}`"),
        ));
    }

    let mut stages = Vec::new();
    for (k, v) in &raw.stages {
        let Some(name) = k.as_str() else {
            return Err(err(
                at(lines.top.get("stages").map_or(0, |x| x.0), 1),
                format!("stage names must be strings, found {k:?}"),
                None,
            ));
        };
        let (sl, sc, key_lines) =
            lines
                .stages
                .get(name)
                .cloned()
                .unwrap_or((0, 0, BTreeMap::new()));
        let origin = at(sl, sc);
        if !valid_name(name) {
            return Err(err(
                origin,
                format!("invalid stage name {name:?}"),
                Some("use letters, digits, `_` and `-` only"),
            ));
        }
        let Some(body) = v.as_mapping() else {
            return Err(err(
                origin,
                format!(
                    "stage `{name}` must be a mapping of fields, found {}",
                    describe(v)
                ),
                Some("e.g. `train: {kind: train, needs: [model, data]}`"),
            ));
        };
        let mut params = serde_json::Map::new();
        let mut param_origins = BTreeMap::new();
        let mut kind: Option<(String, Origin)> = None;
        let mut needs: Vec<String> = Vec::new();
        let key_origin = |key: &str| {
            key_lines
                .get(key)
                .map(|&(l, c)| at(l, c))
                .unwrap_or_else(|| origin.clone())
        };

        // `use:` first, so the stage's own fields override the definition's.
        if let Some(u) = body.get("use") {
            let o = key_origin("use");
            let Some(uname) = u.as_str() else {
                return Err(err(
                    o,
                    format!(
                        "`use` must be the name of a stage definition, found {}",
                        describe(u)
                    ),
                    Some("e.g. `use: train_char` for stages/train_char.yaml"),
                ));
            };
            let Some(def_path) = find_stage_def(&base_dir, uname) else {
                return Err(err(
                    o,
                    format!(
                        "no stage definition `{uname}`: looked for stages/{uname}.yaml next to the manifest and one folder up"
                    ),
                    Some("check the name against the files in stages/"),
                ));
            };
            let def_file = def_path.display().to_string();
            let def_text = std::fs::read_to_string(&def_path).map_err(|e| {
                err(
                    o.clone(),
                    format!("cannot read the stage definition {def_file}: {e}"),
                    Some("a stage definition is a YAML file stages/<name>.yaml"),
                )
            })?;
            let def_text = without_bom(&def_text);
            let def: serde_yaml::Mapping = serde_yaml::from_str(def_text).map_err(|e| {
                yaml_err(
                    &def_file,
                    &e,
                    Some("a stage definition is a mapping with `kind` and parameters"),
                )
            })?;
            let def_lines = scan_lines(def_text);
            for (dk, dv) in &def {
                let dk = dk.as_str().unwrap_or_default().to_string();
                let (l, c) = def_lines.top.get(&dk).copied().unwrap_or((0, 0));
                let o = Origin {
                    file: def_file.clone(),
                    line: l,
                    col: c,
                };
                match dk.as_str() {
                    "kind" => kind = Some((dv.as_str().unwrap_or_default().to_string(), o)),
                    "description" => {}
                    "needs" | "use" => {
                        return Err(err(
                            o,
                            format!("`{dk}` is not allowed in a stage definition"),
                            Some("declare dependencies in the manifest that uses it"),
                        ));
                    }
                    _ => {
                        params.insert(dk.clone(), param_value(dv, &dk, &o)?);
                        param_origins.insert(dk, o);
                    }
                }
            }
        }
        for (fk, fv) in body {
            let Some(fk) = fk.as_str() else { continue };
            let o = key_origin(fk);
            match fk {
                "use" | "description" => {}
                "kind" => {
                    let Some(s) = fv.as_str() else {
                        return Err(err(
                            o,
                            format!("`kind` must be a string, found {}", describe(fv)),
                            Some(&format!("one of: {KINDS}")),
                        ));
                    };
                    kind = Some((s.to_string(), o));
                }
                "needs" => {
                    param_origins.insert("needs".to_string(), o.clone());
                    needs = match fv {
                        serde_yaml::Value::String(s) => vec![s.clone()],
                        serde_yaml::Value::Sequence(seq) => seq
                            .iter()
                            .map(|x| {
                                x.as_str().map(str::to_string).ok_or_else(|| {
                                    err(
                                        o.clone(),
                                        format!(
                                            "`needs` entries must be stage names, found {}",
                                            describe(x)
                                        ),
                                        None,
                                    )
                                })
                            })
                            .collect::<Result<_>>()?,
                        other => {
                            return Err(err(
                                o,
                                format!(
                                    "`needs` must be a list of stage names, found {}",
                                    describe(other)
                                ),
                                Some("e.g. `needs: [model, data]`"),
                            ));
                        }
                    }
                }
                _ => {
                    params.insert(fk.to_string(), param_value(fv, fk, &o)?);
                    param_origins.insert(fk.to_string(), o);
                }
            }
        }
        let Some((kind_name, kind_origin)) = kind else {
            return Err(err(
                origin,
                format!("stage `{name}` has no `kind`"),
                Some(&format!(
                    "add `kind:` (one of: {KINDS}) or `use:` a definition from stages/"
                )),
            ));
        };
        let Some(kind) = StageKind::parse(&kind_name) else {
            return Err(err(
                kind_origin,
                format!("unknown stage kind `{kind_name}`"),
                Some(&format!("expected one of: {KINDS}")),
            ));
        };
        stages.push(StageSpec {
            name: name.to_string(),
            kind,
            needs,
            params,
            origin,
            param_origins,
        });
    }

    let names: Vec<String> = stages.iter().map(|s| s.name.clone()).collect();
    for o in overrides {
        let set = Origin {
            file: format!("--set {}", o.raw),
            line: 0,
            col: 0,
        };
        match &o.target {
            Some(t) if t == "defaults" => set_default(&mut defaults, &o.key, &o.value, &set)?,
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
                s.params
                    .insert(o.key.clone(), absolute_if_path(&o.key, o.value.clone()));
                s.param_origins.insert(o.key.clone(), set);
            }
            None if is_default_key(&o.key) => set_default(&mut defaults, &o.key, &o.value, &set)?,
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
    let top = |k: &str| {
        lines
            .top
            .get(k)
            .map(|&(l, c)| at(l, c))
            .unwrap_or_else(|| at(0, 0))
    };
    if defaults.device == "cuda" && !cfg!(feature = "cuda") {
        return Err(err(
            top("defaults"),
            "device `cuda`: this pipe was built without CUDA support",
            Some(
                "rebuild with `cargo build --release --features cuda` (needs no CUDA toolkit), or use device: cpu (--set device=cpu)",
            ),
        ));
    }
    if let Err(e) = Device::from_defaults(&defaults.device, &defaults.dtype) {
        return Err(err(top("defaults"), e.message, Some(e.help)));
    }
    for s in &stages {
        let o = s.param_origins.get("needs").cloned().unwrap_or_else(|| {
            lines
                .stages
                .get(&s.name)
                .and_then(|x| x.2.get("needs"))
                .map(|&(l, c)| at(l, c))
                .unwrap_or_else(|| s.origin.clone())
        });
        for n in &s.needs {
            if n == &s.name {
                return Err(err(
                    o,
                    format!("stage `{}` needs itself", s.name),
                    Some("remove it from `needs`"),
                ));
            }
            if !names.contains(n) {
                return Err(err(
                    o,
                    format!(
                        "stage `{}` needs `{n}`, which is not a stage in this manifest",
                        s.name
                    ),
                    Some(&format!("stages: {}", names.join(", "))),
                ));
            }
        }
    }
    Ok(Manifest {
        name: raw.name,
        path: path.to_path_buf(),
        base_dir,
        defaults,
        stages,
    })
}

/// Parameters holding file paths. Relative paths in a manifest are relative to the manifest's
/// folder; relative paths given with `--set` are relative to the current directory, so they are made
/// absolute here.
pub const PATH_KEYS: [&str; 3] = ["path", "hf_dir", "to"];

fn absolute_if_path(key: &str, v: serde_json::Value) -> serde_json::Value {
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

fn is_default_key(k: &str) -> bool {
    matches!(k, "device" | "seed" | "dtype")
}

fn set_default(d: &mut Defaults, key: &str, v: &serde_json::Value, origin: &Origin) -> Result<()> {
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

pub fn describe(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::Null => "nothing (null)".into(),
        serde_yaml::Value::Bool(b) => format!("the boolean {b}"),
        serde_yaml::Value::Number(n) => format!("the number {n}"),
        serde_yaml::Value::String(s) => format!("the string {s:?}"),
        serde_yaml::Value::Sequence(_) => "a list".into(),
        serde_yaml::Value::Mapping(_) => "a mapping".into(),
        serde_yaml::Value::Tagged(_) => "a tagged value".into(),
    }
}
