//! Layout: this file is the manifest's shape and `load` (~550 lines of code, then its tests);
//! `yaml.rs` is the YAML layer with locations, `overrides.rs` the `--set` overrides.
//!
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

pub use crate::error::Origin;
use crate::error::{InputError, err};
use crate::gpt::device::Device;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod overrides;
mod resources;
pub mod sweep;
mod yaml;

pub use overrides::*;
pub use resources::*;
pub use yaml::*;

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
    /// Whether stages of this kind run the model on the manifest's device (a GPU with
    /// `device: cuda`): train, evaluate and sample.
    pub fn runs_engine(self) -> bool {
        matches!(
            self,
            StageKind::Train | StageKind::Evaluate | StageKind::Sample
        )
    }
    /// The outputs every stage of this kind produces, by name; `None` for `command`, whose
    /// outputs are its `outs`.
    pub fn fixed_outputs(self) -> Option<&'static [&'static str]> {
        Some(match self {
            StageKind::Prepare => &["meta.json", "train.bin", "val.bin"],
            StageKind::Init => &["ckpt"],
            StageKind::Train => &["ckpt", "loss.svg", "metrics.json"],
            StageKind::Evaluate => &["metrics.json"],
            StageKind::Sample => &["samples.txt"],
            StageKind::Export => &["config.json", "model.safetensors"],
            StageKind::Command => return None,
        })
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

impl std::fmt::Display for StageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// The manifest's `defaults`, checked: the device (with its matmul precision) and the seed.
/// Serialized (in plan.json) as written, `{device, seed, dtype}`, through [`DefaultsText`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(into = "DefaultsText", try_from = "DefaultsText")]
pub struct Defaults {
    pub device: Device,
    pub seed: u64,
    /// The remote store (`s3://bucket/prefix` or `file:///path`); `--remote` and `PIPE_REMOTE`
    /// take precedence.
    pub remote: Option<String>,
    /// Data-parallel ranks for train stages (`--ranks`, or the launcher's world size); `None`
    /// is one. Part of train keys when above one (reduction order changes the bits).
    pub ranks: Option<usize>,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            device: Device::Cpu,
            seed: 1337,
            remote: None,
            ranks: None,
        }
    }
}

/// `defaults` as written, before the device and dtype are checked: how a manifest and `--set`
/// give them, and plan.json's form of [`Defaults`] (the same fields as before the device was typed,
/// so older plan.json files still read, and older binaries can read new ones).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DefaultsText {
    pub device: String,
    pub seed: u64,
    pub dtype: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranks: Option<usize>,
}

impl Default for DefaultsText {
    fn default() -> Self {
        Defaults::default().into()
    }
}

impl From<Defaults> for DefaultsText {
    fn from(d: Defaults) -> DefaultsText {
        DefaultsText {
            device: d.device.name().into(),
            seed: d.seed,
            dtype: d.device.dtype().into(),
            remote: d.remote,
            ranks: d.ranks,
        }
    }
}

impl TryFrom<DefaultsText> for Defaults {
    type Error = crate::gpt::device::Unsupported;
    fn try_from(d: DefaultsText) -> Result<Defaults, Self::Error> {
        Ok(Defaults {
            device: Device::from_defaults(&d.device, &d.dtype)?,
            seed: d.seed,
            remote: d.remote,
            ranks: d.ranks,
        })
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
    /// What a Slurm job for this stage asks for (not part of the key; absent in older plan.json).
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// Extra sbatch options, one `#SBATCH` line each (not part of the key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sbatch_args: Vec<String>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    defaults: Option<RawDefaults>,
    stages: Spanned<Yaml>,
    /// Read by `sweep::variants` from the located tree.
    #[serde(default)]
    #[allow(dead_code)]
    sweep: Option<Spanned<Yaml>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    device: Option<String>,
    #[serde(default, deserialize_with = "seed_value")]
    seed: Option<u64>,
    dtype: Option<String>,
    remote: Option<String>,
    ranks: Option<usize>,
}

/// `defaults.seed`, with a message that names the field and the range (serde's is "invalid u64").
fn seed_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct Seed;
    fn wrong<E: serde::de::Error>(found: impl std::fmt::Display) -> E {
        E::custom(format!(
            "`defaults.seed` must be a whole number from 0 to {}, found {found}",
            u64::MAX
        ))
    }
    impl serde::de::Visitor<'_> for Seed {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(
                f,
                "a whole number from 0 to {} for `defaults.seed`",
                u64::MAX
            )
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u64::try_from(v).map(Some).map_err(|_| wrong(v))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Err(wrong(v))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Err(wrong(format!("{v:?}")))
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Err(wrong(v))
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(Seed)
}

