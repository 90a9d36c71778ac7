//! Helpers for end-to-end tests through the `pipe` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Sandbox {
    pub dir: PathBuf,
}

impl Sandbox {
    pub fn new(name: &str) -> Sandbox {
        let dir = std::env::temp_dir().join(format!("pipe-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Sandbox { dir }
    }

    pub fn cache(&self) -> PathBuf {
        self.dir.join("cache")
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    /// The binary cargo built for this test, or `$PIPE_BIN` (scripts/gpu-check.sh runs prebuilt
    /// test binaries on another machine, where cargo's path does not exist).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let bin = std::env::var_os("PIPE_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_pipe").into());
        let mut c = Command::new(bin);
        c.arg("--cache")
            .arg(self.cache())
            .args(args)
            .current_dir(&self.dir)
            .env_remove("PIPE_CACHE")
            .env_remove("RUST_LOG");
        c
    }

    /// Runs the binary in this sandbox against another store (e.g. one on a small disk).
    pub fn pipe_with_store(&self, store: &Path, args: &[&str]) -> Output {
        let bin = std::env::var_os("PIPE_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_pipe").into());
        Command::new(bin)
            .arg("--cache")
            .arg(store)
            .args(args)
            .current_dir(&self.dir)
            .env_remove("PIPE_CACHE")
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    }

    pub fn pipe(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs and parses `--json` output, asserting success.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.pipe(args);
        assert!(
            out.status.success(),
            "pipe {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "pipe {args:?}: stdout is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A small text with learnable structure (a few sentences in random order).
pub fn corpus(chars: usize) -> String {
    let words = [
        "the king is dead. ",
        "long live the queen! ",
        "to be, or not to be: ",
        "what light through yonder window breaks? ",
        "now is the winter of our discontent; ",
    ];
    let mut s = String::new();
    let mut x: u64 = 7;
    while s.len() < chars {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s.push_str(words[(x >> 33) as usize % words.len()]);
        if (x >> 20).is_multiple_of(4) {
            s.push('\n');
        }
    }
    s
}

/// A tiny char-level pipeline over `text.txt`: prepare, init, train, sample.
pub fn tiny_manifest(max_iters: u32, eval_interval: u32) -> String {
    format!(
        r#"name: tiny
defaults:
  seed: 7
stages:
  data:
    kind: prepare
    path: text.txt
    tokenizer: char
  model:
    kind: init
    needs: [data]
    from: scratch
    n_layer: 2
    n_head: 2
    n_embd: 32
    block_size: 32
    dropout: 0.1
  train:
    kind: train
    needs: [model, data]
    max_iters: {max_iters}
    eval_interval: {eval_interval}
    eval_iters: 2
    batch_size: 4
    gradient_accumulation_steps: 1
    learning_rate: 1.0e-3
    warmup_iters: 5
    lr_decay_iters: {max_iters}
    min_lr: 1.0e-4
    log_interval: 10
  sample:
    kind: sample
    needs: [train, data]
    num_samples: 2
    max_new_tokens: 40
    start: "the "
"#
    )
}

pub fn stage<'a>(doc: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    doc["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {doc}"))
}

/// Each stage's `outputs`, by name, in manifest order.
pub fn outputs(doc: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    doc["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["outputs"].clone(),
            )
        })
        .collect()
}

pub fn statuses(doc: &serde_json::Value) -> Vec<(String, String)> {
    doc["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

pub fn shared(rel: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared")
        .join(rel);
    p.exists().then_some(p)
}

/// A model with larger-than-initial random parameters (standard deviation `std`; LayerNorm gains
/// around 1), so every gradient is well above f32 noise.
pub fn random_model(cfg: pipe::gpt::GptConfig, seed: u64, std: f32) -> pipe::gpt::Gpt {
    let mut m = pipe::gpt::Gpt::new_random(cfg, seed).unwrap();
    let mut rng = pipe::gpt::rng::Rng::new(seed + 1);
    for t in m.layout.tensors.clone() {
        let base = if t.name.contains("ln_") && t.name.ends_with("weight") {
            1.0
        } else {
            0.0
        };
        for x in &mut m.params[t.range.clone()] {
            *x = base + std * rng.normal() as f32;
        }
    }
    m
}

/// A small tmpfs (a disk that fills up), unmounted when dropped. `None` where mounting is not
/// permitted (it needs root, which CI has); tests then skip with a message.
pub struct SmallDisk(pub PathBuf);

impl SmallDisk {
    pub fn mount(at: PathBuf, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(&at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk(at))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Python's http.server over a folder on 127.0.0.1, stopped when dropped (or by `stop`). Python
/// is a prerequisite of the test suite (.ci/run has it): its absence fails the test.
pub struct HttpServer {
    child: std::process::Child,
    pub port: u16,
}

impl HttpServer {
    pub fn serve(dir: &Path) -> HttpServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3, to serve files on 127.0.0.1");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "http.server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        HttpServer { child, port }
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A prerequisite of a test is missing (a fixture in ../shared, Python with transformers, root
/// for a tmpfs): outside CI the test says so and skips; under CI (`CI` set) it fails, so CI never
/// passes a test it did not run.
pub fn missing(why: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{why} (under CI a missing prerequisite fails the test)"
    );
    eprintln!("skipped: {why}");
}

/// `$PIPE_TEST_PYTHON` (set by .ci/run), else python3, if it can run `import {modules}`.
#[allow(dead_code)]
pub fn python_with(modules: &str) -> Option<String> {
    let py = std::env::var("PIPE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(&py)
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(py)
}

/// Runs `scripts/{script}` with `py` and `args`; its stdout as JSON (its stderr in the failure).
#[allow(dead_code)]
pub fn python_json(py: &str, script: &str, args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(script);
    let out = std::process::Command::new(py)
        .arg(path)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
