//! A remote store is untrusted input: what a hostile (or broken) writer to the bucket or the
//! shared folder can do to those who pull from it. One table-driven test per class, each on both
//! backends (a shared folder, and S3 through moto) where the class applies to both.

use super::*;
use serde_json::{Value, json};

/// The remote's files as a writer with access to them sees them, bypassing pipe.
enum Raw<'a> {
    Folder(PathBuf),
    S3 { moto: &'a Moto, prefix: String },
}

impl Raw<'_> {
    fn read(&self, rel: &str) -> Vec<u8> {
        match self {
            Raw::Folder(root) => std::fs::read(root.join(rel)).unwrap(),
            Raw::S3 { moto, prefix } => {
                let (status, body) = moto.request("GET", &format!("/{BUCKET}/{prefix}/{rel}"), b"");
                assert_eq!(status, 200, "GET {rel}");
                body
            }
        }
    }

    fn write(&self, rel: &str, bytes: &[u8]) {
        match self {
            Raw::Folder(root) => {
                let path = root.join(rel);
                let _ = std::fs::remove_file(&path);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, bytes).unwrap();
            }
            Raw::S3 { moto, prefix } => {
                let status = moto.http("PUT", &format!("/{BUCKET}/{prefix}/{rel}"), bytes);
                assert_eq!(status, 200, "PUT {rel}");
            }
        }
    }

    fn delete(&self, rel: &str) {
        match self {
            Raw::Folder(root) => std::fs::remove_file(root.join(rel)).unwrap(),
            Raw::S3 { moto, prefix } => {
                let status = moto.http("DELETE", &format!("/{BUCKET}/{prefix}/{rel}"), b"");
                assert_eq!(status, 204, "DELETE {rel}");
            }
        }
    }
}

fn record(key: &str) -> String {
    format!("actions/{key}.json")
}

fn object(hash: &str) -> String {
    format!("objects/{}/{}", &hash[..2], &hash[2..])
}

/// Both backends: a shared folder, and S3 when moto is there (CI has it).
fn backends<'m>(
    sb: &Sandbox,
    moto: Option<&'m Moto>,
    name: &str,
) -> Vec<(RemoteUnderTest, Raw<'m>)> {
    let mut out = vec![(
        file_remote(sb, &format!("remote-{name}")),
        Raw::Folder(sb.dir.join(format!("remote-{name}"))),
    )];
    if let Some(moto) = moto {
        out.push((
            s3_remote(sb, moto, name),
            Raw::S3 {
                moto,
                prefix: name.to_string(),
            },
        ));
    }
    out
}

/// Runs `manifest` on a new store `store-a-<b>` with `--push`: the store and the run's document.
fn pushed(sb: &Sandbox, remote: &RemoteUnderTest, manifest: &str, b: usize) -> (PathBuf, Value) {
    let a = sb.dir.join(format!("store-a-{b}"));
    let args = ["run", manifest, "--push", "--json"];
    let doc = json_of(&pipe_ok(sb, &a, remote, &args, "run --push"));
    (a, doc)
}

/// Three command stages, as in the issue's reproduction: `make` writes a.txt, `use` reads it,
/// `evil` writes the bytes an attacker wants placed.
const COMMANDS: &str = r#"name: poison
stages:
  make:
    kind: command
    cmd: printf made > "$PIPE_OUT/a.txt"
    outs: [a.txt]
  use:
    kind: command
    needs: [make]
    cmd: tr a-z A-Z < "$PIPE_IN_MAKE_A_TXT" > "$PIPE_OUT/b.txt"
    outs: [b.txt]
  evil:
    kind: command
    cmd: printf evil > "$PIPE_OUT/evil.txt"
    outs: [evil.txt]
"#;

/// The tiny pipeline and an export, whose record names files written into `exported/`.
fn with_export() -> String {
    format!(
        "{}  export:\n    kind: export\n    needs: [train]\n    to: exported\n",
        tiny_manifest(10, 5)
    )
}

