//! `prepare` for real corpora: every input form gives the same tokens for the same documents, GPT-2
//! tokens equal tiktoken's, the one-text-file case is unchanged, and bad input gets a located error
//! with nothing partial left in the store.

mod common;

use common::{Sandbox, SmallDisk};
use pipe::Tokenizer;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

const EOT: u16 = 50256;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// The tiktoken fixture's documents and their ids (made by scripts/make_tiktoken_fixture.py).
fn fixture() -> (Vec<String>, Vec<Vec<u32>>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiktoken");
    let docs = std::fs::read_to_string(dir.join("docs.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let tokens: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokens.json")).unwrap()).unwrap();
    let ids = tokens["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            d.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    (docs, ids)
}

/// What prepare must write for these documents' ids: each followed by end-of-text, to val when
/// `is_val(seed, index)`, and the last training document to val if none was chosen.
fn reference(ids: &[Vec<u32>], seed: u64, val_fraction: f64) -> (Vec<u8>, Vec<u8>) {
    let bytes = |d: &Vec<u32>| -> Vec<u8> {
        d.iter()
            .map(|&i| i as u16)
            .chain([EOT])
            .flat_map(u16::to_le_bytes)
            .collect()
    };
    let val_idx: Vec<usize> = (0..ids.len())
        .filter(|&i| pipe::is_val(seed, i as u64, val_fraction))
        .collect();
    let last_train = (0..ids.len()).rev().find(|i| !val_idx.contains(i));
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, d) in ids.iter().enumerate() {
        if val_idx.contains(&i) || (val_idx.is_empty() && Some(i) == last_train) {
            val.extend(bytes(d));
        } else {
            train.extend(bytes(d));
        }
    }
    (train, val)
}

fn object(sb: &Sandbox, hash: &str) -> Vec<u8> {
    std::fs::read(sb.cache().join("objects").join(&hash[..2]).join(&hash[2..])).unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(bytes, ruzstd::encoding::CompressionLevel::Fastest)
}

fn jsonl(docs: &[String]) -> String {
    docs.iter()
        .map(|d| serde_json::json!({ "id": 1, "text": d }).to_string() + "\n")
        .collect()
}

/// A Parquet file with a `text` column (snappy, in row groups of `group` rows) and an `id` column.
/// A Parquet file whose `text` column is a list of strings (one row: ["a", "b"]).
fn write_list_parquet(path: &Path) {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    let schema = Arc::new(
        parquet::schema::parser::parse_message_type(
            "message doc { optional group text (LIST) { repeated group list { optional binary element (STRING); } } }",
        )
        .unwrap(),
    );
    let props = Arc::new(WriterProperties::builder().build());
    let mut w =
        SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
    let mut rg = w.next_row_group().unwrap();
    let mut col = rg.next_column().unwrap().unwrap();
    let values = [ByteArray::from("a"), ByteArray::from("b")];
    col.typed::<ByteArrayType>()
        .write_batch(&values, Some(&[3, 3]), Some(&[0, 1]))
        .unwrap();
    col.close().unwrap();
    rg.close().unwrap();
    w.close().unwrap();
}

fn write_parquet(path: &Path, docs: &[String], group: usize) {
    use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    let schema = Arc::new(
        parquet::schema::parser::parse_message_type(
            "message doc { optional binary text (STRING); required int64 id; }",
        )
        .unwrap(),
    );
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .build(),
    );
    let mut w =
        SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
    for chunk in docs.chunks(group) {
        let mut rg = w.next_row_group().unwrap();
        let mut col = rg.next_column().unwrap().unwrap();
        let values: Vec<ByteArray> = chunk.iter().map(|d| ByteArray::from(d.as_str())).collect();
        col.typed::<ByteArrayType>()
            .write_batch(&values, Some(&vec![1; chunk.len()]), None)
            .unwrap();
        col.close().unwrap();
        let mut col = rg.next_column().unwrap().unwrap();
        let ids: Vec<i64> = (0..chunk.len() as i64).collect();
        col.typed::<Int64Type>()
            .write_batch(&ids, None, None)
            .unwrap();
        col.close().unwrap();
        rg.close().unwrap();
    }
    w.close().unwrap();
}

fn stage(name: &str, body: &str) -> String {
    format!(
        "  {name}:\n    kind: prepare\n    tokenizer: gpt2\n    val_fraction: 0.2\n    seed: 7\n{body}"
    )
}

