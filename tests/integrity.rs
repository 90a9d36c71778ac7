//! The store under hostile stages, damaged records, races and misleading input (issue 14): one
//! test per class of failure. Most pipelines here are command stages, so the tests stay fast.

mod common;
use common::*;
use std::path::{Path, PathBuf};

/// A chain of command stages: `make` writes a file, `upper` reads it, `count` reads `upper`'s.
const CHAIN: &str = r#"name: chain
stages:
  make:
    kind: command
    cmd: printf 'hello store\n' > "$PIPE_OUT/a.txt"
    outs: [a.txt]
  upper:
    kind: command
    needs: [make]
    cmd: tr a-z A-Z < "$PIPE_IN_MAKE_A_TXT" > "$PIPE_OUT/b.txt"
    outs: [b.txt]
  count:
    kind: command
    needs: [upper]
    cmd: wc -c < "$PIPE_IN_UPPER_B_TXT" | tr -d ' ' > "$PIPE_OUT/n.txt"
    outs: [n.txt]
"#;

fn object_path(sb: &Sandbox, hash: &str) -> PathBuf {
    sb.cache().join("objects").join(&hash[..2]).join(&hash[2..])
}

fn output(doc: &serde_json::Value, stage_name: &str, name: &str) -> String {
    stage(doc, stage_name)["outputs"][name]
        .as_str()
        .unwrap_or_else(|| panic!("no output {stage_name}/{name} in {doc}"))
        .to_string()
}

