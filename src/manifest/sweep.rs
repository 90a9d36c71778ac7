//! A sweep's variants: the manifest's top-level `sweep:` and the command line's `--sweep`.
//!
//! ```yaml
//! sweep:
//!   grid:                          # the cartesian product
//!     train.learning_rate: [1.0e-3, 3.0e-4]
//!     seed: [1, 2]
//!   zip:                           # lists of one length, taken pairwise
//!     model.n_layer: [2, 4]
//!     model.n_embd: [64, 128]
//!   variants:                      # explicit override maps
//!     - {train.dropout: 0.0}
//!     - {train.dropout: 0.1, train.weight_decay: 0.0}
//! ```
//!
//! The three compose: grid × zip × variants (each part that is absent counts as one variant with
//! no overrides). `--sweep train.learning_rate=1e-3,6e-4` adds a grid axis, its values read as
//! YAML like `--set`'s. A variant is a list of overrides, applied after the command line's
//! `--set`, exactly as `--set` is.

use super::*;
use anyhow::Result;

/// More variants than this need `--yes`: a typo in a grid should not start a thousand runs.
pub const MAX_VARIANTS_UNASKED: usize = 1000;

/// One override of a variant, with where it was written (for errors).
#[derive(Clone, Debug)]
pub struct SweepValue {
    pub over: Override,
    pub origin: Origin,
}

/// One axis of the sweep: its key, and one override per value.
struct Axis {
    key: String,
    origin: Origin,
    values: Vec<SweepValue>,
}

/// The variants of `path` with `--sweep` axes `cli`; empty when there is no sweep at all.
/// `set` is the command line's `--set` keys: a key both set and swept is an error.
pub fn variants(
    path: &Path,
    cli: &[String],
    set: &[Override],
    yes: bool,
) -> Result<Vec<Vec<SweepValue>>> {
    let doc = parse(path)?;
    let mut grid: Vec<Axis> = Vec::new();
    let mut zip: Vec<Axis> = Vec::new();
    let mut listed: Vec<Vec<SweepValue>> = Vec::new();
    if let Some(entry) = doc.top.get("sweep") {
        let at = doc.at(entry.at);
        let Some(sweep) = entry.value.as_mapping() else {
            return Err(err(at, "`sweep` must be a mapping", Some(HELP)));
        };
        for part in sweep.iter() {
            let origin = doc.at(part.at);
            match part.key.as_str() {
                Some("grid") => grid.extend(axes(&doc, &part.value, &origin, "grid")?),
                Some("zip") => zip.extend(axes(&doc, &part.value, &origin, "zip")?),
                Some("variants") => listed = variant_maps(&doc, &part.value, &origin)?,
                _ => {
                    return Err(err(
                        origin,
                        format!("unknown sweep field {}", describe(&part.key)),
                        Some(HELP),
                    ));
                }
            }
        }
        if let Some(first) = zip.first() {
            for a in &zip[1..] {
                if a.values.len() != first.values.len() {
                    return Err(err(
                        a.origin.clone(),
                        format!(
                            "`zip` lists have different lengths: `{}` has {}, `{}` has {}",
                            first.key,
                            first.values.len(),
                            a.key,
                            a.values.len()
                        ),
                        Some(
                            "zip takes its lists pairwise, so they must be of one length; use `grid` for every combination",
                        ),
                    ));
                }
            }
        }
    }
    for s in cli {
        grid.push(cli_axis(s)?);
    }
    // A key swept twice (in two axes, or swept and `--set`) would silently lose one of them.
    let mut seen: Vec<(&str, &Origin)> = set
        .iter()
        .map(|o| {
            (
                o.raw.split_once('=').map_or(o.raw.as_str(), |x| x.0),
                &NO_ORIGIN,
            )
        })
        .collect();
    let listed_keys: Vec<(&str, &Origin)> = listed
        .iter()
        .flatten()
        .map(|v| (lhs(&v.over), &v.origin))
        .collect();
    for (key, origin) in grid
        .iter()
        .chain(&zip)
        .map(|a| (a.key.as_str(), &a.origin))
        .chain(dedup(&listed_keys))
    {
        if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
            let first = if first.file.is_empty() {
                "with --set".to_string()
            } else {
                format!("at {first}")
            };
            return Err(err(
                origin.clone(),
                format!("`{key}` is swept twice (also {first})"),
                Some(
                    "give each key one list: in `grid`, in `zip`, in `variants` or with --sweep, and not with --set",
                ),
            ));
        }
        seen.push((key, origin));
    }
    let mut out: Vec<Vec<SweepValue>> = vec![Vec::new()];
    for axis in &grid {
        out = out
            .iter()
            .flat_map(|v| {
                axis.values
                    .iter()
                    .map(move |x| [v.clone(), vec![x.clone()]].concat())
            })
            .collect();
    }
    if let Some(first) = zip.first() {
        let rows: Vec<Vec<SweepValue>> = (0..first.values.len())
            .map(|i| zip.iter().map(|a| a.values[i].clone()).collect())
            .collect();
        out = out
            .iter()
            .flat_map(|v| rows.iter().map(move |r| [v.clone(), r.clone()].concat()))
            .collect();
    }
    if !listed.is_empty() {
        out = out
            .iter()
            .flat_map(|v| listed.iter().map(move |r| [v.clone(), r.clone()].concat()))
            .collect();
    }
    if out.len() == 1 && out[0].is_empty() {
        return Ok(Vec::new());
    }
    if out.len() > MAX_VARIANTS_UNASKED && !yes {
        return Err(err(
            doc.top("sweep"),
            format!(
                "the sweep has {} variants, more than {MAX_VARIANTS_UNASKED}",
                out.len()
            ),
            Some("check the lists; pass --yes to run them all"),
        ));
    }
    Ok(out)
}