#[test]
fn every_input_form_gives_the_same_tokens_as_tiktoken() {
    let sb = Sandbox::new("forms");
    let (docs, ids) = fixture();
    // Each fixture document encodes to tiktoken's ids.
    for (d, want) in docs.iter().zip(&ids) {
        assert_eq!(&Tokenizer::Gpt2.encode(d).unwrap(), want, "{d:?}");
    }
    let half = docs.len() / 2;
    for (i, d) in docs.iter().enumerate() {
        let name = format!("{i:03}.txt");
        sb.write(&format!("folder/{name}"), d);
        std::fs::create_dir_all(sb.dir.join("gz")).unwrap();
        std::fs::write(sb.dir.join(format!("gz/{name}.gz")), gzip(d.as_bytes())).unwrap();
        std::fs::create_dir_all(sb.dir.join("zst")).unwrap();
        std::fs::write(sb.dir.join(format!("zst/{name}.zst")), zstd(d.as_bytes())).unwrap();
    }
    sb.write("folder/.hidden.txt", "not a document");
    sb.write("folder/README.md", "not a document either");
    sb.write("docs.jsonl", &jsonl(&docs));
    // Blank lines are not documents; CRLF line ends are fine.
    sb.write(
        "crlf.jsonl",
        &format!("\n{}\n\n", jsonl(&docs).replace('\n', "\r\n")),
    );
    sb.write("shards/a-0.jsonl", &jsonl(&docs[..half]));
    sb.write("shards/a-1.jsonl", &jsonl(&docs[half..]));
    // Two gzip members and two zstd frames (as `cat a.gz b.gz` and parallel compressors make).
    let (a, b) = (jsonl(&docs[..half]), jsonl(&docs[half..]));
    let mut gz = gzip(a.as_bytes());
    gz.extend(gzip(b.as_bytes()));
    std::fs::write(sb.dir.join("docs.jsonl.gz"), gz).unwrap();
    let mut zst = zstd(a.as_bytes());
    zst.extend(zstd(b.as_bytes()));
    std::fs::write(sb.dir.join("docs.jsonl.zst"), zst).unwrap();
    std::fs::create_dir_all(sb.dir.join("pq")).unwrap();
    write_parquet(&sb.dir.join("pq/part-0.parquet"), &docs[..half], 7);
    write_parquet(&sb.dir.join("pq/part-1.parquet"), &docs[half..], 1000);

    let forms = [
        ("folder", "    path: folder\n"),
        ("folder_gz", "    path: gz\n"),
        ("glob_zst", "    path: zst/*.zst\n    format: text\n"),
        ("jsonl", "    path: docs.jsonl\n    field: text\n"),
        ("crlf", "    path: crlf.jsonl\n"),
        ("shards", "    path: shards/*.jsonl\n"),
        ("jsonl_gz", "    path: docs.jsonl.gz\n"),
        ("jsonl_zst", "    path: docs.jsonl.zst\n"),
        ("parquet", "    path: pq/*.parquet\n    column: text\n"),
        ("parquet_folder", "    path: pq\n"),
    ];
    let mut m = "name: forms\nstages:\n".to_string();
    for (name, body) in forms {
        m.push_str(&stage(name, body));
    }
    sb.write("m.yaml", &m);
    let out = sb.json(&["run", "m.yaml", "--json"]);
    let (train, val) = reference(&ids, 7, 0.2);
    assert!(!val.is_empty() && !train.is_empty());
    for s in out["stages"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        assert_eq!(
            object(&sb, s["outputs"]["train.bin"].as_str().unwrap()),
            train,
            "{name}: train.bin"
        );
        assert_eq!(
            object(&sb, s["outputs"]["val.bin"].as_str().unwrap()),
            val,
            "{name}: val.bin"
        );
        assert_eq!(
            s["metrics"]["documents"].as_u64(),
            Some(docs.len() as u64),
            "{name}"
        );
        let meta = object(&sb, s["outputs"]["meta.json"].as_str().unwrap());
        let meta: serde_json::Value = serde_json::from_slice(&meta).unwrap();
        assert_eq!(meta["vocab_size"], 50257);
    }

    // A rerun is cached; a changed document reruns the stages that read it, and only those.
    let out = sb.json(&["run", "m.yaml", "--json"]);
    assert!(
        out["stages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "cached")
    );
    sb.write("folder/003.txt", "changed");
    let out = sb.json(&["run", "m.yaml", "--json"]);
    for s in out["stages"].as_array().unwrap() {
        let want = if s["name"] == "folder" {
            "executed"
        } else {
            "cached"
        };
        assert_eq!(s["status"], want, "{}", s["name"]);
    }
}

#[test]
fn tokens_do_not_depend_on_the_thread_count() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/tinyshakespeare.txt"),
    )
    .unwrap();
    let docs: Vec<String> = text.split("\n\n").map(str::to_string).collect();
    let mut hashes = Vec::new();
    for threads in ["1", "2", "3"] {
        let sb = Sandbox::new(&format!("threads{threads}"));
        sb.write("d.jsonl", &jsonl(&docs));
        sb.write(
            "m.yaml",
            &format!("name: t\nstages:\n{}", stage("data", "    path: d.jsonl\n")),
        );
        let out = sb.json(&["--threads", threads, "run", "m.yaml", "--json"]);
        hashes.push(out["stages"][0]["outputs"].clone());
    }
    assert_eq!(hashes[0], hashes[1]);
    assert_eq!(hashes[0], hashes[2]);
}

