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
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;
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

/// The manifest's `defaults`, checked: the device (with its matmul precision) and the seed.
/// Serialized (in plan.json) as written, `{device, seed, dtype}`, through [`DefaultsText`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(into = "DefaultsText", try_from = "DefaultsText")]
pub struct Defaults {
    pub device: Device,
    pub seed: u64,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            device: Device::Cpu,
            seed: 1337,
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
        }
    }
}

impl TryFrom<DefaultsText> for Defaults {
    type Error = crate::gpt::device::Unsupported;
    fn try_from(d: DefaultsText) -> Result<Defaults, Self::Error> {
        Ok(Defaults {
            device: Device::from_defaults(&d.device, &d.dtype)?,
            seed: d.seed,
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
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    device: Option<String>,
    seed: Option<u64>,
    dtype: Option<String>,
}

/// A YAML value as the manifest reads it (YAML 1.2's core schema, like serde_yaml: `yes` and
/// `0755` stay strings), with the location of every mapping key in it.
#[derive(Clone, Debug, PartialEq)]
pub enum Yaml {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    String(String),
    Sequence(Vec<Yaml>),
    Mapping(YamlMap),
}

/// A YAML mapping in document order, each key with its line and column.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct YamlMap(Vec<Entry>);

#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: Yaml,
    /// (line, column) of the key, 1-based; (0, 0) when the parser did not say.
    pub at: (usize, usize),
    pub value: Yaml,
}

impl Yaml {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Yaml::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_mapping(&self) -> Option<&YamlMap> {
        match self {
            Yaml::Mapping(m) => Some(m),
            _ => None,
        }
    }
}

impl YamlMap {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> std::slice::Iter<'_, Entry> {
        self.0.iter()
    }
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.0.iter().find(|e| e.key.as_str() == Some(key))
    }
}

struct YamlVisitor;

