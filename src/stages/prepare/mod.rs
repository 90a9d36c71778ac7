//! `prepare`: text in, token streams out (nanoGPT's data/*/prepare.py). Outputs: `train.bin` and
//! `val.bin` (uint16 little-endian) and `meta.json` (the tokenizer).
//!
//! Two cases, as in nanoGPT:
//! - **One text file** (shakespeare_char, shakespeare): a local `path` (used when it exists) or a
//!   `url` pinned by `sha256` (downloaded once, kept in the store), possibly `.gz`/`.zst`. The first
//!   `1 - val_fraction` of it (by characters) is the training split, the rest validation; no
//!   end-of-text token. Its key material is what it always was (`text_sha256`).
//! - **A corpus of documents** (openwebtext): `path` is a folder, a glob, a JSONL file (`field`) or a
//!   Parquet file (`column`); see `crate::data`. GPT-2 tokens, an end-of-text token after each
//!   document, each document to val with probability `val_fraction` (seeded by `seed`), streamed into
//!   the store. The key covers every file's content hash, by name.

mod text;

use super::{Ctx, Produced, resolve_path, typed};
use crate::data::FieldError;
use crate::data::format::{Compression, Format};
use crate::data::parquet::ColumnInfo;
use crate::data::reader::ReadOptions;
use crate::data::source::{self, Corpus};
use crate::data::tokenize::{Settings, tokenize_corpus};
use crate::error::err;
use crate::manifest::StageSpec;
use crate::tokenizer::Tokenizer;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use text::{read_text, sha256_file};

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    Char,
    Gpt2,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
    /// A text file, a folder, or a glob (`openwebtext/*.parquet`).
    #[serde(default)]
    pub path: Option<String>,
    /// How to read the files; inferred from their names when absent.
    #[serde(default)]
    pub format: Option<Format>,
    /// The JSONL field that holds each document ("text" when absent).
    #[serde(default)]
    pub field: Option<String>,
    /// The Parquet column that holds each document ("text" when absent).
    #[serde(default)]
    pub column: Option<String>,
    pub tokenizer: TokenizerKind,
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    /// Seeds the choice of validation documents (a corpus of documents only).
    #[serde(default)]
    pub seed: Option<u64>,
}

fn default_val_fraction() -> f64 {
    0.1
}

/// nanoGPT's openwebtext split seed (`train_test_split(..., seed=2357)`).
pub const DEFAULT_SEED: u64 = 2357;

/// Tokenizer and vocabulary of a prepared data set (nanoGPT's meta.pkl).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Meta {
    pub vocab_size: usize,
    pub tokenizer: Tokenizer,
}

const HELP: &str = "prepare takes `tokenizer` (char or gpt2), `val_fraction`, and either `path` (a text file, a folder, a glob, a JSONL or Parquet file; `format`, `field`, `column`, `seed`) or `url` with its `sha256`";

pub fn params(spec: &StageSpec, p: &serde_json::Map<String, Value>) -> Result<Params> {
    let params: Params = typed(spec, p, HELP)?;
    if params.path.is_none() && params.url.is_none() {
        return Err(err(
            spec.origin.clone(),
            format!("stage `{}` has no text source", spec.name),
            Some("give `path: some/file.txt` or `url: ...` with `sha256: ...`"),
        ));
    }
    if params.url.is_some() && params.sha256.is_none() {
        return Err(err(
            spec.origin_of("url").clone(),
            "a `url` must be pinned with `sha256`",
            Some("add `sha256: <hex digest of the file>` (sha256sum FILE)"),
        ));
    }
    if let Some(h) = params
        .sha256
        .as_ref()
        .filter(|h| h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(err(
            spec.origin_of("sha256").clone(),
            format!("`sha256` must be 64 hex digits, found {h:?}"),
            None,
        ));
    }
    if params.url.is_some()
        && params
            .path
            .as_deref()
            .is_some_and(|p| p.contains(['*', '?', '[']))
    {
        return Err(err(
            spec.origin_of("url").clone(),
            "a `url` gives one text file, but `path` is a glob",
            Some(
                "give either `url` (one text file, with `path` a local copy of it) or `path` (a corpus)",
            ),
        ));
    }
    for (name, value, needs) in [
        ("field", &params.field, Format::Jsonl),
        ("column", &params.column, Format::Parquet),
    ] {
        if let (Some(_), Some(f)) = (value, params.format)
            && f != needs
        {
            return Err(err(
                spec.origin_of(name).clone(),
                format!(
                    "`{name}` is for {} input, but `format` is {}",
                    needs.name(),
                    f.name()
                ),
                Some("remove it"),
            ));
        }
        if value.as_deref() == Some("") {
            return Err(err(
                spec.origin_of(name).clone(),
                format!("`{name}` is empty"),
                Some("name the one that holds the text (the default is `text`)"),
            ));
        }
    }
    if !(params.val_fraction > 0.0 && params.val_fraction < 1.0) {
        return Err(err(
            spec.origin_of("val_fraction").clone(),
            format!(
                "`val_fraction` must be between 0 and 1 (exclusive), found {}",
                params.val_fraction
            ),
            Some("nanoGPT uses 0.1"),
        ));
    }
    Ok(params)
}