#[test]
fn a_small_corpus_still_gets_a_validation_document() {
    let sb = Sandbox::new("smallval");
    sb.write("f/a.txt", "first document");
    sb.write("f/b.txt", "second document");
    sb.write("f/c.txt", "third document");
    sb.write(
        "m.yaml",
        "name: s\nstages:\n  data:\n    kind: prepare\n    path: f\n    tokenizer: gpt2\n    val_fraction: 0.0005\n",
    );
    let out = sb.json(&["run", "m.yaml", "--json"]);
    let s = &out["stages"][0];
    assert_eq!(s["metrics"]["val_documents"], 1, "{s}");
    assert_eq!(s["metrics"]["train_documents"], 2, "{s}");
    let val = object(&sb, s["outputs"]["val.bin"].as_str().unwrap());
    let mut want: Vec<u8> = Vec::new();
    for id in Tokenizer::Gpt2.encode("third document").unwrap() {
        want.extend((id as u16).to_le_bytes());
    }
    want.extend(EOT.to_le_bytes());
    assert_eq!(val, want);
}

#[test]
fn one_text_file_is_split_by_characters_as_before() {
    let sb = Sandbox::new("onetext");
    let text = "hello world, hello pipe! é\n".repeat(40);
    sb.write("t.txt", &text);
    std::fs::write(sb.dir.join("t.txt.gz"), gzip(text.as_bytes())).unwrap();
    std::fs::write(sb.dir.join("t.txt.zst"), zstd(text.as_bytes())).unwrap();
    sb.write(
        "m.yaml",
        "name: o\nstages:\n  plain:\n    kind: prepare\n    path: t.txt\n    tokenizer: char\n  gz:\n    kind: prepare\n    path: t.txt.gz\n    tokenizer: char\n  zst:\n    kind: prepare\n    path: t.txt.zst\n    tokenizer: char\n  seeded:\n    kind: prepare\n    path: t.txt\n    tokenizer: char\n    seed: 5\n",
    );
    let out = sb.json(&["run", "m.yaml", "--json"]);
    let stages = out["stages"].as_array().unwrap();
    // nanoGPT's shakespeare_char: vocabulary = sorted characters, first 90% of characters train.
    let mut chars: Vec<char> = text.chars().collect();
    chars.sort();
    chars.dedup();
    let enc = |s: &str| -> Vec<u8> {
        s.chars()
            .flat_map(|c| (chars.iter().position(|&x| x == c).unwrap() as u16).to_le_bytes())
            .collect()
    };
    let n = text.chars().count();
    let split: usize = text
        .char_indices()
        .nth((n as f64 * 0.9) as usize)
        .unwrap()
        .0;
    let plain = &stages[0];
    assert_eq!(
        object(&sb, plain["outputs"]["train.bin"].as_str().unwrap()),
        enc(&text[..split])
    );
    assert_eq!(
        object(&sb, plain["outputs"]["val.bin"].as_str().unwrap()),
        enc(&text[split..])
    );
    assert_eq!(plain["metrics"]["characters"], n);
    for s in &stages[1..] {
        assert_eq!(s["outputs"], plain["outputs"], "{}", s["name"]);
    }
    // `seed` does not apply to one text file, so it is not part of its key.
    assert_eq!(stages[3]["key"], plain["key"]);
    let key = |field: &str| {
        let v: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                sb.cache()
                    .join("actions")
                    .join(format!("{}.json", plain["key"].as_str().unwrap())),
            )
            .unwrap(),
        )
        .unwrap();
        v["key_material"][field].clone()
    };
    // The key material pipe has always used for one text file.
    assert_eq!(
        key("params"),
        serde_json::json!({"tokenizer": "char", "val_fraction": 0.1})
    );
    assert_eq!(key("sources").as_object().unwrap().len(), 1);
    assert!(key("sources")["text_sha256"].is_string());
}

