//! Malformed manifests: each gives its specific error with file and line, exits 2, never panics,
//! and writes nothing to the store.

mod common;
use common::*;

const GOOD_HEAD: &str =
    "name: bad\nstages:\n  data:\n    kind: prepare\n    path: text.txt\n    tokenizer: char\n";

struct Case {
    name: &'static str,
    manifest: String,
    args: &'static [&'static str],
    /// Substrings the error must contain (location first where there is one).
    expect: &'static [&'static str],
}

fn case(name: &'static str, manifest: &str, expect: &'static [&'static str]) -> Case {
    Case {
        name,
        manifest: manifest.to_string(),
        args: &[],
        expect,
    }
}

fn with_model(extra: &str) -> String {
    format!(
        "{GOOD_HEAD}  model:\n    kind: init\n    needs: [data]\n    from: scratch\n    n_layer: 1\n    n_head: 1\n    n_embd: 8\n    block_size: 8\n{extra}"
    )
}

fn cases() -> Vec<Case> {
    let train = |body: &str| {
        with_model(&format!(
            "  train:\n    kind: train\n    needs: [model, data]\n{body}"
        ))
    };
    vec![
        case(
            "max_iters that cannot finish",
            &train("    max_iters: 1000000000000000000\n"),
            &[
                "bad.yaml:",
                "field `max_iters`: 1000000000000000000 cannot finish: at most 100000000 is accepted",
            ],
        ),
        case(
            "train eval_iters that cannot finish",
            &train("    eval_iters: 1000000000000\n"),
            &[
                "bad.yaml:",
                "field `eval_iters`: 1000000000000 cannot finish: at most 1000000",
            ],
        ),
        case(
            "evaluate eval_iters that cannot finish",
            &with_model(
                "  ev:\n    kind: evaluate\n    needs: [model, data]\n    eval_iters: 1000000000000\n",
            ),
            &[
                "bad.yaml:",
                "field `eval_iters`: 1000000000000 cannot finish: at most 1000000",
            ],
        ),
        case(
            "num_samples that cannot finish",
            &with_model(
                "  s:\n    kind: sample\n    needs: [model, data]\n    num_samples: 1000000000\n",
            ),
            &[
                "bad.yaml:",
                "field `num_samples`: 1000000000 cannot finish: at most 100000",
            ],
        ),
        case(
            "max_new_tokens that cannot finish",
            &with_model(
                "  s:\n    kind: sample\n    needs: [model, data]\n    max_new_tokens: 1000000000000\n",
            ),
            &[
                "bad.yaml:",
                "field `max_new_tokens`: 1000000000000 cannot finish: at most 1000000",
            ],
        ),
        case(
            "a count too large for 64 bits",
            &with_model(
                "  train:\n    kind: train\n    needs: [model, data]\n    max_iters: 99999999999999999999\n",
            ),
            &[
                "bad.yaml:",
                "field `max_iters`: 100000000000000000000 is too large: expected a whole number of at most 18446744073709551615",
            ],
        ),
        case(
            "a list, not a manifest",
            "- a\n- b\n",
            &[
                "bad.yaml:1:1:",
                "expected a mapping (the manifest: name, defaults, stages)",
            ],
        ),
        case(
            "aliases that expand without end",
            &format!(
                "a: &a [x,x,x,x,x,x,x,x,x,x]\n{}name: x\nstages: {{}}\n",
                ["b", "c", "d", "e", "f"]
                    .iter()
                    .zip(["a", "b", "c", "d", "e"])
                    .map(|(n, p)| format!("{n}: &{n} [{}]\n", vec![format!("*{p}"); 10].join(",")))
                    .collect::<String>()
            ),
            &[
                "bad.yaml:",
                "the YAML expands to too many nodes (at least 250001",
            ],
        ),
        case(
            "yaml syntax",
            "name: bad\nstages:\n  data:\n    kind: prepare\n   path: [unclosed\n",
            &["bad.yaml:5:", "did not find expected"],
        ),
        case(
            "missing name",
            "stages:\n  data:\n    kind: prepare\n",
            &["missing field `name`"],
        ),
        case(
            "unknown top-level key",
            "name: bad\nstagez:\n  a: {kind: prepare}\nstages:\n  data: {kind: prepare}\n",
            &["bad.yaml:2:", "unknown field `stagez`"],
        ),
        case(
            "empty stages",
            "name: bad\nstages: {}\n",
            &["bad.yaml:2:", "`stages` is empty"],
        ),
        case(
            "stage without kind",
            "name: bad\nstages:\n  data:\n    path: text.txt\n",
            &["bad.yaml:3:", "has no `kind`"],
        ),
        case(
            "unknown kind",
            "name: bad\nstages:\n  data:\n    kind: prepair\n",
            &[
                "bad.yaml:4:",
                "unknown stage kind `prepair`",
                "prepare, init",
            ],
        ),
        case(
            "unknown needs",
            &with_model("  train:\n    kind: train\n    needs: [modle, data]\n"),
            &["bad.yaml:17:", "needs `modle`, which is not a stage"],
        ),
        case(
            "cycle",
            "name: bad\nstages:\n  a:\n    kind: command\n    cmd: 'true'\n    needs: [b]\n  b:\n    kind: command\n    cmd: 'true'\n    needs: [a]\n",
            &["bad.yaml:6:", "cycle: a -> b -> a"],
        ),
        case(
            "needs itself",
            "name: bad\nstages:\n  a:\n    kind: command\n    cmd: 'true'\n    needs: [a]\n",
            &["bad.yaml:6:", "needs itself"],
        ),
        case(
            "unknown train param",
            &train("    max_iter: 10\n"),
            &["bad.yaml:18:", "unknown field `max_iter`", "max_iters"],
        ),
        case(
            "wrong type",
            &train("    max_iters: lots\n"),
            &["bad.yaml:18:", "field `max_iters`", "invalid type"],
        ),
        case(
            "missing data file",
            "name: bad\nstages:\n  data:\n    kind: prepare\n    path: nowhere.txt\n    tokenizer: char\n",
            &["bad.yaml:5:", "cannot read", "nowhere.txt"],
        ),
        case(
            "unknown use",
            "name: bad\nstages:\n  data:\n    use: no_such_definition\n",
            &["bad.yaml:4:", "no stage definition `no_such_definition`"],
        ),
        case(
            "train without data",
            &with_model("  train:\n    kind: train\n    needs: [model]\n"),
            &["bad.yaml:17:", "needs a data stage"],
        ),
        #[cfg(not(feature = "cuda"))]
        case(
            "cuda without the cuda feature",
            &format!("{GOOD_HEAD}defaults:\n  device: cuda\n"),
            &[
                "bad.yaml:7:",
                "built without CUDA support",
                "--features cuda",
            ],
        ),
        case(
            "empty evaluation batch",
            &with_model(
                "  eval:\n    kind: evaluate\n    needs: [model, data]\n    batch_size: 0\n",
            ),
            &["bad.yaml:", "field `batch_size`: must be at least 1"],
        ),
        case(
            "tf32 on the cpu",
            &format!("{GOOD_HEAD}defaults:\n  dtype: tf32\n"),
            &["bad.yaml:7:", "dtype `tf32` needs device: cuda"],
        ),
        case(
            "unknown dtype",
            &format!("{GOOD_HEAD}defaults:\n  dtype: float8\n"),
            &["bad.yaml:7:", "dtype `float8` is not supported", "tf32"],
        ),
        case(
            "bad device",
            &format!("{GOOD_HEAD}defaults:\n  device: tpu\n"),
            &["bad.yaml:7:", "unknown device `tpu`"],
        ),
        case(
            "negative seed",
            &format!("{GOOD_HEAD}defaults:\n  seed: -5\n"),
            &[
                "bad.yaml:8:9:",
                "`defaults.seed` must be a whole number from 0 to",
                "found -5",
            ],
        ),
        case(
            "val_fraction out of range",
            &format!("{GOOD_HEAD}    val_fraction: 1.5\n"),
            &["bad.yaml:7:", "val_fraction"],
        ),
        case(
            "unknown init source",
            &format!("{GOOD_HEAD}  model:\n    kind: init\n    from: gpt5\n"),
            &["bad.yaml:9:", "unknown `from: gpt5`"],
        ),
        case(
            "dropout out of range",
            &train("    dropout: 2\n"),
            &["bad.yaml:18:", "dropout"],
        ),
        case(
            "command output path",
            "name: bad\nstages:\n  c:\n    kind: command\n    cmd: 'true'\n    outs: [../escape.txt]\n",
            &["bad.yaml:6:", "plain file name"],
        ),
        case(
            "stage name read as an option",
            "name: bad\nstages:\n  -h:\n    kind: command\n    cmd: 'true'\n",
            &[
                "bad.yaml:3:",
                "invalid stage name \"-h\"",
                "starting with a letter or digit",
            ],
        ),
        case(
            "stage name too long",
            &format!(
                "name: bad\nstages:\n  {}:\n    kind: command\n    cmd: 'true'\n",
                "s".repeat(65)
            ),
            &["bad.yaml:3:", "invalid stage name", "at most 64 characters"],
        ),
        case(
            "stage is a scalar",
            "name: bad\nstages:\n  data: 42\n",
            &["bad.yaml:3:", "must be a mapping", "the number 42"],
        ),
        case(
            "needs not a list",
            &format!("{GOOD_HEAD}  model:\n    kind: init\n    from: scratch\n    needs: 3\n"),
            &["bad.yaml:10:", "`needs` must be a list"],
        ),
        case(
            "bad sha256",
            "name: bad\nstages:\n  data:\n    kind: prepare\n    url: http://example.invalid/x.txt\n    sha256: abc\n    tokenizer: char\n",
            &["bad.yaml:6:", "64 hex digits"],
        ),
        case(
            "scratch arg on gpt2",
            &format!("{GOOD_HEAD}  model:\n    kind: init\n    from: gpt2\n    n_layer: 3\n"),
            &["bad.yaml:10:", "only applies to `from: scratch`"],
        ),
        case(
            "heads do not divide",
            &format!(
                "{GOOD_HEAD}  model:\n    kind: init\n    from: scratch\n    n_embd: 10\n    n_head: 3\n"
            ),
            &["bad.yaml:7:", "divisible"],
        ),
        Case {
            name: "set unknown stage",
            manifest: GOOD_HEAD.to_string(),
            args: &["--set", "trian.max_iters=5"],
            expect: &[
                "--set trian.max_iters=5",
                "no stage named `trian`",
                "stages in this manifest: data",
            ],
        },
        case(
            "nan parameter",
            &train("    learning_rate: .nan\n"),
            &["bad.yaml:18:", "`learning_rate` is not a finite number"],
        ),
        Case {
            name: "set infinite",
            manifest: train(""),
            args: &["--set", "train.learning_rate=.inf"],
            expect: &[
                "--set train.learning_rate=.inf",
                "`learning_rate` is not a finite number",
            ],
        },
        Case {
            name: "set malformed",
            manifest: GOOD_HEAD.to_string(),
            args: &["--set", "max_iters"],
            expect: &["not of the form stage.key=value"],
        },
        Case {
            name: "set wrong type",
            manifest: train(""),
            args: &["--set", "train.batch_size=big"],
            expect: &[
                "--set train.batch_size=big",
                "field `batch_size`",
                "invalid type",
                "expected a whole number",
            ],
        },
    ]
}

#[test]
fn malformed_manifests_give_located_errors_and_write_nothing() {
    let all = cases();
    assert!(all.len() >= 15);
    for c in all {
        let sb = Sandbox::new(&format!("bad-{}", c.name.replace(' ', "-")));
        sb.write("text.txt", "hello world\n");
        sb.write("bad.yaml", &c.manifest);
        let mut args = vec!["run", "bad.yaml"];
        args.extend_from_slice(c.args);
        let out = sb.pipe(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "case `{}`: exit {:?}, stderr:\n{err}",
            c.name,
            out.status.code()
        );
        assert!(
            !err.contains("panicked"),
            "case `{}` panicked:\n{err}",
            c.name
        );
        for e in c.expect {
            assert!(
                err.contains(e),
                "case `{}`: expected {e:?} in:\n{err}",
                c.name
            );
        }
        assert!(!sb.cache().exists(), "case `{}` wrote to the store", c.name);
        // `status` reports the same problem.
        let mut sargs = vec!["status", "bad.yaml"];
        sargs.extend_from_slice(c.args);
        assert_eq!(
            sb.pipe(&sargs).status.code(),
            Some(2),
            "case `{}`: status",
            c.name
        );
    }
}

#[test]
fn missing_manifest_file_is_a_clear_error() {
    let sb = Sandbox::new("nofile");
    let out = sb.pipe(&["run", "pipelines/nope.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the manifest"));
}

#[test]
fn unknown_run_or_hash_is_a_clear_error() {
    let sb = Sandbox::new("noid");
    let out = sb.pipe(&["show", "20990101"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither a run id nor an object hash"));
    let out = sb.pipe(&["resume", "20990101"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no run"));
}