/// Finds `stages/<name>.yaml` for `use: name`: next to the manifest, or one folder up (so
/// `pipelines/x.yaml` finds the repository's `stages/`).
fn find_stage_def(base_dir: &Path, name: &str) -> Option<PathBuf> {
    [base_dir.join("stages"), base_dir.join("..").join("stages")]
        .into_iter()
        .map(|d| d.join(format!("{name}.yaml")))
        .find(|p| p.exists())
}

/// A manifest's or a stage's name: it names files in the store and arguments of job scripts, so
/// letters, digits, `_` and `-`, starting with a letter or digit (never read as an option), at
/// most [`MAX_NAME_LEN`] characters.
pub fn valid_name(s: &str) -> bool {
    s.len() <= MAX_NAME_LEN
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

pub const MAX_NAME_LEN: usize = 64;

const NAME_HELP: &str =
    "use letters, digits, `_` and `-`, starting with a letter or digit, at most 64 characters";

/// Reads a manifest: parse, then each stage with its `use:` definition merged in, then the
/// command line's overrides, then the checks that need the whole manifest.
pub fn load(path: &Path, overrides: &[Override]) -> Result<Manifest> {
    let doc = parse(path)?;
    let base_dir = base_dir_of(path);
    doc.check_top()?;
    let mut defaults = doc.defaults();
    let mut stages = Vec::new();
    for entry in doc.stages.iter() {
        stages.push(doc.stage(entry, &base_dir)?);
    }
    apply_overrides(overrides, &mut defaults, &mut stages)?;
    let defaults = validate(&doc, &defaults, &stages)?;
    Ok(Manifest {
        name: doc.raw.name,
        path: path.to_path_buf(),
        base_dir,
        defaults,
        stages,
    })
}

/// A parsed manifest file, with the locations of its top-level keys.
struct Doc {
    file: String,
    raw: RawManifest,
    top: YamlMap,
    stages: YamlMap,
}

impl Doc {
    fn at(&self, (line, col): (usize, usize)) -> Origin {
        Origin {
            file: self.file.clone(),
            line,
            col,
        }
    }

    /// Where top-level key `k` is, or just the file.
    fn top(&self, k: &str) -> Origin {
        self.at(self.top.get(k).map_or((0, 0), |e| e.at))
    }

    /// The checks on `name` and `stages` that come before any stage is read.
    fn check_top(&self) -> Result<()> {
        if !valid_name(&self.raw.name) {
            return Err(err(
                self.top("name"),
                format!("invalid manifest name {:?}", self.raw.name),
                Some(NAME_HELP),
            ));
        }
        if self.stages.is_empty() {
            return Err(err(
                self.top("stages"),
                "`stages` is empty",
                Some("declare at least one stage, e.g. `data: {kind: prepare, ...}`"),
            ));
        }
        Ok(())
    }

    fn defaults(&self) -> DefaultsText {
        let d = self.raw.defaults.as_ref();
        let fallback = DefaultsText::default();
        DefaultsText {
            device: d.and_then(|d| d.device.clone()).unwrap_or(fallback.device),
            seed: d.and_then(|d| d.seed).unwrap_or(fallback.seed),
            dtype: d.and_then(|d| d.dtype.clone()).unwrap_or(fallback.dtype),
            remote: d.and_then(|d| d.remote.clone()),
            ranks: d.and_then(|d| d.ranks),
        }
    }

    /// One stage: its `use:` definition (if any), then its own fields over it.
    fn stage(&self, entry: &Entry, base_dir: &Path) -> Result<StageSpec> {
        let Some(name) = entry.key.as_str() else {
            return Err(err(
                self.at((self.top("stages").line, 1)),
                format!(
                    "stage names must be strings, found {}",
                    key_debug(&entry.key)
                ),
                None,
            ));
        };
        let origin = self.at(entry.at);
        if !valid_name(name) {
            return Err(err(
                origin,
                format!("invalid stage name {name:?}"),
                Some(NAME_HELP),
            ));
        }
        let Some(body) = entry.value.as_mapping() else {
            return Err(err(
                origin,
                format!(
                    "stage `{name}` must be a mapping of fields, found {}",
                    describe(&entry.value)
                ),
                Some("e.g. `train: {kind: train, needs: [model, data]}`"),
            ));
        };
        let mut fields = Fields::default();
        // `use:` first, so the stage's own fields override the definition's.
        if let Some(u) = body.get("use") {
            merge_definition(&mut fields, &u.value, self.at(u.at), base_dir)?;
        }
        for f in body.iter() {
            let Some(key) = f.key.as_str() else { continue };
            fields.set_own(key, &f.value, self.at(f.at))?;
        }
        let Some((kind_name, kind_origin)) = fields.kind else {
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
        Ok(StageSpec {
            name: name.to_string(),
            kind,
            needs: fields.needs,
            params: fields.params,
            origin,
            param_origins: fields.param_origins,
            resources: fields.resources,
            sbatch_args: fields.sbatch_args,
        })
    }
}

/// Reads and parses the manifest file (a byte-order mark is dropped).
fn parse(path: &Path) -> Result<Doc> {
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
    let help = "a manifest has `name`, optional `defaults` (device, seed, dtype, remote, ranks) and `stages` (a map of stage name to stage)";
    // Untyped first, for where the top-level keys are; then the same text typed.
    let root = from_yaml(text).map_err(|e| yaml_err(&file, &e, Some(help)))?;
    let top = mapping(
        &file,
        root,
        "a mapping (the manifest: name, defaults, stages)",
        help,
    )?;
    // An empty document is an empty mapping (so the error is the missing `name`).
    let typed = if top.is_empty() { "{}" } else { text };
    let raw: RawManifest = from_yaml(typed).map_err(|e| yaml_err(&file, &e, Some(help)))?;
    let stages = mapping(&file, raw.stages.clone(), "a YAML mapping", help)
        .map_err(|e| prefixed("stages: ", e))?;
    Ok(Doc {
        file,
        raw,
        top,
        stages,
    })
}

/// The folder relative paths in the manifest are resolved against: absolute, so `pipe resume`
/// works from any directory.
fn base_dir_of(path: &Path) -> PathBuf {
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base_dir = if base_dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base_dir
    };
    base_dir.canonicalize().unwrap_or(base_dir)
}

/// A stage's fields as they are merged: definition first, then the manifest's own.
#[derive(Default)]
struct Fields {
    kind: Option<(String, Origin)>,
    needs: Vec<String>,
    params: serde_json::Map<String, serde_json::Value>,
    param_origins: BTreeMap<String, Origin>,
    resources: Resources,
    sbatch_args: Vec<String>,
}

impl Fields {
    fn set_param(&mut self, key: &str, v: &Yaml, o: Origin) -> Result<()> {
        match key {
            "resources" => return self.resources.merge_yaml(v, &o),
            "sbatch_args" => {
                self.sbatch_args = sbatch_args_of(&param_value(v, key, &o)?, &o)?;
                return Ok(());
            }
            _ => {}
        }
        self.params
            .insert(key.to_string(), param_value(v, key, &o)?);
        self.param_origins.insert(key.to_string(), o);
        Ok(())
    }

    /// A field written in the manifest itself.
    fn set_own(&mut self, key: &str, v: &Yaml, o: Origin) -> Result<()> {
        match key {
            "use" | "description" => {}
            "kind" => {
                let Some(s) = v.as_str() else {
                    return Err(err(
                        o,
                        format!("`kind` must be a string, found {}", describe(v)),
                        Some(&format!("one of: {KINDS}")),
                    ));
                };
                self.kind = Some((s.to_string(), o));
            }
            "needs" => {
                self.param_origins.insert("needs".to_string(), o.clone());
                self.needs = needs_of(v, &o)?;
            }
            _ => self.set_param(key, v, o)?,
        }
        Ok(())
    }
}

fn needs_of(v: &Yaml, o: &Origin) -> Result<Vec<String>> {
    match v {
        Yaml::String(s) => Ok(vec![s.clone()]),
        Yaml::Sequence(seq) => seq
            .iter()
            .map(|x| {
                x.as_str().map(str::to_string).ok_or_else(|| {
                    err(
                        o.clone(),
                        format!("`needs` entries must be stage names, found {}", describe(x)),
                        None,
                    )
                })
            })
            .collect(),
        other => Err(err(
            o.clone(),
            format!(
                "`needs` must be a list of stage names, found {}",
                describe(other)
            ),
            Some("e.g. `needs: [model, data]`"),
        )),
    }
}

/// `use: name`: the fields of stages/<name>.yaml, located in that file.
fn merge_definition(fields: &mut Fields, u: &Yaml, o: Origin, base_dir: &Path) -> Result<()> {
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
    let Some(def_path) = find_stage_def(base_dir, uname) else {
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
    let help = "a stage definition is a mapping with `kind` and parameters";
    let def = from_yaml(without_bom(&def_text)).map_err(|e| yaml_err(&def_file, &e, Some(help)))?;
    let def = mapping(&def_file, def, "a YAML mapping", help)?;
    for d in def.iter() {
        let dk = d.key.as_str().unwrap_or_default();
        let o = Origin {
            file: def_file.clone(),
            line: d.at.0,
            col: d.at.1,
        };
        match dk {
            "kind" => fields.kind = Some((d.value.as_str().unwrap_or_default().to_string(), o)),
            "description" => {}
            "needs" | "use" => {
                return Err(err(
                    o,
                    format!("`{dk}` is not allowed in a stage definition"),
                    Some("declare dependencies in the manifest that uses it"),
                ));
            }
            _ => fields.set_param(dk, &d.value, o)?,
        }
    }
    Ok(())
}

/// The checks that need the whole manifest: the device and dtype, and every `needs` naming
/// another stage.
fn validate(doc: &Doc, defaults: &DefaultsText, stages: &[StageSpec]) -> Result<Defaults> {
    if defaults.device == "cuda" && !cfg!(feature = "cuda") {
        return Err(err(
            doc.top("defaults"),
            "device `cuda`: this pipe was built without CUDA support",
            Some(
                "rebuild with `cargo build --release --features cuda` (needs no CUDA toolkit), or use device: cpu (--set device=cpu)",
            ),
        ));
    }
    let device = match Device::from_defaults(&defaults.device, &defaults.dtype) {
        Ok(device) => device,
        Err(e) => return Err(err(doc.top("defaults"), e.message, Some(e.help))),
    };
    let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    for s in stages {
        let o = s.origin_of("needs");
        for n in &s.needs {
            if n == &s.name {
                return Err(err(
                    o.clone(),
                    format!("stage `{}` needs itself", s.name),
                    Some("remove it from `needs`"),
                ));
            }
            if !names.contains(&n.as_str()) {
                return Err(err(
                    o.clone(),
                    format!(
                        "stage `{}` needs `{n}`, which is not a stage in this manifest",
                        s.name
                    ),
                    Some(&format!("stages: {}", names.join(", "))),
                ));
            }
        }
    }
    if let Some(url) = &defaults.remote
        && !(url.starts_with("s3://") || url.starts_with("file:///"))
    {
        return Err(err(
            doc.top("defaults"),
            format!("`defaults.remote` is {url:?}: expected s3://bucket/prefix or file:///path"),
            Some("a remote store is S3-compatible object storage or a shared folder"),
        ));
    }
    if defaults.ranks == Some(0) {
        return Err(err(
            doc.top("defaults"),
            "`defaults.ranks` is 0: expected a whole number >= 1",
            Some("ranks: N trains each train stage on N data-parallel processes (mpirun -np N)"),
        ));
    }
    Ok(Defaults {
        device,
        seed: defaults.seed,
        remote: defaults.remote.clone(),
        ranks: defaults.ranks,
    })
}

/// `e` (an [`InputError`]) with its message prefixed, as serde_yaml named the field at fault.
fn prefixed(prefix: &str, e: anyhow::Error) -> anyhow::Error {
    match e.downcast::<InputError>() {
        Ok(mut m) => {
            m.message = format!("{prefix}{}", m.message);
            m.into()
        }
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_keep_plan_json_form() {
        use crate::gpt::device::Precision;
        let old = json!({"device": "cpu", "seed": 1337, "dtype": "float32"});
        let d: Defaults = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(d, Defaults::default());
        assert_eq!(serde_json::to_value(&d).unwrap(), old);
        let tf32 = json!({"device": "cuda", "seed": 7, "dtype": "tf32"});
        let d: Defaults = serde_json::from_value(tf32.clone()).unwrap();
        assert_eq!(d.device, Device::Cuda(Precision::Tf32));
        assert_eq!(d.device.key_name(), "cuda:tf32");
        assert_eq!(serde_json::to_value(&d).unwrap(), tf32);
        let bad = json!({"device": "cpu", "seed": 1, "dtype": "bf16"});
        assert!(serde_json::from_value::<Defaults>(bad).is_err());
    }

    fn set(v: &str) -> serde_json::Value {
        parse_override(&format!("train.x={v}")).unwrap().value
    }

    #[test]
    fn set_values_are_read_as_serde_yaml_read_them() {
        assert_eq!(set("500"), json!(500));
        assert_eq!(set("-3"), json!(-3));
        assert_eq!(set("1e-3"), json!(0.001));
        assert_eq!(set("2.0"), json!(2.0));
        assert_eq!(set("0x1F"), json!(31));
        assert_eq!(set("true"), json!(true));
        // YAML 1.2's core schema: these stay strings.
        for s in ["yes", "no", "on", "0755", "1_000", "input.txt", "# x"] {
            assert_eq!(set(s), json!(s), "{s}");
        }
        assert_eq!(set(""), serde_json::Value::Null);
        assert_eq!(set("~"), serde_json::Value::Null);
        assert_eq!(set("[1, b]"), json!([1, "b"]));
        assert_eq!(set("a: b"), json!({"a": "b"}));
        for s in [".nan", ".inf", "-.inf", "[1, .nan]"] {
            let e = parse_override(&format!("train.x={s}")).err().unwrap();
            assert!(e.to_string().contains("is not a finite number"), "{e}");
        }
    }

    #[test]
    fn keys_are_located_in_block_and_flow_style() {
        let text = "a: 1\nb:\n  c: {d: 2, \"e\": 3}\n";
        let root: Spanned<Yaml> = from_yaml(text).unwrap();
        let top = root.value.as_mapping().unwrap();
        assert_eq!(top.get("a").unwrap().at, (1, 1));
        let b = top.get("b").unwrap();
        assert_eq!(b.at, (2, 1));
        let c = b.value.as_mapping().unwrap().get("c").unwrap();
        assert_eq!(c.at, (3, 3));
        let inner = c.value.as_mapping().unwrap();
        assert_eq!(inner.get("d").unwrap().at, (3, 7));
        assert_eq!(inner.get("e").unwrap().at, (3, 13));
    }
}
