//! Input formats and compressions, and how they are read off file names.

use serde::{Deserialize, Serialize};

/// How documents are stored in a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The whole file is one document.
    Text,
    /// One JSON object per line; the document is one of its fields.
    Jsonl,
    /// One document per row, from one string column.
    Parquet,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Jsonl => "jsonl",
            Format::Parquet => "parquet",
        }
    }

    /// The extensions that mean this format.
    pub fn extensions(self) -> &'static [&'static str] {
        match self {
            Format::Text => &["txt", "text"],
            Format::Jsonl => &["jsonl", "ndjson"],
            Format::Parquet => &["parquet"],
        }
    }
}

/// A compression wrapped around a text or JSONL file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// The compression (from a last `.gz`, `.zst` or `.zstd`) and the format (from the extension before
/// it) that a file name says, if any. Case is ignored.
pub fn from_name(name: &str) -> (Option<Format>, Compression) {
    let lower = name.to_ascii_lowercase();
    let (stem, compression) = if let Some(s) = lower.strip_suffix(".gz") {
        (s, Compression::Gzip)
    } else if let Some(s) = lower
        .strip_suffix(".zst")
        .or_else(|| lower.strip_suffix(".zstd"))
    {
        (s, Compression::Zstd)
    } else {
        (lower.as_str(), Compression::None)
    };
    let ext = stem.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    let format = [Format::Text, Format::Jsonl, Format::Parquet]
        .into_iter()
        .find(|f| f.extensions().contains(&ext));
    (format, compression)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(from_name("a.txt"), (Some(Format::Text), Compression::None));
        assert_eq!(
            from_name("dir.v2/A.JSONL.GZ"),
            (Some(Format::Jsonl), Compression::Gzip)
        );
        assert_eq!(
            from_name("x.ndjson.zst"),
            (Some(Format::Jsonl), Compression::Zstd)
        );
        assert_eq!(
            from_name("train-00000-of-00080.parquet"),
            (Some(Format::Parquet), Compression::None)
        );
        assert_eq!(from_name("input"), (None, Compression::None));
        assert_eq!(from_name("notes.md.gz"), (None, Compression::Gzip));
    }
}