fn statuses(doc: &serde_json::Value) -> Vec<String> {
    doc["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap().to_string())
        .collect()
}

/// Overwrites a store object by hand (objects are read-only, so make it writable first).
fn damage(path: &Path, bytes: &[u8]) {
    let mut perm = std::fs::metadata(path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(path, perm).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn a_command_cannot_change_its_inputs_in_the_store() {
    let sb = Sandbox::new("tamper");
    let m = CHAIN.replace(
        r#"cmd: tr a-z A-Z < "$PIPE_IN_MAKE_A_TXT" > "$PIPE_OUT/b.txt""#,
        r#"cmd: echo tampered >> "$PIPE_IN_MAKE_A_TXT"; sed -i s/hello/HELLO/ "$PIPE_IN_MAKE_A_TXT"; cp "$PIPE_IN_MAKE_A_TXT" "$PIPE_OUT/b.txt""#,
    );
    sb.write("m.yaml", &m);
    let out = sb.pipe(&["run", "m.yaml", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(statuses(&doc), ["executed", "failed", "skipped"]);
    let err = stage(&doc, "upper")["error"].as_str().unwrap().to_string();
    assert!(
        err.contains("changed its input $PIPE_IN_MAKE_A_TXT"),
        "{err}"
    );
    // The stored object is untouched and read-only; verify finds nothing wrong.
    let h = output(&doc, "make", "a.txt");
    let path = object_path(&sb, &h);
    assert_eq!(std::fs::read(&path).unwrap(), b"hello store\n");
    assert!(std::fs::metadata(&path).unwrap().permissions().readonly());
    let v = sb.pipe(&["verify"]);
    assert_eq!(
        v.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&v.stdout)
    );
}

/// verify sets aside the records whose own bytes are corrupted (an output or an input), naming the
/// corrupted object; a record built from intact outputs of those stays cached.
#[test]
fn verify_sets_aside_every_record_built_from_a_damaged_object() {
    let sb = Sandbox::new("taint");
    sb.write("m.yaml", CHAIN);
    let first = sb.json(&["run", "m.yaml", "--json"]);
    assert_eq!(statuses(&first), ["executed"; 3]);
    // Damage `make`'s output behind pipe's back.
    damage(
        &object_path(&sb, &output(&first, "make", "a.txt")),
        b"HACKED\n",
    );
    let v = sb.pipe(&["verify"]);
    let report = String::from_utf8_lossy(&v.stdout).to_string();
    assert_eq!(v.status.code(), Some(1), "{report}");
    assert!(report.contains("CORRUPTED object"), "{report}");
    // make's record (its output is corrupted) and upper's (built from it); count was built from
    // upper's intact output.
    assert_eq!(
        report.matches("DAMAGED action record").count(),
        2,
        "{report}"
    );
    let a = output(&first, "make", "a.txt");
    assert!(
        report.contains(&format!("its output `a.txt` ({}) is corrupted", &a[..12]))
            && report.contains(&format!(
                "built from input make/a.txt ({}), which is corrupted",
                &a[..12]
            )),
        "{report}"
    );
    // Nothing built from the damaged bytes stays cached: make and upper run again and give the
    // same bytes as the first time, so count's key is the same and it is reused.
    let again = sb.json(&["run", "m.yaml", "--json"]);
    assert_eq!(statuses(&again), ["executed", "executed", "cached"]);
    assert_eq!(
        output(&again, "count", "n.txt"),
        output(&first, "count", "n.txt")
    );
    let v = sb.pipe(&["verify"]);
    assert_eq!(
        v.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&v.stdout)
    );
}

#[test]
fn damaged_records_are_set_aside_and_never_block_a_run() {
    let sb = Sandbox::new("records");
    sb.write("m.yaml", CHAIN);
    let first = sb.json(&["run", "m.yaml", "--json"]);
    // A truncated action record: the next run warns, reruns that stage, and succeeds.
    let key = stage(&first, "upper")["key"].as_str().unwrap().to_string();
    let record = sb.cache().join("actions").join(format!("{key}.json"));
    std::fs::write(&record, b"{\"key\": \"trunc").unwrap();
    let out = sb.pipe(&["run", "m.yaml", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("is damaged"), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(statuses(&doc), ["cached", "executed", "cached"]);
    assert!(sb.cache().join("damaged").read_dir().unwrap().count() >= 1);
    // An empty record, found by verify (exit 1), then fine.
    std::fs::write(&record, b"").unwrap();
    let v = sb.pipe(&["verify"]);
    let report = String::from_utf8_lossy(&v.stdout).to_string();
    assert_eq!(v.status.code(), Some(1), "{report}");
    assert!(report.contains("not a valid action record"), "{report}");
    // A damaged progress record too.
    let progress = sb
        .cache()
        .join("progress")
        .join(format!("{}.json", "0".repeat(64)));
    std::fs::write(progress, b"[").unwrap();
    let v = sb.pipe(&["verify"]);
    let report = String::from_utf8_lossy(&v.stdout).to_string();
    assert!(report.contains("not a valid progress record"), "{report}");
    assert_eq!(sb.pipe(&["verify"]).status.code(), Some(0));
}

#[test]
fn a_damaged_run_record_hides_no_other_run() {
    let sb = Sandbox::new("runrecord");
    sb.write("m.yaml", CHAIN);
    let a = sb.json(&["run", "m.yaml", "--json"]);
    let b = sb.json(&["run", "m.yaml", "--json"]);
    let bad = a["run_id"].as_str().unwrap();
    let plan = sb.cache().join("runs").join(bad).join("plan.json");
    let text = std::fs::read(&plan).unwrap();
    std::fs::write(&plan, &text[..text.len() / 2]).unwrap();
    let runs = sb.json(&["show", "--json"]);
    let list = runs["runs"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{runs}");
    let status_of = |id: &str| list.iter().find(|r| r["run_id"] == id).unwrap()["status"].clone();
    assert_eq!(status_of(bad), "damaged");
    assert_eq!(status_of(b["run_id"].as_str().unwrap()), "succeeded");
    let out = sb.pipe(&["show", bad]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is damaged"), "{}", stderr(&out));
    let out = sb.pipe(&["resume", bad]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot be resumed"),
        "{}",
        stderr(&out)
    );
    sb.json(&["show", b["run_id"].as_str().unwrap(), "--json"]);
    let gc = sb.pipe(&["gc"]);
    assert!(gc.status.success(), "{}", stderr(&gc));
    let v = sb.pipe(&["verify"]);
    assert!(String::from_utf8_lossy(&v.stdout).contains("run ") && v.status.code() == Some(1));
    assert!(sb.pipe(&["forget", bad]).status.success());
    assert_eq!(
        sb.json(&["show", "--json"])["runs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn gc_in_a_loop_never_breaks_a_starting_run() {
    let sb = Sandbox::new("gcrace");
    sb.write("m.yaml", CHAIN);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let failures: Vec<String> = std::thread::scope(|s| {
        let gc = s.spawn(|| {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 2000 {
                let _ = sb.pipe(&["gc"]);
                n += 1;
            }
        });
        let mut failures = Vec::new();
        for i in 0..12 {
            // A new key each time, so every run writes objects and records.
            let m = CHAIN.replace("hello store", &format!("hello store {i}"));
            sb.write("m.yaml", &m);
            let out = sb.pipe(&["run", "m.yaml"]);
            if !out.status.success() {
                failures.push(stderr(&out));
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        gc.join().unwrap();
        failures
    });
    assert!(
        failures.is_empty(),
        "runs failed while gc ran:\n{failures:#?}"
    );
}

#[test]
fn inputs_whose_variables_collide_are_refused_at_plan_time() {
    let sb = Sandbox::new("collide");
    sb.write(
        "m.yaml",
        "name: c\nstages:\n  a-b:\n    kind: command\n    cmd: echo 1 > $PIPE_OUT/x\n    outs: [x]\n  a_b:\n    kind: command\n    cmd: echo 2 > $PIPE_OUT/x\n    outs: [x]\n  both:\n    kind: command\n    needs: [a-b, a_b]\n    cmd: cat $PIPE_IN_A_B_X\n",
    );
    for cmd in ["run", "status"] {
        let out = sb.pipe(&[cmd, "m.yaml"]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("m.yaml:13:"), "{err}");
        assert!(err.contains("would both be $PIPE_IN_A_B_X"), "{err}");
    }
    assert!(!sb.cache().join("runs").exists());
}

#[test]
fn json_errors_are_json_documents_with_the_same_exit_code() {
    let sb = Sandbox::new("jsonerr");
    sb.write(
        "m.yaml",
        "name: j\nstages:\n  make:\n    kind: command\n    cmd: echo hi\n    outz: []\n",
    );
    let out = sb.pipe(&["run", "m.yaml", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let e = &doc["error"];
    assert!(e["message"].as_str().unwrap().contains("outz"), "{doc}");
    assert!(e["file"].as_str().unwrap().ends_with("m.yaml"), "{doc}");
    assert!(e["line"].as_u64().is_some_and(|l| l >= 3), "{doc}");
    assert!(e["column"].as_u64().is_some(), "{doc}");
    // A failure that is not bad input: exit 1, and still a document.
    let out = sb.pipe(&["show", "20990101", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("neither a run id")
    );
    assert!(doc["error"]["line"].is_null());
}

#[test]
fn export_outside_the_manifest_folder_needs_allow_outside() {
    let sb = Sandbox::new("outside");
    let elsewhere = std::env::temp_dir().join(format!("pipe-outside-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&elsewhere);
    sb.write("text.txt", &corpus(2_000));
    let m = format!(
        "name: o\nstages:\n  data:\n    kind: prepare\n    path: text.txt\n    tokenizer: char\n  model:\n    kind: init\n    needs: [data]\n    from: scratch\n    n_layer: 1\n    n_head: 1\n    n_embd: 8\n    block_size: 8\n  hf:\n    kind: export\n    needs: [model]\n    to: {}\n",
        elsewhere.display()
    );
    sb.write("m.yaml", &m);
    let out = sb.pipe(&["run", "m.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("m.yaml:18:") && err.contains("--allow-outside"),
        "{err}"
    );
    assert!(!elsewhere.exists());
    // Inside the manifest's folder is fine; outside with the flag too.
    let out = sb.pipe(&["run", "m.yaml", "--allow-outside"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(elsewhere.join("config.json").exists());
    std::fs::remove_dir_all(&elsewhere).unwrap();
    sb.write(
        "m.yaml",
        &m.replace(&elsewhere.display().to_string(), "out/hf"),
    );
    assert!(sb.pipe(&["run", "m.yaml"]).status.success());
    assert!(sb.dir.join("out/hf/model.safetensors").exists());
    // `to` naming an existing file: the error names it.
    sb.write("file.txt", "x");
    sb.write(
        "m.yaml",
        &m.replace(&elsewhere.display().to_string(), "file.txt"),
    );
    let out = sb.pipe(&["run", "m.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("file.txt is an existing file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn misleading_inputs_get_messages_that_say_what_is_wrong() {
    let sb = Sandbox::new("messages");
    // A byte-order mark is not part of the YAML.
    sb.write("bom.yaml", &format!("\u{feff}{CHAIN}"));
    let out = sb.pipe(&["status", "bom.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // An empty text fails at prepare, located.
    sb.write("empty.txt", "");
    sb.write(
        "empty.yaml",
        "name: e\nstages:\n  data:\n    kind: prepare\n    path: empty.txt\n    tokenizer: char\n",
    );
    let out = sb.pipe(&["run", "empty.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("empty.yaml:5:") && stderr(&out).contains("is empty"),
        "{}",
        stderr(&out)
    );
    // `use:` naming a folder: located, exit 2.
    std::fs::create_dir_all(sb.dir.join("stages/folder.yaml")).unwrap();
    sb.write("use.yaml", "name: u\nstages:\n  data:\n    use: folder\n");
    let out = sb.pipe(&["run", "use.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("use.yaml:4:")
            && stderr(&out).contains("cannot read the stage definition"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_cached_sample_stage_prints_its_samples_again() {
    let sb = Sandbox::new("cachedsample");
    sb.write("text.txt", &corpus(5_000));
    sb.write("tiny.yaml", &tiny_manifest(4, 2));
    let first = sb.pipe(&["run", "tiny.yaml"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let second = sb.pipe(&["run", "tiny.yaml"]);
    assert!(second.status.success());
    assert!(stderr(&second).contains("sample: cached"));
    let samples = |o: &std::process::Output| {
        let s = String::from_utf8_lossy(&o.stdout).to_string();
        s[..s.find("\nrun ").unwrap_or(s.len())].to_string()
    };
    assert!(
        samples(&first).contains("---------------"),
        "{}",
        samples(&first)
    );
    assert_eq!(samples(&first), samples(&second));
}

#[test]
fn lineage_prints_a_shared_input_once() {
    let sb = Sandbox::new("lineage");
    sb.write("text.txt", &corpus(5_000));
    sb.write("tiny.yaml", &tiny_manifest(2, 2));
    let doc = sb.json(&["run", "tiny.yaml", "--json"]);
    // train needs model and data, and model needs data: data is shared.
    let ckpt = output(&doc, "train", "ckpt");
    let out = sb.pipe(&["show", &ckpt]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(text.matches("<- prepare `data`").count(), 2, "{text}");
    assert_eq!(text.matches("(shown above)").count(), 1, "{text}");
    assert_eq!(text.matches("tokenizer=").count(), 1, "{text}");
}

#[test]
fn a_full_disk_fails_the_stage_and_leaves_nothing_partial() {
    let sb = Sandbox::new("diskfull");
    let Some(disk) = SmallDisk::mount(sb.dir.join("small"), "1m") else {
        missing("cannot mount a tmpfs here (needs root)");
        return;
    };
    sb.write("text.txt", &corpus(700_000));
    sb.write(
        "m.yaml",
        "name: full\nstages:\n  data:\n    kind: prepare\n    path: text.txt\n    tokenizer: char\n",
    );
    let store = disk.0.join("cache");
    let out = sb.pipe_with_store(&store, &["run", "m.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("No space left on device") && err.contains(&store.display().to_string()),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(std::fs::read_dir(store.join("tmp")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(store.join("actions")).unwrap().count(), 0);
}

/// `pipe gc` keeps pinned downloads (it used to remove the downloaded text and its record, so an
/// offline machine could no longer prepare it): after gc, with the server gone, a changed prepare
/// stage reads the text from the store.
#[test]
fn gc_keeps_downloads_for_an_offline_re_prepare() {
    let sb = Sandbox::new("gc-download");
    let served = sb.dir.join("served");
    let text = sb.write("served/t.txt", &corpus(5000));
    let sum = std::process::Command::new("sha256sum")
        .arg(&text)
        .output()
        .expect("sha256sum");
    let sha = String::from_utf8_lossy(&sum.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let mut server = HttpServer::serve(&served);
    let port = server.port;
    sb.write(
        "m.yaml",
        &format!(
            "name: dl\nstages:\n  data:\n    kind: prepare\n    url: http://127.0.0.1:{port}/t.txt\n    sha256: {sha}\n    tokenizer: char\n"
        ),
    );
    let first = sb.pipe(&["run", "m.yaml"]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(stderr(&first).contains("downloading"), "{}", stderr(&first));
    let gc = sb.pipe(&["gc"]);
    assert!(gc.status.success(), "{}", stderr(&gc));
    server.stop();
    let again = sb.pipe(&["run", "m.yaml", "--set", "data.val_fraction=0.2", "--json"]);
    assert!(
        again.status.success(),
        "offline re-prepare: {}",
        stderr(&again)
    );
    assert!(
        !stderr(&again).contains("downloading"),
        "{}",
        stderr(&again)
    );
    let doc: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(stage(&doc, "data")["status"], "executed");
}

/// A tiny HTTP server on 127.0.0.1 that misbehaves by path: `/hang` accepts and never answers,
/// `/404` and `/500` answer with that status, `/short` announces 1000 bytes and sends 10.
fn misbehaving_server() -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut conn = conn;
                let reply = match path.as_str() {
                    "/hang" => {
                        std::thread::sleep(std::time::Duration::from_secs(120));
                        return;
                    }
                    "/404" => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string(),
                    "/500" => "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n".to_string(),
                    _ => "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789".to_string(),
                };
                let _ = conn.write_all(reply.as_bytes());
            });
        }
    });
    port
}

/// Nothing waits forever, and the message says what happened: a download from a server that
/// never answers stops after the stall timeout; HTTP errors and a body cut short are named; a
/// FIFO as `path` is refused before anything reads it; `--threads` has a bound.
#[test]
fn waits_on_the_outside_world_are_bounded_and_named() {
    let sb = Sandbox::new("bounded-waits");
    let port = misbehaving_server();
    let zero = "0".repeat(64);
    for (path, says) in [
        ("hang", "timed out"),
        ("404", "HTTP 404 (not found)"),
        ("500", "HTTP 500 (a server error"),
        ("short", "cut short"),
    ] {
        sb.write(
            "m.yaml",
            &format!(
                "name: dl\nstages:\n  data:\n    kind: prepare\n    url: http://127.0.0.1:{port}/{path}\n    sha256: {zero}\n    tokenizer: char\n"
            ),
        );
        let t0 = std::time::Instant::now();
        let out = sb
            .cmd(&["run", "m.yaml"])
            .env("PIPE_DOWNLOAD_STALL_TIMEOUT", "1")
            .env("PIPE_DOWNLOAD_RETRIES", "0")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{path}: {}", stderr(&out));
        assert!(t0.elapsed().as_secs() < 30, "{path}: {:?}", t0.elapsed());
        assert!(stderr(&out).contains(says), "{path}: {}", stderr(&out));
        assert!(
            !stderr(&out).contains("offline?"),
            "{path}: {}",
            stderr(&out)
        );
    }
    // A FIFO as `path`: run and status refuse it (exit 2, located) instead of blocking.
    let fifo = sb.dir.join("f.txt");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    sb.write(
        "fifo.yaml",
        "name: fifo\nstages:\n  data:\n    kind: prepare\n    path: f.txt\n    tokenizer: char\n",
    );
    for cmd in ["run", "status"] {
        let t0 = std::time::Instant::now();
        let out = sb.pipe(&[cmd, "fifo.yaml"]);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", stderr(&out));
        assert!(t0.elapsed().as_secs() < 30);
        assert!(
            stderr(&out).contains("not a regular file"),
            "{}",
            stderr(&out)
        );
        assert!(stderr(&out).contains("fifo.yaml:5"), "{}", stderr(&out));
    }
    for threads in ["0", "5000"] {
        let out = sb.pipe(&["--threads", threads, "show"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains(&format!("--threads {threads}: expected 1 to 1024")));
    }
}

/// `pipe verify` on a store that is mounted read-only checks everything and changes nothing: a
/// corrupted object is reported and left where it is.
#[test]
fn verify_checks_a_read_only_store_and_changes_nothing() {
    let sb = Sandbox::new("verify-ro");
    let Some(disk) = SmallDisk::mount(sb.dir.join("ro"), "16m") else {
        missing("cannot mount a tmpfs here (needs root)");
        return;
    };
    let store = disk.0.join("cache");
    sb.write("m.yaml", CHAIN);
    let out = sb.pipe_with_store(&store, &["run", "m.yaml", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let a = output(&first, "make", "a.txt");
    let object = store.join("objects").join(&a[..2]).join(&a[2..]);
    damage(&object, b"HACKED\n");
    let remount = std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&disk.0)
        .status()
        .unwrap();
    assert!(remount.success());
    let v = sb.pipe_with_store(&store, &["verify"]);
    let report = String::from_utf8_lossy(&v.stdout).to_string();
    assert_eq!(
        v.status.code(),
        Some(1),
        "{report}{}",
        String::from_utf8_lossy(&v.stderr)
    );
    assert!(
        report.contains("is read-only: verify checks it and changes nothing"),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "CORRUPTED object {a} (left in place: the store is read-only)"
        )),
        "{report}"
    );
    assert!(
        report.contains("left in place (read-only store)"),
        "{report}"
    );
    assert_eq!(std::fs::read(&object).unwrap(), b"HACKED\n");
}

/// While a run is live, `pipe gc` is refused (pointing at `--dry-run`), and `gc --dry-run`, which
/// changes nothing, answers, saying that a run is live.
#[test]
fn gc_dry_run_answers_while_a_run_is_live() {
    let sb = Sandbox::new("gc-live");
    let (started, release) = (sb.dir.join("started"), sb.dir.join("release"));
    sb.write(
        "m.yaml",
        &format!(
            "name: live\nstages:\n  wait:\n    kind: command\n    cmd: touch '{}'; while [ ! -e '{}' ]; do sleep 0.05; done; echo ok > $PIPE_OUT/x\n    outs: [x]\n",
            started.display(),
            release.display()
        ),
    );
    let mut run = sb
        .cmd(&["run", "m.yaml"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !started.exists() {
        assert!(
            t0.elapsed().as_secs() < 60,
            "the run never started its stage"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let gc = sb.pipe(&["gc"]);
    assert_eq!(gc.status.code(), Some(1), "{}", stderr(&gc));
    assert!(
        stderr(&gc).contains("`pipe gc --dry-run` shows what it would remove"),
        "{}",
        stderr(&gc)
    );
    let dry = sb.pipe(&["gc", "--dry-run"]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert!(
        stderr(&dry).contains("note: a run is using the store"),
        "{}",
        stderr(&dry)
    );
    assert!(String::from_utf8_lossy(&dry.stdout).starts_with("would remove "));
    std::fs::write(&release, "").unwrap();
    assert!(run.wait().unwrap().success());
}