const HELP: &str = "a sweep has `grid:` (key: [values], every combination), `zip:` (key: [values], \
    lists of one length taken pairwise) and `variants:` (a list of {key: value} maps); keys are \
    stage.key or seed/device/dtype, as with --set";

static NO_ORIGIN: Origin = Origin {
    file: String::new(),
    line: 0,
    col: 0,
};

fn lhs(o: &Override) -> &str {
    o.raw.split_once('=').map_or(o.raw.as_str(), |x| x.0)
}

/// Each key of `variants` once (the same key in several maps is one axis).
fn dedup<'a>(keys: &[(&'a str, &'a Origin)]) -> Vec<(&'a str, &'a Origin)> {
    let mut out: Vec<(&str, &Origin)> = Vec::new();
    for k in keys {
        if !out.iter().any(|o| o.0 == k.0) {
            out.push(*k);
        }
    }
    out
}

/// An override of `key` to `value`, as `--set key=value` would make it.
fn override_of(key: &str, value: &Yaml, origin: &Origin) -> Result<SweepValue> {
    let json = param_value(value, key, origin)?;
    let raw = format!("{key}={json}");
    let (target, k) = match key.split_once('.') {
        Some((t, k)) => (Some(t.to_string()), k.to_string()),
        None => (None, key.to_string()),
    };
    Ok(SweepValue {
        over: Override {
            target,
            key: k,
            value: json,
            raw,
        },
        origin: origin.clone(),
    })
}

/// `grid:` or `zip:`: a mapping of key -> non-empty list.
fn axes(doc: &Doc, v: &Yaml, origin: &Origin, what: &str) -> Result<Vec<Axis>> {
    let Some(map) = v.as_mapping() else {
        return Err(err(
            origin.clone(),
            format!("`{what}` must be a mapping of key: [values]"),
            Some(HELP),
        ));
    };
    let mut out = Vec::new();
    for e in map.iter() {
        let at = doc.at(e.at);
        let Some(key) = e.key.as_str() else {
            return Err(err(
                at,
                format!("a `{what}` key must be a string"),
                Some(HELP),
            ));
        };
        let Yaml::Sequence(items) = &e.value else {
            return Err(err(
                at,
                format!(
                    "`{what}.{key}` must be a list of values, not {}",
                    describe(&e.value)
                ),
                Some(HELP),
            ));
        };
        if items.is_empty() {
            return Err(err(
                at,
                format!("`{what}.{key}` is an empty list: it would give no variant"),
                Some("give at least one value, or remove the key"),
            ));
        }
        let values = items
            .iter()
            .map(|x| override_of(key, x, &at))
            .collect::<Result<_>>()?;
        out.push(Axis {
            key: key.to_string(),
            origin: at,
            values,
        });
    }
    Ok(out)
}

/// `variants:`: a non-empty list of mappings key -> value.
fn variant_maps(doc: &Doc, v: &Yaml, origin: &Origin) -> Result<Vec<Vec<SweepValue>>> {
    let Yaml::Sequence(items) = v else {
        return Err(err(
            origin.clone(),
            "`variants` must be a list of {key: value} maps",
            Some(HELP),
        ));
    };
    if items.is_empty() {
        return Err(err(
            origin.clone(),
            "`variants` is an empty list: it would give no variant",
            Some("give at least one map, or remove `variants`"),
        ));
    }
    items
        .iter()
        .map(|item| {
            let Some(map) = item.as_mapping() else {
                return Err(err(
                    origin.clone(),
                    format!(
                        "a variant must be a {{key: value}} map, not {}",
                        describe(item)
                    ),
                    Some(HELP),
                ));
            };
            map.iter()
                .map(|e| {
                    let at = doc.at(e.at);
                    let key = e.key.as_str().ok_or_else(|| {
                        err(at.clone(), "a variant's key must be a string", Some(HELP))
                    })?;
                    override_of(key, &e.value, &at)
                })
                .collect()
        })
        .collect()
}