/// A record's output names are file names on every machine that pulls it: absolute, climbing,
/// nested, option-like, empty, NUL, overlong, undeclared and missing names are all refused; the
/// stage is computed here, nothing is written outside the store, and the bad record never enters
/// the local store.
#[test]
fn poisoned_output_names_write_nothing_and_are_computed_here() {
    let sb = sandbox("trust-names");
    sb.write("commands.yaml", COMMANDS);
    sb.write("export.yaml", &with_export());
    let moto = Moto::start();
    for (b, (remote, raw)) in backends(&sb, moto.as_ref(), "names")
        .into_iter()
        .enumerate()
    {
        let a = sb.dir.join(format!("store-a-{b}"));
        let cmds = json_of(&pipe_ok(
            &sb,
            &a,
            &remote,
            &["run", "commands.yaml", "--push", "--json"],
            "push commands",
        ));
        let exp = json_of(&pipe_ok(
            &sb,
            &a,
            &remote,
            &["run", "export.yaml", "--push", "--json"],
            "push export",
        ));
        let evil = stage(&cmds, "evil")["outputs"]["evil.txt"]
            .as_str()
            .unwrap()
            .to_string();
        let targets = [
            (
                "make",
                stage(&cmds, "make")["key"].as_str().unwrap().to_string(),
            ),
            (
                "export",
                stage(&exp, "export")["key"].as_str().unwrap().to_string(),
            ),
        ];
        let originals: Vec<Vec<u8>> = targets.iter().map(|(_, k)| raw.read(&record(k))).collect();
        let victim = |case: usize| sb.dir.join(format!("victim-{b}-{case}.txt"));
        let climb = |case: usize| format!("{}{}", "../".repeat(16), victim(case).display());
        let cases: Vec<(&str, Option<String>)> = vec![
            ("absolute", Some(victim(0).display().to_string())),
            ("climbing", Some(climb(1))),
            ("nested", Some(format!("sub/victim-{b}-2.txt"))),
            ("option-like", Some("-victim.txt".into())),
            ("dot-dot", Some("..".into())),
            ("empty", Some(String::new())),
            ("NUL", Some("victim\u{0}.txt".into())),
            ("overlong", Some("v".repeat(300))),
            ("undeclared", Some(format!("victim-{b}-8.txt"))),
            ("all outputs missing", None),
        ];
        for (case, (what, name)) in cases.iter().enumerate() {
            for ((_, key), original) in targets.iter().zip(&originals) {
                let mut rec: Value = serde_json::from_slice(original).unwrap();
                match name {
                    Some(n) => {
                        rec["outputs"][n.as_str()] = json!(evil);
                    }
                    None => rec["outputs"] = json!({}),
                }
                raw.write(&record(key), &serde_json::to_vec(&rec).unwrap());
            }
            let fresh = sb.dir.join(format!("store-{b}-{case}"));
            for manifest in ["commands.yaml", "export.yaml"] {
                let out = pipe_ok(&sb, &fresh, &remote, &["run", manifest, "--json"], what);
                let doc = json_of(&out);
                let stderr = String::from_utf8_lossy(&out.stderr);
                let target = if manifest == "commands.yaml" {
                    "make"
                } else {
                    "export"
                };
                assert_eq!(
                    stage(&doc, target)["status"],
                    "executed",
                    "{what}: {doc}\n{stderr}"
                );
                assert!(stderr.contains("ignored"), "{what}: {stderr}");
                let names: Vec<&String> = stage(&doc, target)["outputs"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .collect();
                assert!(
                    !names.iter().any(|n| n.contains("victim")),
                    "{what}: {names:?}"
                );
            }
            // Nothing written outside the store, wherever the names pointed.
            for v in 0..cases.len() {
                assert!(
                    !victim(v).exists(),
                    "{what}: {} was written",
                    victim(v).display()
                );
            }
            assert!(!sb.dir.join("exported").join("sub").exists(), "{what}");
            assert!(
                !sb.dir.join("-victim.txt").exists()
                    && !sb.dir.join("exported/-victim.txt").exists()
            );
            // The local store holds only true records: without the remote, everything is cached.
            let again = json_of(&ok(
                sb.pipe_with_store(&fresh, &["run", "commands.yaml", "--json"]),
                "rerun",
            ));
            assert!(
                statuses(&again).iter().all(|(_, s)| s == "cached"),
                "{what}: {again}"
            );
            assert_eq!(
                stage(&again, "use")["outputs"],
                stage(&cmds, "use")["outputs"],
                "{what}"
            );
            let verify = ok(sb.pipe_with_store(&fresh, &["verify"]), "verify");
            assert!(
                String::from_utf8_lossy(&verify.stdout).contains("all intact"),
                "{what}"
            );
        }
    }
}

/// A record that is well formed but points an output at the wrong object (the data's meta.json
/// at a token file, the checkpoint at the loss plot) is refused before it enters the local store;
/// without the remote, the next run computes nothing it cannot use.
#[test]
fn records_pointing_at_the_wrong_objects_never_enter_the_local_store() {
    let sb = sandbox("trust-wrong");
    let moto = Moto::start();
    for (b, (remote, raw)) in backends(&sb, moto.as_ref(), "wrong")
        .into_iter()
        .enumerate()
    {
        let (_, doc) = pushed(&sb, &remote, "pipeline.yaml", b);
        for (name, output, other) in [
            ("data", "meta.json", "train.bin"),
            ("train", "ckpt", "loss.svg"),
        ] {
            let key = stage(&doc, name)["key"].as_str().unwrap();
            let mut rec: Value = serde_json::from_slice(&raw.read(&record(key))).unwrap();
            rec["outputs"][output] = rec["outputs"][other].clone();
            raw.write(&record(key), &serde_json::to_vec(&rec).unwrap());
        }
        let fresh = sb.dir.join(format!("store-b-{b}"));
        let out = pipe_ok(
            &sb,
            &fresh,
            &remote,
            &["run", "pipeline.yaml", "--json"],
            "pull",
        );
        let got = json_of(&out);
        assert_eq!(stage(&got, "data")["status"], "executed", "{got}");
        assert_eq!(stage(&got, "train")["status"], "executed", "{got}");
        assert_eq!(stage(&got, "model")["status"], "pulled", "{got}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.matches("the remote's record is ignored").count(),
            2,
            "{stderr}"
        );
        assert_eq!(outputs(&got), outputs(&doc));
        let again = json_of(&ok(
            sb.pipe_with_store(&fresh, &["run", "pipeline.yaml", "--json"]),
            "rerun",
        ));
        assert!(
            statuses(&again).iter().all(|(_, s)| s == "cached"),
            "{again}"
        );
    }
}

/// A damaged remote record (not JSON, the record of another key, one whose objects are gone) is
/// replaced by the next push from a store whose record is intact; a healthy one is never
/// overwritten.
#[test]
fn a_push_repairs_damaged_records_and_keeps_healthy_ones() {
    let sb = sandbox("trust-records");
    sb.write("commands.yaml", COMMANDS);
    let moto = Moto::start();
    for (b, (remote, raw)) in backends(&sb, moto.as_ref(), "records")
        .into_iter()
        .enumerate()
    {
        let (a, doc) = pushed(&sb, &remote, "commands.yaml", b);
        let (make, evil) = (stage(&doc, "make"), stage(&doc, "evil"));
        let key = make["key"].as_str().unwrap();
        let a_txt = make["outputs"]["a.txt"].as_str().unwrap();
        for (case, what) in ["not JSON", "another key's record", "its object deleted"]
            .into_iter()
            .enumerate()
        {
            match case {
                0 => raw.write(&record(key), b"{ torn"),
                1 => raw.write(
                    &record(key),
                    &raw.read(&record(evil["key"].as_str().unwrap())),
                ),
                _ => raw.delete(&object(a_txt)),
            }
            // A puller ignores it (with a warning) and computes the stage.
            let fresh = sb.dir.join(format!("store-{b}-{case}"));
            let out = pipe_ok(
                &sb,
                &fresh,
                &remote,
                &["run", "commands.yaml", "--json"],
                what,
            );
            assert_eq!(
                stage(&json_of(&out), "make")["status"],
                "executed",
                "{what}"
            );
            // `pipe push` from the healthy store repairs it.
            let push = pipe_ok(&sb, &a, &remote, &["push"], "push");
            let text = String::from_utf8_lossy(&push.stdout);
            let line = text
                .lines()
                .find(|l| l.starts_with("make:"))
                .unwrap_or_default();
            if what == "its object deleted" {
                assert!(line.contains("1 object"), "{what}: {text}");
            } else {
                assert!(
                    line.contains("damaged record was replaced"),
                    "{what}: {text}"
                );
            }
            let after = sb.dir.join(format!("store-{b}-{case}-after"));
            let doc = json_of(&pipe_ok(
                &sb,
                &after,
                &remote,
                &["run", "commands.yaml", "--json"],
                "pull",
            ));
            assert!(
                statuses(&doc).iter().all(|(_, s)| s == "pulled"),
                "{what}: {doc}"
            );
        }
        // A healthy record stays as it is (byte for byte) however often others push.
        let now = raw.read(&record(key));
        let other = sb.dir.join(format!("store-c-{b}"));
        pipe_ok(
            &sb,
            &other,
            &remote,
            &["run", "commands.yaml", "--push"],
            "another push",
        );
        pipe_ok(&sb, &other, &remote, &["push"], "another push");
        assert_eq!(raw.read(&record(key)), now);
    }
}

/// A damaged remote object, of the same size (a flipped byte: a HEAD would say it is fine) or of
/// another, is replaced by `pipe push` from a store that has it intact.
#[test]
fn pipe_push_repairs_damaged_objects() {
    let sb = sandbox("trust-objects");
    sb.write("commands.yaml", COMMANDS);
    let moto = Moto::start();
    for (b, (remote, raw)) in backends(&sb, moto.as_ref(), "objects")
        .into_iter()
        .enumerate()
    {
        let (a, doc) = pushed(&sb, &remote, "commands.yaml", b);
        let evil = stage(&doc, "evil")["outputs"]["evil.txt"].as_str().unwrap();
        for (case, damaged) in [&b"EVIL"[..], b"evil, and longer"].iter().enumerate() {
            raw.write(&object(evil), damaged);
            let push = pipe_ok(&sb, &a, &remote, &["push"], "push");
            let text = String::from_utf8_lossy(&push.stdout);
            let line = text
                .lines()
                .find(|l| l.starts_with("evil:"))
                .unwrap_or_default();
            assert!(line.contains("1 object"), "case {case}: {text}");
            assert_eq!(raw.read(&object(evil)), b"evil", "case {case}");
            let fresh = sb.dir.join(format!("store-{b}-{case}"));
            let doc = json_of(&pipe_ok(
                &sb,
                &fresh,
                &remote,
                &["run", "commands.yaml", "--json"],
                "pull",
            ));
            assert_eq!(stage(&doc, "evil")["status"], "pulled", "{doc}");
        }
        // Intact objects are not sent again.
        let push = pipe_ok(&sb, &a, &remote, &["push"], "push");
        let text = String::from_utf8_lossy(&push.stdout);
        assert_eq!(text.matches("no new objects").count(), 3, "{text}");
    }
}

/// Reads from a remote are bounded: a FIFO or a link to /dev/zero in a shared folder, a record
/// that is a folder, or an oversized record, gets a clear warning and a local computation, never
/// a hang or a full disk.
#[test]
fn reads_from_a_remote_are_bounded() {
    let sb = sandbox("trust-bounded");
    sb.write("commands.yaml", COMMANDS);
    let moto = Moto::start();
    for (b, (remote, raw)) in backends(&sb, moto.as_ref(), "bounded")
        .into_iter()
        .enumerate()
    {
        let (_, doc) = pushed(&sb, &remote, "commands.yaml", b);
        let (make, evil) = (stage(&doc, "make"), stage(&doc, "evil"));
        // An oversized record (5 MB of JSON), both backends.
        let key = evil["key"].as_str().unwrap();
        let mut big: Value = serde_json::from_slice(&raw.read(&record(key))).unwrap();
        big["metrics"] = json!("x".repeat(5 << 20));
        raw.write(&record(key), &serde_json::to_vec(&big).unwrap());
        let mut cases: Vec<(&str, &str)> = vec![("an oversized record", "evil")];
        if let Raw::Folder(root) = &raw {
            // A FIFO as an object, a link to /dev/zero as another, a folder as a record.
            let a_txt = root.join(object(make["outputs"]["a.txt"].as_str().unwrap()));
            std::fs::remove_file(&a_txt).unwrap();
            assert!(
                Command::new("mkfifo")
                    .arg(&a_txt)
                    .status()
                    .unwrap()
                    .success()
            );
            let b_txt = root.join(object(
                stage(&doc, "use")["outputs"]["b.txt"].as_str().unwrap(),
            ));
            std::fs::remove_file(&b_txt).unwrap();
            std::os::unix::fs::symlink("/dev/zero", &b_txt).unwrap();
            cases.push(("a FIFO object", "make"));
            cases.push(("an object linked to /dev/zero", "use"));
        }
        let fresh = sb.dir.join(format!("store-b-{b}"));
        let mut child = pipe_remote(&sb, &fresh, &remote, &["run", "commands.yaml", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if t0.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                panic!("the run hung on a hostile remote");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = ok(
            child.wait_with_output().unwrap(),
            "run against a hostile remote",
        );
        let got = json_of(&out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        for (what, name) in &cases {
            assert_eq!(
                stage(&got, name)["status"],
                "executed",
                "{what}: {got}\n{stderr}"
            );
        }
        assert!(stderr.contains("refused unread"), "{stderr}");
        assert_eq!(outputs(&got), outputs(&doc));
        // Nothing large was written into the store's tmp/ or objects.
        let size = dir_size(&fresh);
        assert!(size < 1 << 20, "the store grew to {size} bytes");
    }
}

fn dir_size(p: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if meta.is_dir() {
        std::fs::read_dir(p)
            .unwrap()
            .flatten()
            .map(|e| dir_size(&e.path()))
            .sum()
    } else {
        meta.len()
    }
}

/// A URL that is not a remote (a missing bucket, a prefix or folder never initialised) is an
/// error that says so, for `run` and `status` alike, never a remote that misses everything; a
/// missing folder is not created.
#[test]
fn a_missing_bucket_prefix_or_folder_is_an_error() {
    let sb = sandbox("trust-missing");
    let moto = Moto::start();
    let mut cases = vec![(
        "a missing folder",
        RemoteUnderTest {
            url: format!("file://{}", sb.dir.join("unmounted").display()),
            env: vec![],
        },
        "does not exist",
    )];
    if let Some(moto) = &moto {
        cases.push((
            "a missing bucket",
            RemoteUnderTest {
                url: "s3://no-such-bucket/p".into(),
                env: s3_env(&moto.endpoint()),
            },
            "not a pipe remote",
        ));
        cases.push((
            "a prefix never initialised",
            RemoteUnderTest {
                url: format!("s3://{BUCKET}/never-initialised"),
                env: s3_env(&moto.endpoint()),
            },
            "not a pipe remote",
        ));
    }
    for (what, remote, says) in &cases {
        for args in [
            &["run", "pipeline.yaml", "--json"][..],
            &["status", "pipeline.yaml"],
        ] {
            let out = pipe_remote(&sb, &sb.cache(), remote, args)
                .output()
                .unwrap();
            assert!(!out.status.success(), "{what}: {args:?} succeeded");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(text.contains(says), "{what}: {text}");
            assert!(text.contains("pipe remote init"), "{what}: {text}");
        }
        assert!(!sb.dir.join("unmounted").exists(), "{what}");
    }
    // `pipe remote init` on a bucket that does not exist says so.
    if let Some(moto) = &moto {
        let remote = RemoteUnderTest {
            url: "s3://no-such-bucket/p".into(),
            env: s3_env(&moto.endpoint()),
        };
        let out = pipe_remote(&sb, &sb.cache(), &remote, &["remote", "init"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("bucket does not exist"));
    }
}

/// `pipe status` predicts `pulled` only where a pull would succeed: with an object missing from
/// the remote, the stage is stale, and says why.
#[test]
fn status_predicts_a_pull_only_when_the_objects_are_there() {
    let sb = sandbox("trust-status");
    sb.write("commands.yaml", COMMANDS);
    let moto = Moto::start();
    for (b, (remote, raw)) in backends(&sb, moto.as_ref(), "status")
        .into_iter()
        .enumerate()
    {
        let (_, doc) = pushed(&sb, &remote, "commands.yaml", b);
        raw.delete(&object(
            stage(&doc, "evil")["outputs"]["evil.txt"].as_str().unwrap(),
        ));
        let fresh = sb.dir.join(format!("store-b-{b}"));
        let st = json_of(&pipe_ok(
            &sb,
            &fresh,
            &remote,
            &["status", "commands.yaml", "--json"],
            "status",
        ));
        assert_eq!(stage(&st, "make")["status"], "pulled", "{st}");
        assert_eq!(stage(&st, "evil")["status"], "stale", "{st}");
        let reasons = stage(&st, "evil")["reasons"].to_string();
        assert!(reasons.contains("missing"), "{reasons}");
    }
}

/// A 200 MB object through a loopback link throttled to 4 MB/s (50 s, more than object_store's
/// old 30 s limit on a whole request): the pull completes. A link that stops sending fails after
/// the stall timeout, with an error that names it.
#[test]
fn large_objects_move_over_a_slow_link_and_a_stalled_one_fails() {
    let Some(moto) = Moto::start() else { return };
    let sb = sandbox("trust-slow");
    sb.write(
        "big.yaml",
        "name: big\nstages:\n  big:\n    kind: command\n    cmd: head -c 200000000 /dev/urandom > \"$PIPE_OUT/big.bin\"\n    outs: [big.bin]\n",
    );
    let remote = s3_remote(&sb, &moto, "slow");
    let a = sb.dir.join("store-a");
    pipe_ok(
        &sb,
        &a,
        &remote,
        &["run", "big.yaml", "--push"],
        "push 200 MB",
    );
    let slow = Throttle::start(moto.port, 4 << 20, None);
    let through = RemoteUnderTest {
        url: remote.url.clone(),
        env: s3_env(&format!("http://127.0.0.1:{}", slow.port)),
    };
    let t0 = Instant::now();
    let out = pipe_ok(
        &sb,
        &sb.dir.join("store-b"),
        &through,
        &["run", "big.yaml", "--json"],
        "pull 200 MB at 4 MB/s",
    );
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(stage(&json_of(&out), "big")["status"], "pulled");
    assert!(secs > 30.0, "the link was not throttled: {secs:.1} s");
    // Stops after 1 MB: the stall timeout (3 s here) ends it, naming the variable.
    let stalled = Throttle::start(moto.port, 4 << 20, Some(1 << 20));
    let mut through = RemoteUnderTest {
        url: remote.url.clone(),
        env: s3_env(&format!("http://127.0.0.1:{}", stalled.port)),
    };
    through
        .env
        .push(("PIPE_REMOTE_STALL_TIMEOUT".into(), "3".into()));
    let t0 = Instant::now();
    let out = pipe_remote(
        &sb,
        &sb.dir.join("store-c"),
        &through,
        &["run", "big.yaml", "--json"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stage(&json_of(&out), "big")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(err.contains("PIPE_REMOTE_STALL_TIMEOUT"), "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(120),
        "{:?}",
        t0.elapsed()
    );
}

/// A TCP proxy on 127.0.0.1 to `target` whose replies flow at `rate` bytes/s and, with `stop_after`,
/// stop (the connection held open) after that many bytes.
struct Throttle {
    port: u16,
}

impl Throttle {
    fn start(target: u16, rate: usize, stop_after: Option<usize>) -> Throttle {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_in, &mut s_out);
                });
                let (mut s_in, mut c_out) = (server, client);
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    let (mut sent, t0) = (0usize, Instant::now());
                    while let Ok(n) = s_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        if stop_after.is_some_and(|s| sent >= s) {
                            // Held open, silent: a stalled link.
                            std::thread::sleep(Duration::from_secs(300));
                            break;
                        }
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent += n;
                        let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                        if let Some(wait) = due.checked_sub(t0.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                });
            }
        });
        Throttle { port }
    }
}

