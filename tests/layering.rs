//! The module layers of ARCHITECTURE.md, checked: no module of `src/` names (`crate::x`) a module
//! of a higher layer, and no two modules use each other, directly or round a longer cycle (so a
//! store that imported the run log, which imports the store, fails here). The engine is a crate of
//! its own (crates/gpt): the compiler keeps it from naming the runner.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Highest first.
const LAYERS: &[&[&str]] = &[
    &["main", "cli"],
    &[
        "exec", "plan", "show", "maintain", "slurm", "bench", "compare",
    ],
    &["stages"],
    &[
        "manifest",
        "key",
        "run",
        "refs",
        "store",
        "hash",
        "error",
        "ui",
        "plot",
        "curves",
        "tensorboard",
        "sweep",
        "data",
        "tokenizer",
        "nanogpt_config",
        "launch",
        "ranks",
    ],
    &["clock"],
    &["gpt"],
];

fn layer(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&module))
        .unwrap_or_else(|| panic!("module `{module}` is in no layer: add it to tests/layering.rs"))
}

/// Every `crate::<name>` in `text`, and each name of a `crate::{a, b::c}` group.
fn crate_paths(text: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = Vec::new();
    for (i, m) in text.match_indices("crate::") {
        let rest = &text[i + m.len()..];
        match rest.strip_prefix('{') {
            Some(group) => {
                // The names at the group's top level: after `{` and after each `,` at depth 0.
                let mut depth = 0;
                names.push(ident(group.trim_start()));
                for (j, ch) in group.char_indices() {
                    match ch {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => names.push(ident(group[j + 1..].trim_start())),
                        _ => {}
                    }
                }
            }
            None => names.push(ident(rest)),
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Each module of `src/` (its first path component) and the modules it names.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &all {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel.components().next().unwrap().as_os_str();
        let module = first.to_string_lossy().trim_end_matches(".rs").to_string();
        if module == "lib" {
            continue;
        }
        let uses = graph.entry(module.clone()).or_default();
        for used in crate_paths(&std::fs::read_to_string(f).unwrap()) {
            if used != module {
                uses.insert(used);
            }
        }
    }
    graph
}

/// A cycle through `start`, if there is one: the modules along it.
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(
        graph: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        at: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in graph.get(at).into_iter().flatten() {
            if next == start {
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, start, next, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    walk(graph, start, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn no_module_imports_a_higher_layer() {
    let mut violations = Vec::new();
    for (module, uses) in module_graph() {
        let own = layer(&module);
        for used in uses {
            if layer(&used) < own {
                violations.push(format!("{module} uses crate::{used}"));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports from a higher layer:\n{}",
        violations.join("\n")
    );
    // The check itself: an upward path is found.
    assert!(crate_paths("use crate::exec::Runner;") == ["exec"]);
    assert!(
        crate_paths("use crate::{maintain, show::{Lineage, RunsList}, run};")
            == ["maintain", "show", "run"]
    );
    assert!(layer("exec") < layer("stages"));
}

#[test]
fn no_two_modules_use_each_other() {
    let graph = module_graph();
    let cycles: Vec<String> = graph
        .keys()
        .filter_map(|m| cycle_from(&graph, m))
        .map(|c| format!("{} -> {}", c.join(" -> "), c[0]))
        .collect();
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
    // The check itself: store -> run -> store is found.
    let toy: BTreeMap<String, BTreeSet<String>> = [
        ("store", &["hash", "run"][..]),
        ("run", &["store"][..]),
        ("hash", &[][..]),
    ]
    .iter()
    .map(|(m, u)| (m.to_string(), u.iter().map(|s| s.to_string()).collect()))
    .collect();
    assert_eq!(cycle_from(&toy, "store").unwrap(), ["store", "run"]);
    assert!(cycle_from(&toy, "hash").is_none());
}
