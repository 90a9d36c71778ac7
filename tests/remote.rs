//! The remote store (`--features remote`): push from one store, pull into another, against a
//! shared folder (`file://`) and a real S3 API on loopback (moto_server, which .ci/run installs).
//! Without moto_server the S3 half is skipped with a message, except under CI, where it fails.
#![cfg(feature = "remote")]

mod common;
#[path = "remote/trust.rs"]
mod trust;

use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BUCKET: &str = "pipe-test";

/// A moto S3 server on 127.0.0.1, stopped when dropped.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    /// Starts `moto_server` ($PIPE_TEST_MOTO, next to $PIPE_TEST_PYTHON, or on PATH) with one
    /// bucket. None (and a message) when there is none, outside CI.
    fn start() -> Option<Moto> {
        let candidates: Vec<PathBuf> = [
            std::env::var_os("PIPE_TEST_MOTO").map(PathBuf::from),
            std::env::var_os("PIPE_TEST_PYTHON")
                .map(|p| PathBuf::from(p).with_file_name("moto_server")),
            Some(PathBuf::from("moto_server")),
        ]
        .into_iter()
        .flatten()
        .collect();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = candidates.iter().find_map(|bin| {
            Command::new(bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()
        });
        let Some(child) = child else {
            assert!(
                std::env::var_os("CI").is_none(),
                "moto_server not found (tried {candidates:?}); .ci/run installs moto[server]"
            );
            eprintln!("skipped the S3 half: no moto_server (pip install 'moto[server]>=5.2.1')");
            return None;
        };
        let moto = Moto { child, port };
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "moto_server did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let status = moto.http("PUT", &format!("/{BUCKET}"), b"");
        assert_eq!(status, 200, "creating the bucket");
        Some(moto)
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One plain HTTP request; the status code. moto checks that an Authorization header is
    /// there (for some requests), not its signature.
    fn http(&self, method: &str, path: &str, body: &[u8]) -> u16 {
        self.request(method, path, body).0
    }

    /// One plain HTTP request (as a writer with access to the bucket makes it, bypassing pipe):
    /// the status code and the body.
    fn request(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential=testing/20261129/us-east-1/s3/aws4_request, \
             SignedHeaders=host, Signature=0\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        )
        .unwrap();
        s.write_all(body).unwrap();
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        let split = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(resp.len(), |i| i + 4);
        let head = String::from_utf8_lossy(&resp[..split]);
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, resp[split..].to_vec())
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A remote for one test: its URL and the environment pipe needs for it.
struct RemoteUnderTest {
    url: String,
    env: Vec<(String, String)>,
}

/// A new shared-folder remote, initialised (`pipe remote init`).
fn file_remote(sb: &Sandbox, name: &str) -> RemoteUnderTest {
    let remote = RemoteUnderTest {
        url: format!("file://{}", sb.dir.join(name).display()),
        env: vec![],
    };
    init(sb, &remote);
    remote
}

/// A new S3 remote under `prefix` in moto's bucket, initialised.
fn s3_remote(sb: &Sandbox, moto: &Moto, prefix: &str) -> RemoteUnderTest {
    let remote = RemoteUnderTest {
        url: format!("s3://{BUCKET}/{prefix}"),
        env: s3_env(&moto.endpoint()),
    };
    init(sb, &remote);
    remote
}

fn init(sb: &Sandbox, remote: &RemoteUnderTest) {
    let out = pipe_ok(sb, &sb.cache(), remote, &["remote", "init"], "remote init");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("initialised"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn s3_env(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", endpoint),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// `pipe --cache STORE --remote URL ARGS` in the sandbox.
fn pipe_remote(sb: &Sandbox, store: &Path, remote: &RemoteUnderTest, args: &[&str]) -> Command {
    let bin = std::env::var_os("PIPE_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_pipe").into());
    let mut c = Command::new(bin);
    c.arg("--cache")
        .arg(store)
        .arg("--remote")
        .arg(&remote.url)
        .args(args)
        .current_dir(&sb.dir)
        .env_remove("PIPE_CACHE")
        .env_remove("PIPE_REMOTE")
        .env_remove("RUST_LOG")
        .envs(remote.env.iter().map(|(k, v)| (k, v)));
    c
}

/// `pipe_remote` run to completion, which must succeed.
fn pipe_ok(
    sb: &Sandbox,
    store: &Path,
    remote: &RemoteUnderTest,
    args: &[&str],
    what: &str,
) -> Output {
    ok(pipe_remote(sb, store, remote, args).output().unwrap(), what)
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

fn json_of(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn sandbox(name: &str) -> Sandbox {
    let sb = Sandbox::new(name);
    sb.write("text.txt", &corpus(3000));
    sb.write("pipeline.yaml", &tiny_manifest(20, 10));
    sb
}

/// The object file of `hash` in a file:// remote (or a local store: the layout is the same).
fn remote_object(root: &Path, hash: &str) -> PathBuf {
    root.join("objects").join(&hash[..2]).join(&hash[2..])
}

/// Store A runs and pushes; an empty store B with the same remote pulls every stage, computes
/// none, and ends with the same bytes; `status` on a third store predicts the pulls.
fn push_then_pull(sb: &Sandbox, remote: &RemoteUnderTest) {
    let a = sb.dir.join("store-a");
    let run_a = pipe_ok(
        sb,
        &a,
        remote,
        &["run", "pipeline.yaml", "--push", "--json"],
        "run --push",
    );
    let doc_a = json_of(&run_a);
    assert!(
        statuses(&doc_a).iter().all(|(_, s)| s == "executed"),
        "{doc_a}"
    );
    let stderr = String::from_utf8_lossy(&run_a.stderr);
    assert_eq!(stderr.matches("pushed to").count(), 4, "{stderr}");

    let c = sb.dir.join("store-c");
    let status = json_of(&pipe_ok(
        sb,
        &c,
        remote,
        &["status", "pipeline.yaml", "--json"],
        "status",
    ));
    assert!(
        statuses(&status).iter().all(|(_, s)| s == "pulled"),
        "{status}"
    );

    let b = sb.dir.join("store-b");
    let run_b = pipe_ok(
        sb,
        &b,
        remote,
        &["run", "pipeline.yaml", "--json"],
        "run on an empty store",
    );
    let doc_b = json_of(&run_b);
    assert!(
        statuses(&doc_b).iter().all(|(_, s)| s == "pulled"),
        "{doc_b}"
    );
    for name in ["data", "model", "train", "sample"] {
        let (sa, sb_) = (stage(&doc_a, name), stage(&doc_b, name));
        assert_eq!(sa["key"], sb_["key"], "{name}");
        assert_eq!(sa["outputs"], sb_["outputs"], "{name}");
        for h in sa["outputs"].as_object().unwrap().values() {
            let h = h.as_str().unwrap();
            assert_eq!(
                std::fs::read(remote_object(&a, h)).unwrap(),
                std::fs::read(remote_object(&b, h)).unwrap(),
                "{name}: object {h}"
            );
        }
    }
    // The samples are printed as a fresh run prints them.
    assert!(String::from_utf8_lossy(&run_b.stderr).contains("the "));
    // Pulled records are local now: a second run is all cached, without the remote.
    let again = json_of(&ok(
        sb.pipe_with_store(&b, &["run", "pipeline.yaml", "--json"]),
        "rerun",
    ));
    assert!(
        statuses(&again).iter().all(|(_, s)| s == "cached"),
        "{again}"
    );
}

#[test]
fn push_then_pull_through_a_shared_folder() {
    let sb = sandbox("remote-file");
    let remote = file_remote(&sb, "remote");
    push_then_pull(&sb, &remote);
}

#[test]
fn push_then_pull_through_s3() {
    let Some(moto) = Moto::start() else { return };
    let sb = sandbox("remote-s3");
    let mut remote = s3_remote(&sb, &moto, "team/pipe");
    // Every object in parts, as a large checkpoint goes.
    remote
        .env
        .push(("PIPE_REMOTE_MULTIPART_MB".into(), "0".into()));
    push_then_pull(&sb, &remote);
    // `pipe remote check` probes put, a refused second put, get and delete.
    let check = pipe_ok(
        &sb,
        &sb.cache(),
        &remote,
        &["remote", "check"],
        "remote check",
    );
    let text = String::from_utf8_lossy(&check.stdout);
    assert_eq!(text.matches("  ok  ").count(), 6, "{text}");
}

/// Two stores that computed the same stages push at once, several times: both succeed, exactly
/// one of them writes each record (create-if-absent), and the record is one of theirs, whole.
fn push_race(sb: &Sandbox, remotes: &[RemoteUnderTest]) {
    let (a, b) = (sb.dir.join("store-a"), sb.dir.join("store-b"));
    for store in [&a, &b] {
        ok(
            sb.pipe_with_store(store, &["run", "pipeline.yaml"]),
            "local run",
        );
    }
    for (i, remote) in remotes.iter().enumerate() {
        let spawn = |store: &Path| {
            pipe_remote(sb, store, remote, &["push"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (pa, pb) = (spawn(&a), spawn(&b));
        let (oa, ob) = (
            ok(pa.wait_with_output().unwrap(), "push a"),
            ok(pb.wait_with_output().unwrap(), "push b"),
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&oa.stdout),
            String::from_utf8_lossy(&ob.stdout)
        );
        for name in ["data", "model", "train", "sample"] {
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("{name}: pushed")))
                .collect();
            assert_eq!(lines.len(), 2, "{text}");
            assert_eq!(
                lines
                    .iter()
                    .filter(|l| l.contains("record was there already"))
                    .count(),
                1,
                "exactly one writer of `{name}` loses: {text}"
            );
        }
        // Whatever won, a third store pulls every stage from it.
        let c = sb.dir.join(format!("store-c-{i}"));
        let doc = json_of(&pipe_ok(
            sb,
            &c,
            remote,
            &["run", "pipeline.yaml", "--json"],
            "pull after the race",
        ));
        assert!(statuses(&doc).iter().all(|(_, s)| s == "pulled"), "{doc}");
    }
}

#[test]
fn concurrent_pushes_of_one_key_are_safe() {
    let sb = sandbox("remote-race");
    let mut remotes: Vec<RemoteUnderTest> = (0..3)
        .map(|i| file_remote(&sb, &format!("remote-{i}")))
        .collect();
    let moto = Moto::start();
    if let Some(m) = &moto {
        remotes.extend((0..3).map(|i| s3_remote(&sb, m, &format!("race-{i}"))));
    }
    push_race(&sb, &remotes);
}

/// A remote object deleted, or with a flipped byte: that stage is computed here (a warning says
/// why), the corrupt bytes never enter the local store, and the others are still pulled.
#[test]
fn missing_and_corrupt_remote_objects_are_misses() {
    let sb = sandbox("remote-damage");
    let root = sb.dir.join("remote");
    let remote = file_remote(&sb, "remote");
    let a = sb.dir.join("store-a");
    let doc_a = json_of(&pipe_ok(
        &sb,
        &a,
        &remote,
        &["run", "pipeline.yaml", "--push", "--json"],
        "run --push",
    ));
    let ckpt = stage(&doc_a, "train")["outputs"]["ckpt"]
        .as_str()
        .unwrap()
        .to_string();
    let tokens = stage(&doc_a, "data")["outputs"]["train.bin"]
        .as_str()
        .unwrap()
        .to_string();

    // Deleted.
    let saved = std::fs::read(remote_object(&root, &ckpt)).unwrap();
    std::fs::remove_file(remote_object(&root, &ckpt)).unwrap();
    let out = pipe_ok(
        &sb,
        &sb.dir.join("store-b"),
        &remote,
        &["run", "pipeline.yaml", "--json"],
        "run with a missing object",
    );
    let doc = json_of(&out);
    assert_eq!(
        statuses(&doc),
        [
            ("data", "pulled"),
            ("model", "pulled"),
            ("train", "executed"),
            ("sample", "pulled")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is missing"), "{stderr}");
    assert_eq!(
        stage(&doc, "train")["outputs"],
        stage(&doc_a, "train")["outputs"]
    );
    std::fs::write(remote_object(&root, &ckpt), saved).unwrap();

    // A flipped byte.
    let path = remote_object(&root, &tokens);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 1;
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, &bytes).unwrap();
    let c = sb.dir.join("store-c");
    // With --push, the run that rejected the corrupt object also replaces it in the remote.
    let out = pipe_ok(
        &sb,
        &c,
        &remote,
        &["run", "pipeline.yaml", "--push", "--json"],
        "run with a corrupt object",
    );
    let doc = json_of(&out);
    assert_eq!(stage(&doc, "data")["status"], "executed", "{doc}");
    assert_eq!(stage(&doc, "train")["status"], "pulled", "{doc}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rejected"), "{stderr}");
    assert_eq!(
        std::fs::read(remote_object(&c, &tokens)).unwrap(),
        std::fs::read(remote_object(&a, &tokens)).unwrap()
    );
    let verify = ok(sb.pipe_with_store(&c, &["verify"]), "verify");
    assert!(String::from_utf8_lossy(&verify.stdout).contains("all intact"));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(remote_object(&a, &tokens)).unwrap()
    );
}

/// Deleting an object through the S3 API: the same miss as in a folder.
#[test]
fn an_object_deleted_from_s3_is_a_miss() {
    let Some(moto) = Moto::start() else { return };
    let sb = sandbox("remote-s3-delete");
    let remote = s3_remote(&sb, &moto, "del");
    let doc_a = json_of(&pipe_ok(
        &sb,
        &sb.dir.join("store-a"),
        &remote,
        &["run", "pipeline.yaml", "--push", "--json"],
        "run --push",
    ));
    let ckpt = stage(&doc_a, "model")["outputs"]["ckpt"]
        .as_str()
        .unwrap()
        .to_string();
    let status = moto.http(
        "DELETE",
        &format!("/{BUCKET}/del/objects/{}/{}", &ckpt[..2], &ckpt[2..]),
        b"",
    );
    assert_eq!(status, 204);
    let out = pipe_ok(
        &sb,
        &sb.dir.join("store-b"),
        &remote,
        &["run", "pipeline.yaml", "--json"],
        "run with a deleted object",
    );
    let doc = json_of(&out);
    assert_eq!(stage(&doc, "model")["status"], "executed", "{doc}");
    assert_eq!(stage(&doc, "train")["status"], "pulled", "{doc}");
}

/// A wrong endpoint is an error that names it and the variable, never a silent miss.
#[test]
fn an_unreachable_remote_is_loud() {
    let sb = sandbox("remote-down");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let remote = RemoteUnderTest {
        url: "s3://nowhere/x".into(),
        env: s3_env(&endpoint),
    };
    let out = pipe_remote(
        &sb,
        &sb.cache(),
        &remote,
        &["run", "pipeline.yaml", "--json"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let doc = json_of(&out);
    assert_eq!(stage(&doc, "data")["status"], "failed", "{doc}");
    let err = stage(&doc, "data")["error"].as_str().unwrap();
    assert!(err.contains("s3://nowhere/x"), "{err}");
    assert!(err.contains("AWS_ENDPOINT_URL"), "{err}");
    assert!(err.contains(&endpoint), "{err}");
    let check = pipe_remote(&sb, &sb.cache(), &remote, &["remote", "check"])
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&check.stdout).contains("FAILED"));
    // --push without any remote is bad input.
    let out = sb.pipe(&["run", "pipeline.yaml", "--push"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--remote"));
}

/// Slurm jobs push what they compute (their scripts carry `--remote` and `--push`); a submitter
/// with an empty store then finds every stage in the remote and submits nothing: all `pulled`.
#[test]
fn slurm_jobs_push_and_another_store_pulls() {
    let sb = sandbox("remote-slurm");
    let remote = file_remote(&sb, "remote");
    let state = sb.dir.join("fake-slurm");
    std::fs::create_dir_all(&state).unwrap();
    let fakes = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake-slurm");
    let slurm = |store: &Path, args: &[&str]| {
        let mut c = pipe_remote(&sb, store, &remote, args);
        c.env(
            "PATH",
            format!("{}:{}", fakes.display(), std::env::var("PATH").unwrap()),
        )
        .env("FAKE_SLURM_DIR", &state)
        .env("PIPE_SLURM_POLL_SECONDS", "0.1");
        ok(c.output().unwrap(), "slurm run")
    };
    let submitted = || {
        std::fs::read_to_string(state.join("sbatch.log"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let a = json_of(&slurm(
        &sb.dir.join("store-a"),
        &[
            "run",
            "pipeline.yaml",
            "--executor",
            "slurm",
            "--push",
            "--json",
        ],
    ));
    assert!(statuses(&a).iter().all(|(_, s)| s == "executed"), "{a}");
    assert_eq!(submitted(), 4);
    let b = json_of(&slurm(
        &sb.dir.join("store-b"),
        &["run", "pipeline.yaml", "--executor", "slurm", "--json"],
    ));
    assert!(statuses(&b).iter().all(|(_, s)| s == "pulled"), "{b}");
    assert_eq!(submitted(), 4, "nothing more was submitted");
    for name in ["data", "model", "train", "sample"] {
        assert_eq!(stage(&a, name)["outputs"], stage(&b, name)["outputs"]);
    }
}