/// The same checks hold for a local store's records (a store can be copied from anywhere): a
/// record naming an absolute output is set aside and the stage computed; nothing is written
/// where the name pointed.
#[test]
fn a_poisoned_local_record_is_set_aside() {
    let sb = sandbox("trust-local");
    sb.write("commands.yaml", COMMANDS);
    let store = sb.dir.join("store");
    let doc = json_of(&ok(
        sb.pipe_with_store(&store, &["run", "commands.yaml", "--json"]),
        "run",
    ));
    let path = store.join(record(stage(&doc, "make")["key"].as_str().unwrap()));
    let mut rec: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let victim = sb.dir.join("victim.txt");
    rec["outputs"][victim.display().to_string()] =
        stage(&doc, "evil")["outputs"]["evil.txt"].clone();
    std::fs::write(&path, serde_json::to_vec(&rec).unwrap()).unwrap();
    let out = ok(
        sb.pipe_with_store(&store, &["run", "commands.yaml", "--json"]),
        "rerun",
    );
    let again = json_of(&out);
    assert_eq!(stage(&again, "make")["status"], "executed", "{again}");
    assert_eq!(stage(&again, "use")["status"], "cached", "{again}");
    assert!(!victim.exists());
    assert!(String::from_utf8_lossy(&out.stderr).contains("set aside"));
}

