//! Text corpora for `prepare`: where the documents are (a file, a folder, a glob), how they are stored
//! (plain text, JSONL, Parquet; `.gz` and `.zst` for the first two), and the pipeline that turns them
//! into token streams: batches of documents read in order, tokenized in parallel, written in order.
//!
//! | file | owns |
//! |---|---|
//! | `format.rs` | formats and compressions, inferred from file names |
//! | `source.rs` | `path` (file, folder or glob) to a sorted list of files; their content hashes |
//! | `compress.rs` | opening a file through its decompressor, hashing and counting the raw bytes |
//! | `jsonl.rs` | one JSONL line to its document (the `field`) |
//! | `parquet.rs` | a Parquet file's `column`: checked from the footer, read row group by row group |
//! | `reader.rs` | the reading thread: files to batches of documents, in order |
//! | `split.rs` | the seeded train/val choice of each document |
//! | `tokenize.rs` | batches tokenized in parallel and written in document order |
//!
//! Layering: nothing here knows about stages, the store or the runner; `stages/prepare.rs` resolves
//! the manifest's parameters into a [`source::Corpus`], and gives [`tokenize::tokenize_corpus`] two
//! `Write` sinks (objects being written into the store).

pub mod compress;
pub mod format;
pub mod jsonl;
pub mod parquet;
pub mod reader;
pub mod source;
pub mod split;
pub mod tokenize;

use std::fmt;

/// A problem with a corpus that the manifest can be pointed at: `field` names the parameter
/// (`path`, `format`, `field`, `column`) whose line the error is reported at.
#[derive(Debug, Clone)]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
    pub help: Option<String>,
}

impl FieldError {
    pub fn new(field: &'static str, message: impl Into<String>) -> FieldError {
        FieldError {
            field,
            message: message.into(),
            help: None,
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> FieldError {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(h) = &self.help {
            write!(f, "\n  help: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldError {}