/// No temp files and no action record: nothing of a failed stage is left in the store.
fn nothing_left(cache: &Path) {
    for dir in ["tmp", "actions"] {
        let d = cache.join(dir);
        let n = std::fs::read_dir(&d).map(|r| r.count()).unwrap_or(0);
        assert_eq!(n, 0, "{} is not empty", d.display());
    }
}

fn run_failing(sb: &Sandbox, manifest: &str, code: i32, wants: &[&str]) {
    sb.write("bad.yaml", manifest);
    let out = sb.pipe(&["run", "bad.yaml"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    for w in wants {
        assert!(err.contains(w), "wanted {w:?} in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    nothing_left(&sb.cache());
}

#[test]
fn bad_input_is_reported_where_it_is() {
    let sb = Sandbox::new("badinput");
    let head = "name: bad\nstages:\n  data:\n    kind: prepare\n    tokenizer: gpt2\n";
    // A folder without documents: at plan time, at `path`.
    sb.write("notes/a.md", "# notes");
    run_failing(
        &sb,
        &format!("{head}    path: notes\n"),
        2,
        &["bad.yaml:6:", "has no text, JSONL or Parquet files"],
    );
    // A glob that matches nothing.
    run_failing(
        &sb,
        &format!("{head}    path: nowhere/*.jsonl\n"),
        2,
        &["bad.yaml:6:", "matches no files"],
    );
    // A corpus with the char tokenizer, located at `tokenizer`.
    sb.write("two/a.txt", "a");
    sb.write("two/b.txt", "b");
    run_failing(
        &sb,
        "name: bad\nstages:\n  data:\n    kind: prepare\n    path: two\n    tokenizer: char\n",
        2,
        &["bad.yaml:6:", "char tokenizer reads one text file"],
    );
    // `column` with JSONL input.
    sb.write("d.jsonl", "{\"text\": \"a\"}\n");
    run_failing(
        &sb,
        &format!("{head}    path: d.jsonl\n    column: body\n"),
        2,
        &["bad.yaml:7:", "`column` is for parquet input"],
    );
    // A missing Parquet column names the ones there are.
    write_parquet(&sb.dir.join("p.parquet"), &["x".to_string()], 10);
    run_failing(
        &sb,
        &format!("{head}    path: p.parquet\n    column: body\n"),
        2,
        &[
            "bad.yaml:7:",
            "has no column `body`",
            "its columns: text, id",
        ],
    );
    // A list column is not one text per row: said so, at plan time.
    write_list_parquet(&sb.dir.join("list.parquet"));
    run_failing(
        &sb,
        &format!("{head}    path: list.parquet\n"),
        2,
        &[
            "bad.yaml:",
            "column `text` of",
            "is a list, not one text per row",
        ],
    );
    // A line that is not JSON: at run time, naming the file and the line.
    sb.write(
        "broken.jsonl",
        "{\"text\": \"fine\"}\n\n{\"text\": \"also fine\"}\n{\"text\": oops}\n",
    );
    run_failing(
        &sb,
        &format!("{head}    path: broken.jsonl\n"),
        1,
        &["broken.jsonl:4:", "not valid JSON"],
    );
    // A line without the field names the fields it has.
    sb.write("other.jsonl", "{\"body\": \"x\", \"id\": 2}\n");
    run_failing(
        &sb,
        &format!("{head}    path: other.jsonl\n"),
        1,
        &["other.jsonl:1:", "no field `text`", "body, id"],
    );
    // A value of the wrong type: the line, the field and the type, and no stray position.
    sb.write("number.jsonl", "{\"text\": 5}\n");
    run_failing(
        &sb,
        &format!("{head}    path: number.jsonl\n"),
        1,
        &["number.jsonl:1: field `text` is a number, not a string\n"],
    );
    // A truncated .gz.
    let big: String = (0..3000)
        .map(|i| format!("{{\"text\": \"document {i}\"}}\n"))
        .collect();
    let gz = gzip(big.as_bytes());
    std::fs::write(sb.dir.join("cut.jsonl.gz"), &gz[..gz.len() / 2]).unwrap();
    run_failing(
        &sb,
        &format!("{head}    path: cut.jsonl.gz\n"),
        1,
        &["cut.jsonl.gz", "truncated or damaged"],
    );
    // A complete .gz followed by bytes that are not gzip.
    let mut trailing = gz.clone();
    trailing.extend_from_slice(b"not gzip at all");
    std::fs::write(sb.dir.join("tail.jsonl.gz"), &trailing).unwrap();
    run_failing(
        &sb,
        &format!("{head}    path: tail.jsonl.gz\n"),
        1,
        &["tail.jsonl.gz", "followed by bytes that are not gzip"],
    );
    // A truncated .zst.
    let zst = zstd(big.as_bytes());
    std::fs::write(sb.dir.join("cut.jsonl.zst"), &zst[..zst.len() / 2]).unwrap();
    run_failing(
        &sb,
        &format!("{head}    path: cut.jsonl.zst\n"),
        1,
        &[
            "cut.jsonl.zst",
            "zstd: the file ends inside a frame (it is truncated)",
        ],
    );
    // A .zst whose frame is damaged, not cut short: said in words, not as Rust's debug output.
    let mut bad = zstd(big.as_bytes());
    let middle = bad.len() / 2;
    bad[middle..middle + 64].iter_mut().for_each(|b| *b ^= 0x5a);
    std::fs::write(sb.dir.join("bad.jsonl.zst"), &bad).unwrap();
    sb.write("bad.yaml", &format!("{head}    path: bad.jsonl.zst\n"));
    let out = sb.pipe(&["run", "bad.yaml"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("bad.jsonl.zst") && err.contains("zstd: "),
        "{err}"
    );
    assert!(!err.contains("Error {") && !err.contains("kind:"), "{err}");
    // A Parquet file whose snappy pages are damaged: the decoder's message once, in words.
    let docs: Vec<String> = (0..400)
        .map(|i| format!("document {i} {}", "words ".repeat(40)))
        .collect();
    write_parquet(&sb.dir.join("damaged.parquet"), &docs, 1000);
    let mut pq = std::fs::read(sb.dir.join("damaged.parquet")).unwrap();
    pq[200..1200].iter_mut().for_each(|b| *b ^= 0x5a);
    std::fs::write(sb.dir.join("damaged.parquet"), &pq).unwrap();
    sb.write("bad.yaml", &format!("{head}    path: damaged.parquet\n"));
    let out = sb.pipe(&["run", "bad.yaml"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("damaged.parquet: reading column `text`"),
        "{err}"
    );
    assert_eq!(err.matches("snappy: corrupt input").count(), 1, "{err}");
    assert!(!err.contains("External"), "{err}");
    // Text that is not UTF-8.
    std::fs::create_dir_all(sb.dir.join("bin")).unwrap();
    std::fs::write(sb.dir.join("bin/a.txt"), b"ok").unwrap();
    std::fs::write(sb.dir.join("bin/b.txt"), b"caf\xe9").unwrap();
    run_failing(
        &sb,
        &format!("{head}    path: bin\n"),
        1,
        &["b.txt", "not valid UTF-8 (at byte 3)"],
    );
}

#[test]
fn a_disk_that_fills_during_prepare_fails_it_cleanly() {
    let sb = Sandbox::new("prepfull");
    let Some(disk) = SmallDisk::mount(sb.dir.join("small"), "2m") else {
        common::missing("cannot mount a tmpfs here (needs root)");
        return;
    };
    // About 5 MB of tokens: more than the 2 MB disk.
    let docs: Vec<String> = (0..40_000)
        .map(|i| {
            format!(
                "document {i}: {}",
                "a few words, numbers 1 2 3 and more. ".repeat(6)
            )
        })
        .collect();
    sb.write("d.jsonl", &jsonl(&docs));
    sb.write(
        "m.yaml",
        "name: full\nstages:\n  data:\n    kind: prepare\n    path: d.jsonl\n    tokenizer: gpt2\n",
    );
    let store = disk.0.join("cache");
    let out = sb.pipe_with_store(&store, &["run", "m.yaml"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    nothing_left(&store);
}

/// A command stage that rewrites the text a later prepare stage reads: the prepare stage's key is
/// worked out when it runs, from the text the command wrote (a key from before the run would name
/// the old text, and the prepare stage would then find the file changed under it).
#[test]
fn a_prepare_after_a_command_keys_the_text_the_command_wrote() {
    let sb = Sandbox::new("prepare-after-command");
    let new = common::corpus(7_000);
    sb.write("new.txt", &new);
    sb.write("text.txt", &common::corpus(5_000));
    sb.write(
        "m.yaml",
        "name: regen\nstages:\n  gen:\n    kind: command\n    cmd: cp new.txt text.txt && echo ok > $PIPE_OUT/x\n    outs: [x]\n  data:\n    kind: prepare\n    needs: [gen]\n    path: text.txt\n    tokenizer: char\n",
    );
    let out = sb.pipe(&["run", "m.yaml", "--json"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let chars = format!("data: {} characters", new.chars().count());
    assert!(err.contains(&chars), "{err}");
    // The same text again (the command copies the same file): every stage is cached.
    let again = sb.json(&["run", "m.yaml", "--json"]);
    assert_eq!(common::stage(&again, "data")["status"], "cached", "{again}");
}