/// Smaller defects: an S3 prefix is used exactly as typed (other tools and IAM policies find
/// the data there) and one that cannot be is refused; without credentials, and with the EC2
/// metadata service ruled out, the error says no credentials were found; `remote check` removes a
/// shared folder's staging file left by a push killed over a day ago.
#[test]
fn prefixes_as_typed_missing_credentials_and_stale_uploads() {
    let sb = sandbox("trust-small");
    if let Some(moto) = Moto::start() {
        let remote = s3_remote(&sb, &moto, "ünï sp%20");
        pipe_ok(
            &sb,
            &sb.cache(),
            &remote,
            &["run", "pipeline.yaml", "--push"],
            "push",
        );
        let (status, _) = moto.request(
            "GET",
            &format!("/{BUCKET}/%C3%BCn%C3%AF%20sp%2520/pipe-remote.json"),
            b"",
        );
        assert_eq!(status, 200, "the marker is not under the prefix as typed");
        for bad in ["a//b", "a/../b"] {
            let remote = RemoteUnderTest {
                url: format!("s3://{BUCKET}/{bad}"),
                env: s3_env(&moto.endpoint()),
            };
            let out = pipe_remote(&sb, &sb.cache(), &remote, &["status", "pipeline.yaml"])
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(2), "{bad}");
            assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used as written"));
        }
    }
    let remote = RemoteUnderTest {
        url: "s3://some-bucket/p".into(),
        env: vec![("AWS_EC2_METADATA_DISABLED".into(), "true".into())],
    };
    let out = pipe_remote(&sb, &sb.cache(), &remote, &["status", "pipeline.yaml"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no credentials found"), "{stderr}");

    let remote = file_remote(&sb, "stale");
    let staged = sb.dir.join("stale/objects/ab/cdef#3");
    std::fs::create_dir_all(staged.parent().unwrap()).unwrap();
    std::fs::write(&staged, b"half an object").unwrap();
    let fresh = sb.dir.join("stale/objects/ab/cdef#4");
    std::fs::write(&fresh, b"a push in progress").unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&staged)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let out = pipe_ok(
        &sb,
        &sb.cache(),
        &remote,
        &["remote", "check"],
        "remote check",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("removed a stale partial upload"), "{text}");
    assert!(!staged.exists() && fresh.exists());
}
