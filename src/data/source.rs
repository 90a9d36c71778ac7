//! The `path` parameter resolved to files: one file, every file of a folder (recursively) in the
//! format, or the files a glob matches. Documents come in the order of the files' names relative to
//! the folder (or to the glob's fixed prefix), sorted as strings, so the output never depends on
//! the order a directory listing happens to give.

use super::FieldError;
use super::format::{self, Compression, Format};
use std::path::{Path, PathBuf};

/// One input file.
#[derive(Clone, Debug)]
pub struct InputFile {
    pub path: PathBuf,
    /// Relative to the folder or the glob's fixed prefix (the file name for a single file), with
    /// `/` separators: what the stage key and error messages use.
    pub name: String,
    pub compression: Compression,
    pub size: u64,
}

/// What `path` names.
#[derive(Clone, Debug)]
pub struct Corpus {
    pub files: Vec<InputFile>,
    pub format: Format,
    /// `path` named one file (not a folder or a glob).
    pub single_file: bool,
    /// Files of a folder skipped because their names say another format (or none).
    pub skipped: usize,
}

impl Corpus {
    /// One text file: nanoGPT's single-document case (split by characters, no end-of-text token).
    pub fn is_one_text(&self) -> bool {
        self.single_file && self.format == Format::Text
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

fn is_glob(p: &str) -> bool {
    p.contains(['*', '?', '['])
}

const FIX_PATH: &str =
    "relative paths in a manifest are relative to its folder; with --set, to the current directory";

/// Resolves `path` (already joined to the manifest's folder when relative) into files.
/// `format` is the manifest's, if it gives one.
pub fn resolve(path: &Path, format: Option<Format>) -> Result<Corpus, FieldError> {
    let text = path.to_string_lossy().to_string();
    if is_glob(&text) {
        return resolve_glob(&text, format);
    }
    let meta = std::fs::metadata(path).map_err(|e| {
        FieldError::new(
            "path",
            format!("cannot read {}: {}", path.display(), plain(&e)),
        )
        .help(format!("fix the path ({FIX_PATH})"))
    })?;
    if meta.is_dir() {
        return resolve_folder(path, format);
    }
    if !meta.is_file() {
        // A FIFO would block the first read forever, and a device (/dev/zero) never ends.
        return Err(FieldError::new(
            "path",
            format!(
                "{} is not a regular file (a FIFO, device or socket)",
                path.display()
            ),
        )
        .help("give a file, a folder or a glob: pipe hashes what it reads, so it must end"));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| text.clone());
    let (inferred, compression) = format::from_name(&name);
    // A single file whose name says nothing is text, as it always was (e.g. `input`).
    let format = format.or(inferred).unwrap_or(Format::Text);
    check_compression(format, compression, &name)?;
    Ok(Corpus {
        files: vec![InputFile {
            path: path.to_path_buf(),
            name,
            compression,
            size: meta.len(),
        }],
        format,
        single_file: true,
        skipped: 0,
    })
}

fn plain(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or folder".into(),
        _ => e.to_string(),
    }
}

fn check_compression(format: Format, c: Compression, name: &str) -> Result<(), FieldError> {
    if format == Format::Parquet && c != Compression::None {
        return Err(FieldError::new(
            "path",
            format!("{name}: a Parquet file cannot be read compressed as a whole"),
        )
        .help("decompress it (Parquet compresses its pages itself)"));
    }
    Ok(())
}

fn resolve_folder(dir: &Path, format: Option<Format>) -> Result<Corpus, FieldError> {
    let mut all = Vec::new();
    walk(dir, dir, &mut all)?;
    let inferred: Vec<Format> = {
        let mut f: Vec<Format> = all
            .iter()
            .filter_map(|(name, _, _)| format::from_name(name).0)
            .collect();
        f.sort_by_key(|f| f.name());
        f.dedup();
        f
    };
    let format = match (format, inferred.as_slice()) {
        (Some(f), _) => f,
        (None, [one]) => *one,
        (None, []) => {
            return Err(FieldError::new(
                "path",
                format!(
                    "the folder {} has no text, JSONL or Parquet files ({} files, none named *.txt, *.jsonl or *.parquet, optionally .gz or .zst)",
                    dir.display(),
                    all.len()
                ),
            )
            .help("point `path` at the folder that holds the documents, or name the files with a glob (`path: folder/*.md`, `format: text`)"));
        }
        (None, many) => {
            return Err(FieldError::new(
                "path",
                format!(
                    "the folder {} holds files of several formats ({})",
                    dir.display(),
                    many.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
                ),
            )
            .help("say which to read with `format: text|jsonl|parquet`"));
        }
    };
    let total = all.len();
    let mut files = Vec::new();
    for (name, path, size) in all {
        let (f, compression) = format::from_name(&name);
        if f == Some(format) {
            check_compression(format, compression, &name)?;
            files.push(InputFile {
                path,
                name,
                compression,
                size,
            });
        }
    }
    if files.is_empty() {
        return Err(FieldError::new(
            "path",
            format!(
                "the folder {} has no {} files (*.{})",
                dir.display(),
                format.name(),
                format.extensions().join(", *.")
            ),
        )
        .help("point `path` at the folder that holds the documents, or name them with a glob"));
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    let skipped = total - files.len();
    Ok(Corpus {
        files,
        format,
        single_file: false,
        skipped,
    })
}

/// Every regular file under `dir` (following no symlinked folders), skipping hidden entries.
fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf, u64)>) -> Result<(), FieldError> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| FieldError::new("path", format!("cannot list {}: {e}", dir.display())))?;
    for entry in rd {
        let entry = entry
            .map_err(|e| FieldError::new("path", format!("cannot list {}: {e}", dir.display())))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let ft = entry
            .file_type()
            .map_err(|e| FieldError::new("path", format!("cannot read {}: {e}", path.display())))?;
        if ft.is_dir() {
            walk(root, &path, out)?;
        } else if let Ok(meta) = std::fs::metadata(&path)
            && meta.is_file()
        {
            out.push((relative(root, &path), path, meta.len()));
        }
    }
    Ok(())
}

