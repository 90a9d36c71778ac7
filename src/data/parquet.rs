//! Parquet input: one document per row, from one string column (Hugging Face's datasets store their
//! text this way, e.g. OpenWebText's `text`). Read with the parquet crate's low-level column reader,
//! one row group at a time, without arrow. What can go wrong in the footer (a missing column, one
//! that is not text, a compression this build cannot read) is found before anything runs.

use super::FieldError;
use super::source::InputFile;
use anyhow::{Context, Result, bail};
use parquet::basic::{Compression, Type as PhysicalType};
use parquet::column::reader::ColumnReader;
use parquet::data_type::ByteArray;
use parquet::file::reader::{FileReader, SerializedFileReader};
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where the documents are in one file.
#[derive(Clone, Debug)]
pub struct ColumnInfo {
    pub index: usize,
}

fn open(file: &InputFile) -> Result<SerializedFileReader<File>, FieldError> {
    let f = File::open(&file.path).map_err(|e| {
        FieldError::new("path", format!("cannot read {}: {e}", file.path.display()))
    })?;
    SerializedFileReader::new(f).map_err(|e| {
        FieldError::new(
            "path",
            format!(
                "{} is not a readable Parquet file: {e}",
                file.path.display()
            ),
        )
    })
}

fn codec(c: Compression) -> &'static str {
    match c {
        Compression::UNCOMPRESSED => "no compression",
        Compression::SNAPPY => "snappy",
        Compression::GZIP(_) => "gzip",
        Compression::LZO => "lzo",
        Compression::BROTLI(_) => "brotli",
        Compression::LZ4 | Compression::LZ4_RAW => "lz4",
        Compression::ZSTD(_) => "zstd",
    }
}

fn supported(c: Compression) -> bool {
    match c {
        Compression::UNCOMPRESSED | Compression::SNAPPY | Compression::GZIP(_) => true,
        Compression::ZSTD(_) => cfg!(feature = "parquet-zstd"),
        _ => false,
    }
}

/// Checks, from the footer, that `column` is a top-level text column this build can read.
pub fn inspect(file: &InputFile, column: &str) -> Result<ColumnInfo, FieldError> {
    let reader = open(file)?;
    let meta = reader.metadata();
    let schema = meta.file_metadata().schema_descr();
    let leaves = schema.columns();
    let index = leaves
        .iter()
        .position(|c| c.path().parts() == [column.to_string()]);
    // A top-level field that is not a leaf: a list (`text: list<string>`) or a struct.
    let nested: Vec<_> = leaves
        .iter()
        .filter(|c| c.path().parts().len() > 1 && c.path().parts()[0] == column)
        .collect();
    if index.is_none() && !nested.is_empty() {
        let what = if nested.iter().any(|c| c.max_rep_level() > 0) {
            "a list, not one text per row"
        } else {
            "a group of fields (a struct), not text"
        };
        return Err(FieldError::new(
            "column",
            format!("column `{column}` of {} is {what}", file.path.display()),
        )
        .help("pipe reads one string column with one document per row: flatten the column first (e.g. explode the list in pandas or DuckDB)"));
    }
    let Some(index) = index else {
        let names: Vec<String> = schema
            .root_schema()
            .get_fields()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        return Err(FieldError::new(
            "column",
            format!(
                "{} has no column `{column}`; its columns: {}",
                file.path.display(),
                names.join(", ")
            ),
        )
        .help("set `column:` to the one that holds the text"));
    };
    let desc = schema.column(index);
    if desc.physical_type() != PhysicalType::BYTE_ARRAY {
        return Err(FieldError::new(
            "column",
            format!(
                "column `{column}` of {} holds {} values, not text",
                file.path.display(),
                desc.physical_type()
            ),
        )
        .help("set `column:` to the one that holds the text"));
    }
    if desc.max_rep_level() > 0 {
        return Err(FieldError::new(
            "column",
            format!(
                "column `{column}` of {} is a list, not one text per row",
                file.path.display()
            ),
        ));
    }
    for rg in meta.row_groups() {
        let c = rg.column(index).compression();
        if !supported(c) {
            let help = if matches!(c, Compression::ZSTD(_)) {
                "build pipe with `--features parquet-zstd` (it compiles the C zstd library), or rewrite the file with snappy compression"
            } else {
                "rewrite the file with snappy, gzip or no compression (e.g. pyarrow.parquet.write_table(t, f, compression='snappy'))"
            };
            return Err(FieldError::new(
                "path",
                format!(
                    "{}: column `{column}` is compressed with {}, which this build cannot read",
                    file.path.display(),
                    codec(c)
                ),
            )
            .help(help));
        }
    }
    Ok(ColumnInfo { index })
}

/// Calls `each(document, row)` for every row of the column, in order (rows count from 0). A null
/// is an error naming its row. `progress` gets each row group's compressed size once it is read.
pub fn read_column(
    file: &InputFile,
    info: &ColumnInfo,
    column: &str,
    progress: &AtomicU64,
    mut each: impl FnMut(&[u8], u64) -> Result<()>,
) -> Result<()> {
    let reader = open(file).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let max_def = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .column(info.index)
        .max_def_level();
    let (mut defs, mut values): (Vec<i16>, Vec<ByteArray>) = (Vec::new(), Vec::new());
    let mut row = 0u64;
    for g in 0..reader.num_row_groups() {
        let group = reader
            .get_row_group(g)
            .map_err(in_words)
            .with_context(|| format!("{}: reading row group {g}", file.path.display()))?;
        let ColumnReader::ByteArrayColumnReader(mut col) = group
            .get_column_reader(info.index)
            .map_err(in_words)
            .with_context(|| format!("{}: reading column `{column}`", file.path.display()))?
        else {
            bail!(
                "{}: column `{column}` is not a text column",
                file.path.display()
            );
        };
        loop {
            defs.clear();
            values.clear();
            let (records, _, levels) = col
                .read_records(1024, Some(&mut defs), None, &mut values)
                .map_err(in_words)
                .with_context(|| {
                    format!(
                        "{}: reading column `{column}` near row {}",
                        file.path.display(),
                        row + 1
                    )
                })?;
            if records == 0 {
                break;
            }
            if max_def == 0 {
                for v in &values {
                    each(v.data(), row)?;
                    row += 1;
                }
            } else {
                let mut next = values.iter();
                for &d in &defs[..levels] {
                    if d < max_def {
                        bail!(
                            "{}: row {}: `{column}` is null",
                            file.path.display(),
                            row + 1
                        );
                    }
                    let v = next
                        .next()
                        .context("a Parquet page has fewer values than rows")?;
                    each(v.data(), row)?;
                    row += 1;
                }
            }
        }
        let size = reader.metadata().row_group(g).compressed_size().max(0) as u64;
        progress.fetch_add(size, Ordering::Relaxed);
    }
    Ok(())
}

/// A Parquet reader's error as one message: a decoder's error inside `External` is shown once
/// (parquet's `External: {e}` and then `e` again as its source printed it twice) and without the
/// variant's name.
fn in_words(e: parquet::errors::ParquetError) -> anyhow::Error {
    match e {
        parquet::errors::ParquetError::External(inner) => anyhow::anyhow!("{inner}"),
        other => anyhow::anyhow!("{other}"),
    }
}
