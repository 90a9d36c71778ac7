//! An artifact's lineage (`pipe show HASH`): the stage that produced it, that stage's params and
//! sources, and the same for each of its inputs, recursively.

use crate::store::{ActionRecord, Hash, Key, OutputName, RecordKind, Store};
use anyhow::{Result, bail};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Inputs are followed this deep at most (a record's material is data, not to be trusted).
const MAX_DEPTH: usize = 32;

#[derive(Serialize)]
pub struct Lineage {
    pub artifact: Hash,
    /// `None` for a source, a checkpoint saved mid-stage, or an output whose record was removed.
    pub produced_by: Option<Producer>,
}

/// The stage that produced an artifact, as its record says.
#[derive(Serialize)]
pub struct Producer {
    pub stage: String,
    pub kind: RecordKind,
    pub key: Key,
    /// Which of the stage's outputs the artifact is.
    pub output: Option<OutputName>,
    /// The stage's params and sources as they went into its key.
    pub params: Option<Value>,
    pub sources: Option<Value>,
    pub created: String,
    pub inputs: Vec<LineageInput>,
}

/// One input of a stage: its role, the upstream outputs it took, and who produced them.
#[derive(Serialize)]
pub struct LineageInput {
    pub role: String,
    pub outputs: BTreeMap<String, Value>,
    pub produced_by: Option<Producer>,
}

impl Lineage {
    pub fn read(store: &Store, hash: &Hash) -> Result<Lineage> {
        if !store.has(hash) {
            bail!("no object {hash} in the store");
        }
        let actions = store.actions()?;
        Ok(Lineage {
            artifact: hash.clone(),
            produced_by: producer(&actions, hash, 0),
        })
    }

    /// Prints the tree; a stage that several consumers share is printed once, and referred
    /// back to after that.
    pub fn print(&self) {
        println!("{}", self.artifact);
        print_producer(self.produced_by.as_ref(), 0, &mut BTreeSet::new());
    }
}

fn producer(actions: &[ActionRecord], hash: &Hash, depth: usize) -> Option<Producer> {
    let rec = actions
        .iter()
        .find(|a| a.outputs.values().any(|h| h == hash) && a.kind != RecordKind::Download)?;
    let output = rec
        .outputs
        .iter()
        .find(|(_, h)| *h == hash)
        .map(|(n, _)| n.clone());
    let mut inputs = Vec::new();
    if let Some(ins) = rec
        .key_material
        .get("inputs")
        .and_then(Value::as_object)
        .filter(|_| depth < MAX_DEPTH)
    {
        for (role, outs) in ins {
            let outputs: BTreeMap<String, Value> = outs
                .as_object()
                .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default();
            let upstream = outputs
                .values()
                .next()
                .and_then(Value::as_str)
                .and_then(|h| Hash::parse(h).ok());
            inputs.push(LineageInput {
                role: role.clone(),
                produced_by: upstream.and_then(|h| producer(actions, &h, depth + 1)),
                outputs,
            });
        }
    }
    Some(Producer {
        stage: rec.stage.clone(),
        kind: rec.kind,
        key: rec.key.clone(),
        output,
        params: rec.key_material.get("params").cloned(),
        sources: rec.key_material.get("sources").cloned(),
        created: rec.created.clone(),
        inputs,
    })
}

fn print_producer(p: Option<&Producer>, indent: usize, seen: &mut BTreeSet<Key>) {
    let pad = " ".repeat(indent);
    let Some(p) = p else {
        println!(
            "{pad}  (not produced by a recorded stage: a source, checkpoint or removed record)"
        );
        return;
    };
    let first_time = seen.insert(p.key.clone());
    println!(
        "{pad}  <- {} `{}` (output {}), key {}, {}{}",
        p.kind.name(),
        p.stage,
        p.output.as_ref().map_or("?", OutputName::as_str),
        p.key.short(),
        p.created,
        if first_time { "" } else { " (shown above)" }
    );
    if !first_time {
        return;
    }
    if let Some(params) = p.params.as_ref().and_then(Value::as_object) {
        let s: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("{pad}     params: {}", s.join(" "));
    }
    if let Some(sources) = p.sources.as_ref().filter(|s| !s.is_null()) {
        println!("{pad}     sources: {sources}");
    }
    for input in &p.inputs {
        println!("{pad}     input {}:", input.role);
        print_producer(input.produced_by.as_ref(), indent + 6, seen);
    }
}
