//! The module layers of ARCHITECTURE.md, checked: no module of `src/` names (`crate::x`) a module
//! of a higher layer. Within a layer, modules may use each other.

use std::path::Path;

/// Highest first.
const LAYERS: &[&[&str]] = &[
    &["main", "cli"],
    &["exec", "plan", "show", "slurm", "bench", "compare"],
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

/// Every `crate::<name>` in `text`.
fn crate_paths(text: &str) -> Vec<String> {
    text.match_indices("crate::")
        .map(|(i, m)| {
            text[i + m.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
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

#[test]
fn no_module_imports_a_higher_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut violations = Vec::new();
    for f in &all {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" {
            continue;
        }
        let own = layer(&module);
        for used in crate_paths(&std::fs::read_to_string(f).unwrap()) {
            if layer(&used) < own {
                violations.push(format!("{} uses crate::{used}", rel.display()));
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
    assert!(layer("exec") < layer("stages"));
}
