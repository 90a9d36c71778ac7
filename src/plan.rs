//! From a manifest to an executable plan: every stage validated (typed parameters, needs),
//! dependencies as a petgraph DAG, cycles reported by name, and a topological order.

use crate::error::err;
use crate::manifest::Manifest;
use crate::stages;
use anyhow::Result;
use petgraph::algo::{kosaraju_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};

pub struct Plan {
    pub manifest: Manifest,
    /// Each stage's typed parameters, in manifest order.
    pub params: Vec<stages::Params>,
    /// Stage indices in an order where every stage comes after what it needs.
    pub order: Vec<usize>,
    /// For each stage, the indices of the stages it needs.
    pub deps: Vec<Vec<usize>>,
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
    let mut deps = vec![Vec::new(); n];
    for (i, s) in manifest.stages.iter().enumerate() {
        for d in &s.needs {
            let j = index(d);
            if !deps[i].contains(&j) {
                deps[i].push(j);
                g.add_edge(nodes[j], nodes[i], ());
            }
        }
    }
    let order = match toposort(&g, None) {
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
    Ok(Plan {
        manifest,
        params,
        order,
        deps,
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