impl<'de> Visitor<'de> for YamlVisitor {
    type Value = Yaml;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_unit<E>(self) -> Result<Yaml, E> {
        Ok(Yaml::Null)
    }
    fn visit_none<E>(self) -> Result<Yaml, E> {
        Ok(Yaml::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Yaml, D::Error> {
        Yaml::deserialize(d)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Yaml, E> {
        Ok(Yaml::Bool(b))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Yaml, E> {
        Ok(Yaml::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Yaml, E> {
        Ok(Yaml::UInt(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Yaml, E> {
        Ok(Yaml::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Yaml, E> {
        Ok(Yaml::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Yaml, E> {
        Ok(Yaml::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Yaml, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element()? {
            out.push(v);
        }
        Ok(Yaml::Sequence(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Yaml, A::Error> {
        MapVisitor.visit_map(map).map(Yaml::Mapping)
    }
}

struct MapVisitor;

impl<'de> Visitor<'de> for MapVisitor {
    type Value = YamlMap;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML mapping")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<YamlMap, A::Error> {
        let mut out = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Yaml>>()? {
            let at = (
                key.referenced.line() as usize,
                key.referenced.column() as usize,
            );
            out.push(Entry {
                key: key.value,
                at,
                value: map.next_value()?,
            });
        }
        Ok(YamlMap(out))
    }
}

impl<'de> Deserialize<'de> for Yaml {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Yaml, D::Error> {
        d.deserialize_any(YamlVisitor)
    }
}

/// The parser's settings: YAML 1.2's core schema as serde_yaml read it (only `true`/`false` are
/// booleans; `0755` and `1_000` are strings; `<<` is an ordinary key), and `.nan`/`.inf` passed
/// through so that `param_value` refuses them with its own message.
fn yaml_options() -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    o.strict_booleans = true;
    o.leading_zero_numbers_as_strings = true;
    o.underscored_numbers_as_strings = true;
    o.merge_keys = serde_saphyr::MergeKeyPolicy::AsOrdinary;
    o.non_finite_float_policy = serde_saphyr::NonFiniteFloatPolicy::PassThrough;
    o.with_snippet = false;
    o
}

fn from_yaml<'de, T: Deserialize<'de>>(text: &'de str) -> Result<T, serde_saphyr::Error> {
    serde_saphyr::from_str_with_options(text, yaml_options())
}

fn yaml_err(file: &str, e: &serde_saphyr::Error, help: Option<&str>) -> anyhow::Error {
    let (line, col) = e
        .location()
        .map_or((0, 0), |l| (l.line() as usize, l.column() as usize));
    let origin = Origin {
        file: file.to_string(),
        line,
        col,
    };
    let msg = e.without_snippet().to_string();
    // The parser appends " at line X, column Y"; the origin already says it.
    let mut msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
    // Two messages that name the parser's API: serde_yaml's words instead.
    if msg.starts_with("multiple YAML documents") {
        msg = "deserializing from YAML containing more than one document is not supported".into();
    } else if let Some(rest) = msg.strip_prefix("duplicate mapping key: ") {
        let key = rest
            .split(", set DuplicateKeyPolicy")
            .next()
            .unwrap_or(rest);
        msg = format!("duplicate entry with key {key:?}");
    }
    err(origin, msg, help)
}

/// A value that must be a mapping (nothing counts as an empty one, as serde_yaml read it); the
/// error is serde_yaml's, `expected` naming what was wanted.
fn mapping(file: &str, v: Spanned<Yaml>, expected: &str, help: &str) -> Result<YamlMap> {
    match v.value {
        Yaml::Mapping(m) => Ok(m),
        Yaml::Null => Ok(YamlMap::default()),
        other => Err(err(
            Origin {
                file: file.to_string(),
                line: v.referenced.line() as usize,
                col: v.referenced.column() as usize,
            },
            format!("invalid type: {}, expected {expected}", unexpected(&other)),
            Some(help),
        )),
    }
}

/// A value as serde's "invalid type" errors name it.
fn unexpected(v: &Yaml) -> String {
    match v {
        Yaml::Null => "unit".into(),
        Yaml::Bool(b) => format!("boolean `{b}`"),
        Yaml::Int(i) => format!("integer `{i}`"),
        Yaml::UInt(u) => format!("integer `{u}`"),
        Yaml::Float(_) => format!("floating point `{}`", number_text(v)),
        Yaml::String(s) => format!("string {s:?}"),
        Yaml::Sequence(_) => "sequence".into(),
        Yaml::Mapping(_) => "map".into(),
    }
}

/// A UTF-8 byte-order mark (as some editors write) is not part of the YAML.
fn without_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// Whether a YAML value holds `.nan` or `.inf` anywhere (JSON, and so a key, cannot hold them).
fn has_non_finite(v: &Yaml) -> bool {
    match v {
        Yaml::Float(f) => !f.is_finite(),
        Yaml::Sequence(s) => s.iter().any(has_non_finite),
        Yaml::Mapping(m) => m.iter().any(|e| has_non_finite(&e.value)),
        _ => false,
    }
}

/// A parameter's YAML value as JSON; `.nan` and `.inf` are refused where they are written.
fn param_value(v: &Yaml, key: &str, origin: &Origin) -> Result<serde_json::Value> {
    if has_non_finite(v) {
        return Err(err(
            origin.clone(),
            format!("`{key}` is not a finite number (.nan and .inf are not accepted)"),
            Some("give a finite value"),
        ));
    }
    Ok(yaml_to_json(v))
}

/// JSON for a YAML value, as serde_yaml's `Value` serialized (a mapping whose key is not a
/// scalar has no JSON form: null).
fn yaml_to_json(v: &Yaml) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Yaml::Null => J::Null,
        Yaml::Bool(b) => J::Bool(*b),
        Yaml::Int(i) => J::from(*i),
        Yaml::UInt(u) => J::from(*u),
        Yaml::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Yaml::String(s) => J::String(s.clone()),
        Yaml::Sequence(s) => J::Array(s.iter().map(yaml_to_json).collect()),
        Yaml::Mapping(m) => {
            let mut out = serde_json::Map::new();
            for e in m.iter() {
                let key = match &e.key {
                    Yaml::String(s) => s.clone(),
                    Yaml::Bool(b) => b.to_string(),
                    Yaml::Int(i) => i.to_string(),
                    Yaml::UInt(u) => u.to_string(),
                    _ => return J::Null,
                };
                out.insert(key, yaml_to_json(&e.value));
            }
            J::Object(out)
        }
    }
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
                Some("use letters, digits, `_` and `-` only (it names files in the store)"),
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
                Some("use letters, digits, `_` and `-` only"),
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
    let help = "a manifest has `name`, optional `defaults` (device, seed, dtype) and `stages` (a map of stage name to stage)";
    // Untyped first, for where the top-level keys are; then the same text typed.
    let root = from_yaml(text).map_err(|e| yaml_err(&file, &e, Some(help)))?;
    let top = mapping(&file, root, "struct RawManifest", help)?;
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
}

impl Fields {
    fn set_param(&mut self, key: &str, v: &Yaml, o: Origin) -> Result<()> {
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

/// The command line's `--set` overrides, in order.
fn apply_overrides(
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
    Ok(Defaults {
        device,
        seed: defaults.seed,
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

fn set_default(
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

pub fn describe(v: &Yaml) -> String {
    match v {
        Yaml::Null => "nothing (null)".into(),
        Yaml::Bool(b) => format!("the boolean {b}"),
        Yaml::Int(_) | Yaml::UInt(_) | Yaml::Float(_) => format!("the number {}", number_text(v)),
        Yaml::String(s) => format!("the string {s:?}"),
        Yaml::Sequence(_) => "a list".into(),
        Yaml::Mapping(_) => "a mapping".into(),
    }
}

/// A mapping key as serde_yaml's `Value` printed it with `{:?}`.
fn key_debug(k: &Yaml) -> String {
    match k {
        Yaml::Null => "Null".into(),
        Yaml::Bool(b) => format!("Bool({b})"),
        Yaml::Int(_) | Yaml::UInt(_) | Yaml::Float(_) => format!("Number({})", number_text(k)),
        Yaml::String(s) => format!("String({s:?})"),
        Yaml::Sequence(_) => "Sequence [..]".into(),
        Yaml::Mapping(_) => "Mapping {..}".into(),
    }
}

/// A number as serde_yaml printed it (`.nan`, `.inf` and `-.inf` included).
fn number_text(v: &Yaml) -> String {
    match v {
        Yaml::Float(f) if f.is_nan() => ".nan".into(),
        Yaml::Float(f) if f.is_infinite() => if *f > 0.0 { ".inf" } else { "-.inf" }.into(),
        _ => yaml_to_json(v).to_string(),
    }
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