/// What `path` (or `url`) names, found with the I/O that takes.
enum DataSource {
    /// One text document: the local file (used when it exists), or the pinned url.
    OneText {
        local: Option<PathBuf>,
        compression: Compression,
    },
    /// Documents: files of a folder or glob, JSONL lines or Parquet rows.
    Corpus {
        corpus: Corpus,
        /// Where the column is in each Parquet file.
        columns: Vec<ColumnInfo>,
    },
}

fn located(spec: &StageSpec, e: FieldError) -> anyhow::Error {
    err(
        spec.origin_of(e.field).clone(),
        e.message,
        e.help.as_deref(),
    )
}

fn describe(c: &Corpus) -> String {
    if c.single_file {
        format!("a {} file", c.format.name())
    } else {
        let n = c.files.len();
        format!(
            "{n} {} file{}",
            c.format.name(),
            if n == 1 { "" } else { "s" }
        )
    }
}

fn input(base: &Path, spec: &StageSpec, params: &Params) -> Result<DataSource> {
    let Some(path) = &params.path else {
        return Ok(DataSource::OneText {
            local: None,
            compression: Compression::None,
        });
    };
    let full = resolve_path(base, path);
    let glob = path.contains(['*', '?', '[']);
    if !glob && !full.exists() && params.url.is_some() {
        return Ok(DataSource::OneText {
            local: None,
            compression: Compression::None,
        });
    }
    let corpus = source::resolve(&full, params.format).map_err(|e| located(spec, e))?;
    if corpus.is_one_text() {
        return Ok(DataSource::OneText {
            local: Some(full),
            compression: corpus.files[0].compression,
        });
    }
    let at = |f: &str| spec.origin_of(f).clone();
    let what = describe(&corpus);
    if corpus.format == Format::Text && corpus.files.len() == 1 {
        return Err(err(
            at("path"),
            format!(
                "`path` matches one text file ({}), and a corpus needs at least two documents",
                corpus.files[0].path.display()
            ),
            Some(
                "to split one text by characters (nanoGPT's shakespeare), give the file itself as `path`",
            ),
        ));
    }
    if params.tokenizer == TokenizerKind::Char {
        return Err(err(
            at("tokenizer"),
            format!("the char tokenizer reads one text file, and `path` names {what}"),
            Some(
                "use `tokenizer: gpt2` for a corpus of documents (nanoGPT's openwebtext), or point `path` at one text file",
            ),
        ));
    }
    for (name, given) in [
        ("url", params.url.is_some()),
        ("sha256", params.sha256.is_some()),
    ] {
        if given {
            return Err(err(
                at(name),
                format!("`{name}` is for one text file, and `path` names {what}"),
                Some("remove it: the stage key covers the content of every file"),
            ));
        }
    }
    for (name, given, needs) in [
        ("field", params.field.is_some(), Format::Jsonl),
        ("column", params.column.is_some(), Format::Parquet),
    ] {
        if given && corpus.format != needs {
            return Err(err(
                at(name),
                format!(
                    "`{name}` is for {} input, and `path` names {what}",
                    needs.name()
                ),
                Some("remove it"),
            ));
        }
    }
    let columns = if corpus.format == Format::Parquet {
        let column = params.column.as_deref().unwrap_or("text");
        corpus
            .files
            .iter()
            .map(|f| crate::data::parquet::inspect(f, column).map_err(|e| located(spec, e)))
            .collect::<Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    Ok(DataSource::Corpus { corpus, columns })
}

/// One text file: the content hash of the local file, else the pinned sha256 (the key material
/// pipe has always used for it). A corpus: every file's blake3 hash by name, in document order.
pub fn key_parts(base: &Path, spec: &StageSpec, params: &Params) -> Result<(Value, Value)> {
    match input(base, spec, params)? {
        DataSource::OneText { local, compression } => {
            let source = match (&local, &params.sha256) {
                (Some(full), _) => {
                    let (sha, len) = sha256_file(full).map_err(|e| {
                        err(
                            spec.origin_of("path").clone(),
                            format!("cannot read {}: {e}", full.display()),
                            None,
                        )
                    })?;
                    if len == 0 {
                        return Err(err(
                            spec.origin_of("path").clone(),
                            format!("the text {} is empty", full.display()),
                            Some(
                                "prepare needs some text to make training and validation tokens from",
                            ),
                        ));
                    }
                    let mut source = json!({ "text_sha256": sha });
                    if compression != Compression::None {
                        source["compression"] = json!(compression);
                    }
                    source
                }
                (None, pinned) => json!({ "text_sha256": pinned.clone().expect("checked") }),
            };
            Ok((
                json!({ "tokenizer": params.tokenizer, "val_fraction": params.val_fraction }),
                source,
            ))
        }
        DataSource::Corpus { corpus, .. } => {
            use rayon::prelude::*;
            let files = corpus
                .files
                .par_iter()
                .map(|f| {
                    source::file_hash(&f.path)
                        .map(|h| json!([f.name, h]))
                        .map_err(|e| {
                            err(
                                spec.origin_of("path").clone(),
                                format!("cannot read {}: {e}", f.path.display()),
                                None,
                            )
                        })
                })
                .collect::<Result<Vec<_>>>()?;
            let mut key = json!({
                "tokenizer": params.tokenizer,
                "val_fraction": params.val_fraction,
                "seed": params.seed.unwrap_or(DEFAULT_SEED),
                "format": corpus.format,
            });
            match corpus.format {
                Format::Jsonl => key["field"] = json!(params.field.as_deref().unwrap_or("text")),
                Format::Parquet => {
                    key["column"] = json!(params.column.as_deref().unwrap_or("text"))
                }
                Format::Text => {}
            }
            Ok((key, json!({ "files": files })))
        }
    }
}

fn u16_bytes(ids: &[u32]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(ids.len() * 2);
    for &i in ids {
        let v = u16::try_from(i).context("token id does not fit in uint16")?;
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

pub fn execute(ctx: &Ctx, p: &Params) -> Result<Produced> {
    match input(&ctx.base_dir, ctx.spec, p)? {
        DataSource::OneText { local, compression } => execute_one_text(ctx, p, local, compression),
        DataSource::Corpus { corpus, columns } => execute_corpus(ctx, p, &corpus, columns),
    }
}

fn execute_one_text(
    ctx: &Ctx,
    p: &Params,
    local: Option<PathBuf>,
    compression: Compression,
) -> Result<Produced> {
    let text = read_text(ctx, p, local, compression)?;
    if text.is_empty() {
        bail!(
            "the text is empty: prepare needs some text to make training and validation tokens from"
        );
    }
    let tok = match p.tokenizer {
        TokenizerKind::Char => Tokenizer::char_from_text(&text),
        TokenizerKind::Gpt2 => Tokenizer::Gpt2,
    };
    let n_chars = text.chars().count();
    let split_char = ((n_chars as f64) * (1.0 - p.val_fraction)) as usize;
    let split_byte = text
        .char_indices()
        .nth(split_char)
        .map_or(text.len(), |x| x.0);
    let (train_text, val_text) = text.split_at(split_byte);
    let train = tok.encode(train_text)?;
    let val = tok.encode(val_text)?;
    let meta = Meta {
        vocab_size: tok.vocab_size(),
        tokenizer: tok,
    };
    ctx.ui.say(&format!(
        "{}: {} characters, vocab {}, train {} tokens, val {} tokens",
        ctx.spec.name,
        n_chars,
        meta.vocab_size,
        train.len(),
        val.len()
    ));
    let outputs = crate::store::outputs([
        ("train.bin", ctx.store.put(&u16_bytes(&train)?)?),
        ("val.bin", ctx.store.put(&u16_bytes(&val)?)?),
        (
            "meta.json",
            ctx.store.put(&serde_json::to_vec_pretty(&meta)?)?,
        ),
    ]);
    Ok(Produced {
        outputs,
        metrics: json!({ "characters": n_chars, "vocab_size": meta.vocab_size, "train_tokens": train.len(), "val_tokens": val.len() }),
        resumed: false,
    })
}

fn millions(n: f64) -> String {
    if n >= 1e9 {
        format!("{:.2}B", n / 1e9)
    } else {
        format!("{:.1}M", n / 1e6)
    }
}

/// A corpus of documents: GPT-2 tokens with an end-of-text token after each document, each
/// document to train or val, streamed into the store (nothing is kept whole in memory).
fn execute_corpus(
    ctx: &Ctx,
    p: &Params,
    corpus: &Corpus,
    columns: Vec<ColumnInfo>,
) -> Result<Produced> {
    // The files must be the ones the key was made from (none added, removed or renamed since).
    let keyed: Vec<(String, String)> = ctx.sources["files"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| Some((f[0].as_str()?.to_string(), f[1].as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let names: Vec<&str> = corpus.files.iter().map(|f| f.name.as_str()).collect();
    if keyed.iter().map(|k| k.0.as_str()).ne(names.iter().copied()) {
        bail!(
            "the files that `path` names changed while pipe was running (one was added, removed or renamed); run again"
        );
    }
    let field = p.field.as_deref().unwrap_or("text");
    let column = p.column.as_deref().unwrap_or("text");
    let opts = ReadOptions {
        field,
        column,
        columns,
        expected: keyed.into_iter().map(|k| k.1).collect(),
    };
    let tok = Tokenizer::Gpt2;
    let enc = crate::tokenizer::gpt2_encoder()?;
    let encode = |text: &str, ids: &mut Vec<u32>| enc.encode_with(text, |id| ids.push(id));
    let settings = Settings {
        encode: &encode,
        eot: tok.eot_token().expect("gpt2 has one"),
        seed: p.seed.unwrap_or(DEFAULT_SEED),
        val_fraction: p.val_fraction,
    };
    let total = corpus.total_bytes();
    ctx.ui.say(&format!(
        "{}: {} ({:.1} MB){}, GPT-2 tokens with end-of-text after each document, val_fraction {}",
        ctx.spec.name,
        describe(corpus),
        total as f64 / 1e6,
        if corpus.skipped > 0 {
            format!(", {} other files skipped", corpus.skipped)
        } else {
            String::new()
        },
        p.val_fraction
    ));
    let pb = ctx.ui.bar(0, total, &ctx.spec.name);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>10} [{bar:30}] {bytes}/{total_bytes} {msg} ({elapsed}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let start = std::time::Instant::now();
    let last_line = std::sync::Mutex::new(start);
    let progress = |bytes: u64, tokens: u64| {
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        let msg = format!(
            "{} tokens, {} tokens/s",
            millions(tokens as f64),
            millions(tokens as f64 / secs)
        );
        pb.set_position(bytes.min(total));
        if pb.is_hidden() {
            // Without a terminal, a line a minute for logs.
            let mut last = last_line.lock().expect("not poisoned");
            if last.elapsed().as_secs() >= 60 {
                *last = std::time::Instant::now();
                ctx.ui.say(&format!(
                    "{}: {:.0}% of the input, {msg}",
                    ctx.spec.name,
                    100.0 * bytes.min(total) as f64 / total.max(1) as f64
                ));
            }
        } else {
            pb.set_message(msg);
        }
    };
    let mut train = ctx.store.writer()?;
    let mut val = ctx.store.writer()?;
    let counts = tokenize_corpus(corpus, &opts, &settings, &mut train, &mut val, &progress);
    pb.finish_and_clear();
    let counts = counts?;
    let secs = start.elapsed().as_secs_f64();
    let meta = Meta {
        vocab_size: tok.vocab_size(),
        tokenizer: tok,
    };
    let outputs = crate::store::outputs([
        ("train.bin", train.commit()?),
        ("val.bin", val.commit()?),
        (
            "meta.json",
            ctx.store.put(&serde_json::to_vec_pretty(&meta)?)?,
        ),
    ]);
    let tokens = counts.train_tokens + counts.val_tokens;
    ctx.ui.say(&format!(
        "{}: {} documents, train {} tokens ({} documents), val {} tokens ({} documents), {:.1}s, {} tokens/s",
        ctx.spec.name,
        counts.documents(),
        counts.train_tokens,
        counts.train_documents,
        counts.val_tokens,
        counts.val_documents,
        secs,
        millions(tokens as f64 / secs.max(1e-9))
    ));
    Ok(Produced {
        outputs,
        metrics: json!({
            "documents": counts.documents(),
            "train_documents": counts.train_documents,
            "val_documents": counts.val_documents,
            "vocab_size": meta.vocab_size,
            "train_tokens": counts.train_tokens,
            "val_tokens": counts.val_tokens,
        }),
        resumed: false,
    })
}
