//! From a manifest to an executable plan: every stage validated (typed parameters, needs),
//! dependencies as a petgraph DAG, cycles reported by name, and a topological order. Then
//! [`Plan::check`]: everything that can fail before a run writes anything, each stage's key parts
//! included. Key parts are worked out once per plan ([`Plan::key_parts`]): checking the plan and
//! executing it read the same ones, so a source file is hashed once per run.

use crate::error::err;
use crate::manifest::{Manifest, StageKind};
use crate::run::Executor;
use crate::stages::{self, Downloads, KeyParts};
use crate::store::Store;
use anyhow::Result;
use petgraph::algo::{kosaraju_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};
use std::sync::OnceLock;

pub struct Plan {
    pub manifest: Manifest,
    /// Each stage's typed parameters, in manifest order.
    pub params: Vec<stages::Params>,
    /// Stage indices in an order where every stage comes after what it needs.
    pub order: Vec<usize>,
    /// For each stage, the indices of the stages it needs.
    pub deps: Vec<Vec<usize>>,
    /// Whether working out a key may download what the stage names (GPT-2 weights): `run`,
    /// `resume` and Slurm jobs allow it; `status` never downloads.
    pub downloads: Downloads,
    /// Each stage's key parts, once worked out.
    key_parts: Vec<OnceLock<KeyParts>>,
    /// For each stage, whether a command stage runs before it (directly or not).
    after_command: Vec<bool>,
}

impl Plan {
    /// Stage `i`'s key parts (its typed parameters and the hashes of what it reads from outside
    /// the store), worked out on first use. Settle `manifest.defaults` (the ranks) before. A stage
    /// that runs after a command stage gets them worked out again each time: a command may have
    /// changed the files outside the store that the stage reads.
    pub fn key_parts(&self, store: &Store, i: usize) -> Result<KeyParts> {
        if let Some(parts) = self.key_parts[i].get() {
            return Ok(parts.clone());
        }
        let m = &self.manifest;
        let parts = stages::key_parts(store, m, &m.stages[i], &self.params[i], self.downloads)?;
        if !self.after_command[i] {
            let _ = self.key_parts[i].set(parts.clone());
        }
        Ok(parts)
    }

    /// Everything that can be checked before a run writes anything: each stage's key parts
    /// (missing files, bad checkpoints), export destinations (unless `allow_outside`), and the
    /// GPU (not with Slurm: the jobs find theirs).
    pub fn check(&self, store: &Store, allow_outside: bool, executor: Executor) -> Result<()> {
        let m = &self.manifest;
        for (i, (s, params)) in m.stages.iter().zip(&self.params).enumerate() {
            self.key_parts(store, i)?;
            if let stages::Params::Export(p) = params
                && !allow_outside
            {
                stages::export::check_destination(m, s, p)?;
            }
        }
        // With `device: cuda`, the GPU is found before any stage runs, so a missing driver or
        // library is reported up front rather than after the CPU stages.
        // With several ranks, each rank opens its own GPU: here (possibly the process that only
        // launches them) the driver is only asked how many there are, so no GPU is held.
        if executor == Executor::Local && m.defaults.device.is_cuda() {
            if m.defaults.ranks.unwrap_or(1) > 1 {
                crate::gpt::cuda::device_count()?;
            } else {
                let name = crate::gpt::cuda::gpu_name()?;
                tracing::info!("device: {name}");
            }
        }
        Ok(())
    }

    /// Takes `other`'s key parts for the stages that are the same in both (a sweep's variants
    /// share most stages), so what they read is hashed once.
    pub fn share_key_parts(&mut self, other: &Plan) {
        let (a, b) = (&self.manifest, &other.manifest);
        if a.base_dir != b.base_dir || a.defaults != b.defaults {
            return;
        }
        for (i, s) in a.stages.iter().enumerate() {
            let Some(j) = b.stages.iter().position(|t| t.name == s.name) else {
                continue;
            };
            let t = &b.stages[j];
            if s.kind == t.kind
                && s.params == t.params
                && let Some(parts) = other.key_parts[j].get()
            {
                let _ = self.key_parts[i].set(parts.clone());
            }
        }
    }
}

pub fn build(manifest: Manifest) -> Result<Plan> {
    let n = manifest.stages.len();
    let mut g: DiGraph<usize, ()> = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..n).map(|i| g.add_node(i)).collect();
    let index = |name: &str| {
        manifest
            .stages
            .iter()
            .position(|s| s.name == name)
            .expect("needs checked by the manifest loader")
    };
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, s) in manifest.stages.iter().enumerate() {
        for d in &s.needs {
            let j = index(d);
            if !deps[i].contains(&j) {
                deps[i].push(j);
                g.add_edge(nodes[j], nodes[i], ());
            }
        }
    }
    let order: Vec<usize> = match toposort(&g, None) {
        Ok(o) => o.into_iter().map(|ix| g[ix]).collect(),
        Err(_) => {
            let cycle = find_cycle(&g);
            let first = &manifest.stages[cycle[0]];
            let names: Vec<&str> = cycle
                .iter()
                .chain(std::iter::once(&cycle[0]))
                .map(|&i| manifest.stages[i].name.as_str())
                .collect();
            return Err(err(
                first.origin_of("needs").clone(),
                format!("the stages form a cycle: {}", names.join(" -> ")),
                Some(
                    "a stage cannot (indirectly) need itself: remove one of these `needs` entries",
                ),
            ));
        }
    };
    let params = manifest
        .stages
        .iter()
        .map(|s| stages::parse(&manifest, s))
        .collect::<Result<Vec<_>>>()?;
    let mut after_command = vec![false; n];
    for &i in &order {
        after_command[i] = deps[i]
            .iter()
            .any(|&j| manifest.stages[j].kind == StageKind::Command || after_command[j]);
    }
    Ok(Plan {
        key_parts: (0..n).map(|_| OnceLock::new()).collect(),
        after_command,
        manifest,
        params,
        order,
        deps,
        downloads: Downloads::Never,
    })
}

/// One cycle, as stage indices in dependency order (a needs b needs ... needs a, reversed to read
/// as a data flow).
fn find_cycle(g: &DiGraph<usize, ()>) -> Vec<usize> {
    let scc = kosaraju_scc(g)
        .into_iter()
        .find(|c| c.len() > 1)
        .unwrap_or_default();
    if scc.is_empty() {
        return vec![0];
    }
    // Walk edges inside the component from its first node (in manifest order) back to it.
    let mut members: Vec<NodeIndex> = scc.clone();
    members.sort_by_key(|ix| g[*ix]);
    let start = members[0];
    let mut path = vec![start];
    let mut seen = std::collections::HashSet::from([start]);
    fn dfs(
        g: &DiGraph<usize, ()>,
        cur: NodeIndex,
        start: NodeIndex,
        members: &[NodeIndex],
        path: &mut Vec<NodeIndex>,
        seen: &mut std::collections::HashSet<NodeIndex>,
    ) -> bool {
        let mut next: Vec<NodeIndex> = g.neighbors(cur).filter(|n| members.contains(n)).collect();
        next.sort_by_key(|ix| g[*ix]);
        for n in next {
            if n == start {
                return true;
            }
            if seen.insert(n) {
                path.push(n);
                if dfs(g, n, start, members, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    dfs(g, start, start, &members, &mut path, &mut seen);
    path.into_iter().map(|ix| g[ix]).collect()
}