fn relative(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether `path` lies below a symlinked folder under `fixed` (the file itself may be a symlink,
/// as in a folder walk).
fn through_symlinked_folder(fixed: &Path, path: &Path) -> bool {
    let Ok(below) = path.strip_prefix(fixed) else {
        return false;
    };
    let mut at = fixed.to_path_buf();
    let folders = below.components().count().saturating_sub(1);
    below.components().take(folders).any(|c| {
        at.push(c);
        std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink())
    })
}

fn resolve_glob(pattern: &str, format: Option<Format>) -> Result<Corpus, FieldError> {
    let paths = glob::glob(pattern).map_err(|e| {
        FieldError::new("path", format!("`{pattern}` is not a valid glob: {e}")).help(
            "`*` matches within a name, `**` any folders, `?` one character, `[abc]` one of them",
        )
    })?;
    // Names are relative to the pattern's folders before its first wildcard.
    let fixed: PathBuf = Path::new(pattern)
        .components()
        .take_while(|c| !is_glob(&c.as_os_str().to_string_lossy()))
        .collect();
    // The folder walk's rules below the fixed folders: no hidden name, unless the pattern names
    // one itself (`.*.txt`), and nothing read through a symlinked folder (which can loop).
    let asks_for_hidden = Path::new(pattern)
        .components()
        .skip(fixed.components().count())
        .any(|c| c.as_os_str().to_string_lossy().starts_with('.'));
    let mut files = Vec::new();
    let mut kinds = Vec::new();
    for p in paths {
        let path = p.map_err(|e| FieldError::new("path", format!("reading `{pattern}`: {e}")))?;
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let name = relative(&fixed, &path);
        let hidden = name.split('/').any(|part| part.starts_with('.'));
        if !meta.is_file() || through_symlinked_folder(&fixed, &path) || hidden && !asks_for_hidden
        {
            continue;
        }
        let (f, compression) = format::from_name(&name);
        let f = match (format, f) {
            (Some(given), _) => given,
            (None, Some(f)) => f,
            (None, None) => {
                return Err(FieldError::new(
                    "path",
                    format!("`{pattern}` matches {name}, whose name does not say its format"),
                )
                .help("say how to read the files with `format: text|jsonl|parquet`"));
            }
        };
        check_compression(f, compression, &name)?;
        if !kinds.contains(&f) {
            kinds.push(f);
        }
        files.push(InputFile {
            path,
            name,
            compression,
            size: meta.len(),
        });
    }
    if files.is_empty() {
        return Err(
            FieldError::new("path", format!("`{pattern}` matches no files"))
                .help(format!(
                    "download the files first (OpenWebText: see the README, \"Corpora and OpenWebText\"), or fix the pattern ({FIX_PATH})"
                )),
        );
    }
    if kinds.len() > 1 {
        return Err(FieldError::new(
            "path",
            format!(
                "`{pattern}` matches files of several formats ({})",
                kinds
                    .iter()
                    .map(|f| f.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .help("narrow the pattern (e.g. `*.jsonl`), or say how to read them all with `format:`"));
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Corpus {
        files,
        format: kinds[0],
        single_file: false,
        skipped: 0,
    })
}

/// The blake3 hash of a file's bytes: read in 16 MB blocks, each hashed on all cores (a memory map
/// would be as fast, but its pages would count in the process's resident memory, up to the file's
/// size). A plan hashes each source once (`Plan::key_parts`); the reader hashes it again as it
/// reads, to catch a file that changed in between.
pub fn file_hash(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 16 << 20];
    loop {
        let mut n = 0;
        while n < buf.len() {
            let k = file.read(&mut buf[n..])?;
            if k == 0 {
                break;
            }
            n += k;
        }
        if n == 0 {
            break;
        }
        hasher.update_rayon(&buf[..n]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_glob_reads_what_the_folder_walk_reads() {
        let dir = std::env::temp_dir().join(format!("pipe-glob-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let docs = dir.join("docs");
        for f in [
            "a.txt",
            "sub/b.txt",
            ".hidden/c.txt",
            ".d.txt",
            "sub/.e.txt",
        ] {
            let p = docs.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, f).unwrap();
        }
        // A loop back up, and a symlinked folder that leads elsewhere.
        std::os::unix::fs::symlink("..", docs.join("sub/loop")).unwrap();
        std::fs::create_dir_all(dir.join("elsewhere")).unwrap();
        std::fs::write(dir.join("elsewhere/f.txt"), "f").unwrap();
        std::os::unix::fs::symlink(dir.join("elsewhere"), docs.join("link")).unwrap();
        let names = |c: Corpus| c.files.into_iter().map(|f| f.name).collect::<Vec<_>>();
        let by_folder = names(resolve(&docs, None).unwrap());
        assert_eq!(by_folder, ["a.txt", "sub/b.txt"]);
        let by_glob = names(resolve(&docs.join("**/*.txt"), None).unwrap());
        assert_eq!(by_glob, by_folder);
        // A dot written in the pattern still matches hidden names.
        let hidden = names(resolve(&docs.join(".*.txt"), None).unwrap());
        assert_eq!(hidden, [".d.txt"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