/// `--sweep key=v1,v2,...`: values split at top-level commas (not inside `[]`, `{}` or quotes),
/// each read as YAML.
fn cli_axis(s: &str) -> Result<Axis> {
    let origin = Origin {
        file: format!("--sweep {s}"),
        ..Default::default()
    };
    let Some((key, list)) = s.split_once('=') else {
        return Err(err(
            origin,
            format!("`{s}` is not of the form stage.key=value1,value2"),
            Some("for example --sweep train.learning_rate=1e-3,3e-4"),
        ));
    };
    let pieces = split_top_level(list);
    if pieces.iter().all(|p| p.trim().is_empty()) {
        return Err(err(
            origin,
            format!("`--sweep {s}` has no values"),
            Some("give one or more values, separated by commas"),
        ));
    }
    let values = pieces
        .iter()
        .map(|p| {
            let o = parse_override(&format!("{key}={p}"))?;
            Ok(SweepValue {
                over: o,
                origin: origin.clone(),
            })
        })
        .collect::<Result<_>>()?;
    Ok(Axis {
        key: key.to_string(),
        origin,
        values,
    })
}

fn split_top_level(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth, mut quote) = (Vec::new(), String::new(), 0i32, None);
    for c in s.chars() {
        match (quote, c) {
            (Some(q), _) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => depth -= 1,
            (None, ',') if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(dir: &Path, sweep: &str) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join("m.yaml");
        std::fs::write(
            &p,
            format!("name: m\nstages:\n  a:\n    kind: command\n    cmd: 'true'\n{sweep}"),
        )
        .unwrap();
        p
    }

    fn raws(v: &[Vec<SweepValue>]) -> Vec<Vec<String>> {
        v.iter()
            .map(|x| x.iter().map(|s| s.over.raw.clone()).collect())
            .collect()
    }

    #[test]
    fn grid_zip_and_variants_compose() {
        let dir = std::env::temp_dir().join(format!("pipe-sweep-{}", std::process::id()));
        let p = manifest(
            &dir,
            "sweep:\n  grid:\n    a.x: [1, 2]\n  zip:\n    a.y: [a, b]\n    a.z: [true, false]\n  variants:\n    - {a.w: 0.5}\n    - {a.w: 1.5}\n",
        );
        let v = variants(&p, &["seed=7,8".to_string()], &[], false).unwrap();
        assert_eq!(v.len(), 2 * 2 * 2 * 2);
        assert_eq!(
            raws(&v)[0],
            ["a.x=1", "seed=7", "a.y=\"a\"", "a.z=true", "a.w=0.5"]
        );
        assert_eq!(
            raws(&v)[15],
            ["a.x=2", "seed=8", "a.y=\"b\"", "a.z=false", "a.w=1.5"]
        );
        // No sweep: no variants.
        let p = manifest(&dir, "");
        assert!(variants(&p, &[], &[], false).unwrap().is_empty());
        assert_eq!(split_top_level("1,[2,3],'a,b'"), ["1", "[2,3]", "'a,b'"]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_sweeps_are_located_errors() {
        let dir = std::env::temp_dir().join(format!("pipe-sweep-bad-{}", std::process::id()));
        let cases = [
            ("sweep:\n  grid:\n    a.x: []\n", "empty list", "m.yaml:8"),
            (
                "sweep:\n  zip:\n    a.x: [1, 2]\n    a.y: [1]\n",
                "different lengths",
                "m.yaml:9",
            ),
            (
                "sweep:\n  grid:\n    a.x: [1, 2]\n  zip:\n    a.x: [1, 2]\n",
                "swept twice",
                "m.yaml:10",
            ),
            (
                "sweep:\n  gird:\n    a.x: [1]\n",
                "unknown sweep field",
                "m.yaml:7",
            ),
            (
                "sweep:\n  grid:\n    a.x: 3\n",
                "must be a list",
                "m.yaml:8",
            ),
        ];
        for (sweep, says, at) in cases {
            let p = manifest(&dir, sweep);
            let e = variants(&p, &[], &[], false).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains(at), "{sweep}: {e}");
        }
        let p = manifest(&dir, "sweep:\n  grid:\n    a.x: [1, 2]\n");
        let set = [parse_override("a.x=3").unwrap()];
        let e = variants(&p, &[], &set, false).unwrap_err().to_string();
        assert!(e.contains("swept twice") && e.contains("--set"), "{e}");
        let e = variants(&p, &["a.x=1,2".into()], &[], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("swept twice"), "{e}");
        let big = format!(
            "sweep:\n  grid:\n    a.x: [{}]\n    a.y: [1, 2]\n",
            (0..501)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let p = manifest(&dir, &big);
        let e = variants(&p, &[], &[], false).unwrap_err().to_string();
        assert!(e.contains("1002 variants") && e.contains("--yes"), "{e}");
        assert_eq!(variants(&p, &[], &[], true).unwrap().len(), 1002);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
