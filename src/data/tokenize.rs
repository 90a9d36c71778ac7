//! Corpus to token streams, nanoGPT's openwebtext/prepare.py: each document is encoded
//! (`encode_ordinary`) and followed by the end-of-text token, and goes whole to train or val.
//!
//! Three stages run at once: a thread reads batches of documents ([`super::reader`]), the rayon pool
//! tokenizes each batch's documents in parallel, and a thread writes the tokens in document order.
//! The channels between them hold two batches, so memory is bounded by a few batches whatever the
//! corpus size, and the output bytes depend only on the documents (not on the thread count).

use super::format::Format;
use super::jsonl;
use super::reader::{self, Batch, ReadOptions};
use super::source::Corpus;
use super::split;
use anyhow::{Context, Result, anyhow, bail};
use rayon::prelude::*;
use std::borrow::Cow;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;

/// How documents are tokenized and split.
pub struct Settings<'a> {
    /// Appends a document's token ids to the vector.
    pub encode: &'a (dyn Fn(&str, &mut Vec<u32>) + Sync),
    /// Appended after every document.
    pub eot: u32,
    pub seed: u64,
    pub val_fraction: f64,
}

/// What was written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub train_documents: u64,
    pub val_documents: u64,
    pub train_tokens: u64,
    pub val_tokens: u64,
}

impl Counts {
    pub fn documents(&self) -> u64 {
        self.train_documents + self.val_documents
    }
}

/// Tokenizes the corpus into `train` and `val` (uint16 little-endian). `progress(raw bytes read,
/// tokens written)` is called after each batch.
pub fn tokenize_corpus<W: Write + Send>(
    corpus: &Corpus,
    opts: &ReadOptions,
    settings: &Settings,
    train: &mut W,
    val: &mut W,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Counts> {
    let bytes_read = Arc::new(AtomicU64::new(0));
    let (batch_tx, batch_rx) = sync_channel::<Result<Batch>>(2);
    let (tokens_tx, tokens_rx) = sync_channel::<Vec<Vec<u8>>>(2);
    std::thread::scope(|scope| {
        let read_bytes = bytes_read.clone();
        let reader = scope.spawn(move || {
            let r = reader::read_corpus(corpus, opts, read_bytes, |b| batch_tx.send(Ok(b)).is_ok());
            if let Err(e) = r {
                let _ = batch_tx.send(Err(e));
            }
        });
        let writer = scope.spawn(|| {
            write_in_order(tokens_rx, settings, train, val, &|tokens| {
                progress(bytes_read.load(Ordering::Relaxed), tokens)
            })
        });
        let mut failed = None;
        for batch in batch_rx.iter() {
            let tokens = batch.and_then(|b| tokenize_batch(corpus, opts, settings, &b));
            match tokens {
                Ok(t) => {
                    if tokens_tx.send(t).is_err() {
                        break; // the writer failed: its error is the one to report
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        drop(batch_rx);
        drop(tokens_tx);
        let written = writer
            .join()
            .map_err(|_| anyhow!("the writing thread panicked"))?;
        reader
            .join()
            .map_err(|_| anyhow!("the reading thread panicked"))?;
        match failed {
            Some(e) => Err(e),
            None => written,
        }
    })
}

/// Each document's tokens (uint16 little-endian bytes, end-of-text included), in order; the first
/// bad document (in order) is the error.
fn tokenize_batch(
    corpus: &Corpus,
    opts: &ReadOptions,
    s: &Settings,
    batch: &Batch,
) -> Result<Vec<Vec<u8>>> {
    batch
        .docs
        .par_iter()
        .map_init(Vec::new, |ids, d| {
            let file = &corpus.files[d.file as usize];
            let bytes = batch.bytes(d);
            let text: Cow<str> = match corpus.format {
                Format::Jsonl => jsonl::document(bytes, opts.field)
                    .map_err(|m| anyhow!("{}:{}: {m}", file.path.display(), d.at))?,
                Format::Text | Format::Parquet => {
                    Cow::Borrowed(std::str::from_utf8(bytes).map_err(|e| {
                        let at = if d.at > 0 {
                            format!(", row {}", d.at)
                        } else {
                            String::new()
                        };
                        anyhow!(
                            "{}{at}: not valid UTF-8 (at byte {})",
                            file.path.display(),
                            e.valid_up_to()
                        )
                    })?)
                }
            };
            ids.clear();
            (s.encode)(&text, ids);
            ids.push(s.eot);
            let mut out = Vec::with_capacity(ids.len() * 2);
            for &id in ids.iter() {
                let t = u16::try_from(id).context("token id does not fit in uint16")?;
                out.extend_from_slice(&t.to_le_bytes());
            }
            Ok(out)
        })
        .collect()
}

/// Writes documents in order, each to train or val. The last training document is held back until
/// the next one comes: if no document was chosen for validation by the end, it goes there instead,
/// so a small corpus still gets a validation split.
fn write_in_order<W: Write>(
    batches: std::sync::mpsc::Receiver<Vec<Vec<u8>>>,
    s: &Settings,
    train: &mut W,
    val: &mut W,
    progress: &dyn Fn(u64),
) -> Result<Counts> {
    let mut c = Counts::default();
    let mut index = 0u64;
    let mut held: Option<Vec<u8>> = None;
    for batch in batches {
        for doc in batch {
            if split::is_val(s.seed, index, s.val_fraction) {
                val.write_all(&doc)?;
                c.val_documents += 1;
                c.val_tokens += doc.len() as u64 / 2;
            } else if let Some(prev) = held.replace(doc) {
                train.write_all(&prev)?;
                c.train_documents += 1;
                c.train_tokens += prev.len() as u64 / 2;
            }
            index += 1;
        }
        progress(c.train_tokens + c.val_tokens + held.as_ref().map_or(0, |h| h.len() as u64 / 2));
    }
    if index == 0 {
        bail!("the corpus has no documents");
    }
    if let Some(last) = held {
        let (w, docs, tokens) = if c.val_documents == 0 {
            (&mut *val, &mut c.val_documents, &mut c.val_tokens)
        } else {
            (&mut *train, &mut c.train_documents, &mut c.train_tokens)
        };
        w.write_all(&last)?;
        *docs += 1;
        *tokens += last.len() as u64 / 2;
    }
    if c.train_documents == 0 {
        bail!(
            "no document is left for training ({} document(s), all in validation): lower `val_fraction` or add documents",
            index
        );
    }
    Ok(c)
}
