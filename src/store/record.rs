//! What an action record is and when one can be trusted: its kind (`RecordKind`), the key of a
//! download's record, and `ActionRecord::problem`, the check every record read from disk or a
//! remote passes before it is used.

use super::{ActionRecord, Key};
use crate::manifest::StageKind;
use serde::{Deserialize, Serialize};

/// What made an action record: a stage of a kind, or the store's own index of a pinned download
/// (a source text fetched by `prepare`, keyed by its sha256). Serialized as the kind's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum RecordKind {
    Stage(StageKind),
    Download,
}

impl RecordKind {
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Stage(k) => k.name(),
            RecordKind::Download => "download",
        }
    }
}

impl TryFrom<String> for RecordKind {
    type Error = String;
    fn try_from(s: String) -> Result<RecordKind, String> {
        if s == "download" {
            return Ok(RecordKind::Download);
        }
        StageKind::parse(&s)
            .map(RecordKind::Stage)
            .ok_or_else(|| format!("unknown record kind {s:?}"))
    }
}

impl From<RecordKind> for String {
    fn from(k: RecordKind) -> String {
        k.name().to_string()
    }
}

impl std::fmt::Display for RecordKind {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// The key of the record that indexes a pinned download by its sha256.
pub fn download_key(sha256: &str) -> Key {
    Key::from(blake3::hash(format!("download-sha256-{sha256}").as_bytes()))
}

impl ActionRecord {
    /// Why this record cannot be the record of `key`, if it cannot. A record read from the store
    /// or a remote is someone's claim: it must name `key`, its key material must hash to `key`
    /// (so it describes the stage that was looked up), and its outputs must be exactly the ones
    /// that stage declares (its kind's fixed outputs, or a command's `outs`), no more, no fewer.
    /// That outputs are present and intact is checked where they are read.
    pub fn problem(&self, key: &Key) -> Option<String> {
        if self.key != *key {
            return Some(format!("it is the record of key {}", self.key.short()));
        }
        let (material_key, declared): (Key, Vec<String>) = match self.kind {
            RecordKind::Download => {
                let sha = self.key_material["sha256"].as_str().unwrap_or("");
                (download_key(sha), vec!["content".to_string()])
            }
            RecordKind::Stage(kind) => {
                if self.key_material["kind"].as_str() != Some(kind.name()) {
                    return Some(format!(
                        "its kind `{}` is not the kind in its key material",
                        kind.name()
                    ));
                }
                let declared = match kind.fixed_outputs() {
                    Some(names) => names.iter().map(|n| n.to_string()).collect(),
                    None => self.key_material["params"]["outs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|o| o.as_str().map(str::to_string))
                        .collect(),
                };
                (crate::key::key_of(&self.key_material), declared)
            }
        };
        if material_key != *key {
            return Some("its key material does not hash to its key".into());
        }
        let mut declared = declared;
        declared.sort();
        declared.dedup();
        let named: Vec<&str> = self.outputs.keys().map(|n| n.as_str()).collect();
        if named != declared {
            return Some(format!(
                "it names the outputs {named:?}, but a `{}` stage with this key produces {declared:?}",
                self.kind
            ));
        }
        None
    }
}
