//! The reading side of the pipeline (one thread): the corpus's files in order, cut into batches of
//! documents. A batch keeps its documents' bytes in one buffer; JSONL lines are parsed later, in
//! parallel, by the tokenizing side. Each file's raw bytes are hashed on the way and compared with
//! the hash the stage key was made from, so the outputs always match their key.

use super::compress;
use super::format::Format;
use super::parquet::{self, ColumnInfo};
use super::source::{self, Corpus};
use anyhow::{Context, Result, bail};
use std::io::{BufRead, Read};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// A batch is sent when its documents reach this many bytes...
pub const BATCH_BYTES: usize = 8 << 20;
/// ... or this many documents.
pub const BATCH_DOCS: usize = 1 << 16;

/// One document of a batch: `buf[start..end]`, from file `file`, at `at` (the 1-based line of a
/// JSONL file, the 1-based row of a Parquet file, 0 for a text file).
#[derive(Clone, Copy, Debug)]
pub struct Doc {
    pub start: usize,
    pub end: usize,
    pub file: u32,
    pub at: u64,
}

#[derive(Default)]
pub struct Batch {
    pub buf: Vec<u8>,
    pub docs: Vec<Doc>,
}

impl Batch {
    pub fn bytes(&self, d: &Doc) -> &[u8] {
        &self.buf[d.start..d.end]
    }

    fn full(&self) -> bool {
        self.buf.len() >= BATCH_BYTES || self.docs.len() >= BATCH_DOCS
    }
}

/// What to read besides the files themselves.
pub struct ReadOptions<'a> {
    /// JSONL field.
    pub field: &'a str,
    /// Parquet column, and where it is in each file (from `parquet::inspect`).
    pub column: &'a str,
    pub columns: Vec<ColumnInfo>,
    /// Each file's content hash when the key was computed.
    pub expected: Vec<String>,
}

/// Reads every document in order, handing out full batches through `send` (which returns false when
/// the consumer has stopped). `progress` counts raw bytes read.
pub fn read_corpus(
    corpus: &Corpus,
    opts: &ReadOptions,
    progress: Arc<AtomicU64>,
    mut send: impl FnMut(Batch) -> bool,
) -> Result<()> {
    let mut batch = Batch::default();
    for (i, file) in corpus.files.iter().enumerate() {
        let changed = || {
            format!(
                "{} changed while pipe was running (its content no longer matches the stage key); run again",
                file.path.display()
            )
        };
        if corpus.format == Format::Parquet {
            let before = source::file_hash(&file.path)
                .with_context(|| format!("reading {}", file.path.display()))?;
            if opts.expected.get(i).is_some_and(|h| *h != before) {
                bail!(changed());
            }
            let info = &opts.columns[i];
            let mut stopped = false;
            parquet::read_column(file, info, opts.column, &progress, |value, row| {
                let start = batch.buf.len();
                batch.buf.extend_from_slice(value);
                batch.docs.push(Doc {
                    start,
                    end: batch.buf.len(),
                    file: i as u32,
                    at: row + 1,
                });
                if batch.full() && !send(std::mem::take(&mut batch)) {
                    stopped = true;
                    bail!("stopped");
                }
                Ok(())
            })
            .or_else(|e| if stopped { Ok(()) } else { Err(e) })?;
            if stopped {
                return Ok(());
            }
            continue;
        }
        let (mut reader, tap) = compress::open(&file.path, file.compression, progress.clone())
            .with_context(|| format!("reading {}", file.path.display()))?;
        let damaged = |e: std::io::Error| {
            use super::format::Compression;
            let hint = match file.compression {
                Compression::None => "",
                // What flate2 says when a member ends and what follows is not another one.
                Compression::Gzip if e.to_string().contains("invalid gzip header") => {
                    " (its gzip data is followed by bytes that are not gzip: trailing bytes after the last member, or a damaged member; `gzip -t` tells which)"
                }
                _ => " (is the file truncated or damaged?)",
            };
            anyhow::anyhow!("{}: cannot read it: {e}{hint}", file.path.display())
        };
        match corpus.format {
            Format::Text => {
                let start = batch.buf.len();
                reader.read_to_end(&mut batch.buf).map_err(damaged)?;
                batch.docs.push(Doc {
                    start,
                    end: batch.buf.len(),
                    file: i as u32,
                    at: 0,
                });
                if batch.full() && !send(std::mem::take(&mut batch)) {
                    return Ok(());
                }
            }
            Format::Jsonl => {
                let mut line_no = 0u64;
                loop {
                    let start = batch.buf.len();
                    let n = reader.read_until(b'\n', &mut batch.buf).map_err(damaged)?;
                    if n == 0 {
                        break;
                    }
                    line_no += 1;
                    let mut end = batch.buf.len();
                    while end > start && matches!(batch.buf[end - 1], b'\n' | b'\r') {
                        end -= 1;
                    }
                    if batch.buf[start..end].iter().all(u8::is_ascii_whitespace) {
                        batch.buf.truncate(start);
                        continue;
                    }
                    batch.buf.truncate(end);
                    batch.docs.push(Doc {
                        start,
                        end,
                        file: i as u32,
                        at: line_no,
                    });
                    if batch.full() && !send(std::mem::take(&mut batch)) {
                        return Ok(());
                    }
                }
            }
            Format::Parquet => unreachable!("handled above"),
        }
        // The decoders read their input to its end; make sure of it before taking the hash.
        drop(reader);
        if opts.expected.get(i).is_some_and(|h| *h != tap.hash()) {
            bail!(changed());
        }
    }
    if !batch.docs.is_empty() {
        send(batch);
    }
    Ok(())
}
