//! The YAML layer: values with the location of every key (from serde-saphyr), the parser's
//! settings and errors, and YAML values turned into JSON parameters.

use super::{Origin, err};
use anyhow::Result;
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use std::fmt;

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

pub(super) struct YamlVisitor;

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

pub(super) struct MapVisitor;

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
pub(super) fn yaml_options() -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    o.strict_booleans = true;
    o.leading_zero_numbers_as_strings = true;
    o.underscored_numbers_as_strings = true;
    o.merge_keys = serde_saphyr::MergeKeyPolicy::AsOrdinary;
    o.non_finite_float_policy = serde_saphyr::NonFiniteFloatPolicy::PassThrough;
    o.with_snippet = false;
    o
}

pub(super) fn from_yaml<'de, T: Deserialize<'de>>(
    text: &'de str,
) -> Result<T, serde_saphyr::Error> {
    serde_saphyr::from_str_with_options(text, yaml_options())
}

pub(super) fn yaml_err(file: &str, e: &serde_saphyr::Error, help: Option<&str>) -> anyhow::Error {
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
    } else if let Some(rest) = msg.strip_prefix("budget breached: ") {
        // The parser's limit on what aliases expand to, in its own Debug form.
        let reached: String = rest.chars().filter(char::is_ascii_digit).collect();
        msg = format!(
            "the YAML expands to too many nodes (at least {reached}, through aliases repeated inside aliases); a manifest never needs that many: write fewer aliases"
        );
    }
    err(origin, msg, help)
}

/// A value that must be a mapping (nothing counts as an empty one, as serde_yaml read it); the
/// error is serde_yaml's, `expected` naming what was wanted.
pub(super) fn mapping(file: &str, v: Spanned<Yaml>, expected: &str, help: &str) -> Result<YamlMap> {
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
pub(super) fn unexpected(v: &Yaml) -> String {
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
pub(super) fn without_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// Whether a YAML value holds `.nan` or `.inf` anywhere (JSON, and so a key, cannot hold them).
pub(super) fn has_non_finite(v: &Yaml) -> bool {
    match v {
        Yaml::Float(f) => !f.is_finite(),
        Yaml::Sequence(s) => s.iter().any(has_non_finite),
        Yaml::Mapping(m) => m.iter().any(|e| has_non_finite(&e.value)),
        _ => false,
    }
}

/// A parameter's YAML value as JSON; `.nan` and `.inf` are refused where they are written.
pub(super) fn param_value(v: &Yaml, key: &str, origin: &Origin) -> Result<serde_json::Value> {
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
pub(super) fn yaml_to_json(v: &Yaml) -> serde_json::Value {
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
pub(super) fn key_debug(k: &Yaml) -> String {
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
pub(super) fn number_text(v: &Yaml) -> String {
    match v {
        Yaml::Float(f) if f.is_nan() => ".nan".into(),
        Yaml::Float(f) if f.is_infinite() => if *f > 0.0 { ".inf" } else { "-.inf" }.into(),
        _ => yaml_to_json(v).to_string(),
    }
}
