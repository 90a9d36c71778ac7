//! Data-parallel training over MPI (`--features mpi`; `.ci/run` installs Open MPI and runs these).
//! Every test goes through the binary: `pipe run --ranks N` starts its ranks with `mpirun`.
//! Without the feature, only the tests of what a build without MPI says are here.

mod common;
use common::Sandbox;

/// A tiny char-level model whose parameter count is odd (n_embd 33, 3 heads, biases), so ZeRO-1's two
/// shards do not divide it evenly; 4 micro-steps per iteration (2 per rank on 2 ranks).
fn manifest(max_iters: u32, init: &str) -> String {
    format!(
        r#"name: dp
defaults:
  seed: 11
stages:
  data:
    kind: prepare
    path: text.txt
    tokenizer: char
  model:
    kind: init
    needs: [data]
{init}
  train:
    kind: train
    needs: [model, data]
    max_iters: {max_iters}
    eval_interval: 10
    eval_iters: 3
    batch_size: 4
    gradient_accumulation_steps: 4
    learning_rate: 2.0e-3
    warmup_iters: 4
    lr_decay_iters: 40
    min_lr: 1.0e-4
    log_interval: 1
"#
    )
}

const SCRATCH: &str = "    from: scratch
    vocab_size: 31
    bias: true
    n_layer: 2
    n_head: 3
    n_embd: 33
    block_size: 24
    dropout: 0.1";

fn sandbox(name: &str) -> Sandbox {
    let sb = Sandbox::new(&format!("dp-{name}"));
    sb.write("text.txt", &common::corpus(60_000));
    sb
}

#[cfg(feature = "mpi")]
mod with_mpi {
    use super::*;
    use pipe::gpt::Checkpoint;
    use std::time::{Duration, Instant};

    fn run_json(sb: &Sandbox, file: &str, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["run", file, "--json"];
        args.extend_from_slice(extra);
        sb.json(&args)
    }

    fn checkpoint(sb: &Sandbox, doc: &serde_json::Value) -> Checkpoint {
        let hash = common::stage(doc, "train")["outputs"]["ckpt"]
            .as_str()
            .unwrap()
            .to_string();
        let path = sb.cache().join("objects").join(&hash[..2]).join(&hash[2..]);
        Checkpoint::from_bytes(&std::fs::read(path).unwrap()).unwrap()
    }

    /// max |a - b| / max |a|.
    fn relative(a: &[f32], b: &[f32]) -> f64 {
        assert_eq!(a.len(), b.len());
        let scale = a.iter().fold(0f64, |m, x| m.max(x.abs() as f64));
        let diff = a
            .iter()
            .zip(b)
            .fold(0f64, |m, (x, y)| m.max((x - y).abs() as f64));
        diff / scale
    }

    fn iter_of(c: &Checkpoint) -> u64 {
        c.progress.as_ref().unwrap().iter_num
    }

    #[test]
    fn data_parallel_two_ranks_match_one_rank_after_20_adamw_steps() {
        let sb = sandbox("match");
        sb.write("m.yaml", &manifest(20, SCRATCH));
        let one = run_json(&sb, "m.yaml", &[]);
        let two = run_json(&sb, "m.yaml", &["--ranks", "2"]);
        let zero = run_json(
            &sb,
            "m.yaml",
            &["--ranks", "2", "--set", "train.zero_stage=1"],
        );
        let (a, b, z) = (
            checkpoint(&sb, &one),
            checkpoint(&sb, &two),
            checkpoint(&sb, &zero),
        );
        assert_eq!(
            a.params.len() % 2,
            1,
            "the parameter count must not divide by 2"
        );
        assert_eq!((iter_of(&a), iter_of(&b), iter_of(&z)), (20, 20, 20));
        for (what, c) in [("all-reduce", &b), ("ZeRO-1", &z)] {
            let r = relative(&a.params, &c.params);
            eprintln!("{what}: weights differ from one rank's by {r:e} (relative)");
            assert!(
                r < 1e-5,
                "{what}: weights differ from one rank's by {r:e} (relative)"
            );
            let (m1, v1) = a.optimizer.as_ref().unwrap();
            let (m2, v2) = c.optimizer.as_ref().unwrap();
            // The moments are gathered from every shard into the one checkpoint.
            assert!(relative(m1, m2) < 1e-4, "{what}: first moments differ");
            assert!(relative(v1, v2) < 1e-4, "{what}: second moments differ");
            assert_eq!(
                a.progress.as_ref().unwrap().adam_step,
                c.progress.as_ref().unwrap().adam_step
            );
        }
        // The ranks are part of the train key (other bits), not of the other stages'.
        let key = |d: &serde_json::Value, s: &str| common::stage(d, s)["key"].clone();
        assert_ne!(key(&one, "train"), key(&two, "train"));
        assert_ne!(key(&two, "train"), key(&zero, "train"));
        assert_eq!(key(&one, "model"), key(&two, "model"));
        assert_eq!(common::stage(&two, "model")["status"], "cached");
        // Evaluation is split across the ranks and reduced to the same mean.
        let val = |d: &serde_json::Value| {
            common::stage(d, "train")["metrics"]["final_val_loss"]
                .as_f64()
                .unwrap()
        };
        assert!(
            (val(&one) - val(&two)).abs() < 1e-4,
            "{} vs {}",
            val(&one),
            val(&two)
        );
        let dp = &common::stage(&zero, "train")["metrics"]["data_parallel"];
        assert_eq!(
            (dp["ranks"].as_u64(), dp["zero_stage"].as_u64()),
            (Some(2), Some(1)),
            "{dp}"
        );
        assert!(dp["comm_seconds"].as_f64().unwrap() > 0.0, "{dp}");
        assert!(common::stage(&one, "train")["metrics"]["data_parallel"].is_null());
        // A second run on 2 ranks is cached under its key.
        let again = run_json(&sb, "m.yaml", &["--ranks", "2"]);
        assert_eq!(common::stage(&again, "train")["status"], "cached");
    }

    #[test]
    fn data_parallel_checkpoints_resume_across_world_sizes() {
        let sb = sandbox("resume");
        sb.write("m.yaml", &manifest(20, SCRATCH));
        let reference = checkpoint(&sb, &run_json(&sb, "m.yaml", &[]));
        // 10 iterations on one world size, then 10 more from its checkpoint on the other.
        for (first, second) in [("2", "1"), ("1", "2")] {
            let half = sb.write(&format!("half{first}.yaml"), &manifest(10, SCRATCH));
            let doc = run_json(&sb, half.to_str().unwrap(), &["--ranks", first]);
            let hash = common::stage(&doc, "train")["outputs"]["ckpt"]
                .as_str()
                .unwrap()
                .to_string();
            let init = format!("    from: resume\n    checkpoint: {hash}");
            let cont = sb.write(&format!("cont{first}.yaml"), &manifest(20, &init));
            let doc = run_json(&sb, cont.to_str().unwrap(), &["--ranks", second]);
            let c = checkpoint(&sb, &doc);
            assert_eq!(iter_of(&c), 20);
            let r = relative(&reference.params, &c.params);
            assert!(
                r < 1e-5,
                "{first} then {second} ranks: weights differ by {r:e}"
            );
        }
    }

    /// Under `--executor slurm`, a train stage with `resources: {nodes: 1, tasks_per_node: 2}`
    /// gets a job of 2 tasks whose script starts them with srun (the fake srun in
    /// tests/fake-slurm runs them with mpirun), and trains what `--ranks 2` trains here, bit for
    /// bit; the other stages' jobs stay one process.
    #[test]
    fn data_parallel_slurm_jobs_start_their_ranks_with_srun() {
        let local = sandbox("slurm-local");
        local.write("m.yaml", &manifest(10, SCRATCH));
        let expected = checkpoint(&local, &run_json(&local, "m.yaml", &["--ranks", "2"]));
        let sb = sandbox("slurm");
        let text = manifest(10, SCRATCH).replace(
            "  train:\n    kind: train\n",
            "  train:\n    kind: train\n    resources: {nodes: 1, tasks_per_node: 2}\n",
        );
        sb.write("m.yaml", &text);
        let state = sb.dir.join("fake-slurm");
        std::fs::create_dir_all(&state).unwrap();
        let fakes = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake-slurm");
        let path = format!(
            "{}:{}",
            fakes.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = sb
            .cmd(&["run", "m.yaml", "--executor", "slurm", "--json"])
            .env("PATH", path)
            .env("FAKE_SLURM_DIR", &state)
            .env("PIPE_SLURM_POLL_SECONDS", "0.1")
            .output()
            .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert_eq!(out.status.code(), Some(0), "{doc:#}");
        let srun = std::fs::read_to_string(state.join("srun.log")).unwrap();
        assert_eq!(
            srun.lines().count(),
            1,
            "only the train job uses srun: {srun}"
        );
        assert!(
            srun.starts_with("srun -n 2 ") && srun.contains("run-stage"),
            "{srun}"
        );
        let got = checkpoint(&sb, &doc);
        assert_eq!(iter_of(&got), 10);
        assert_eq!(got.params, expected.params, "not what 2 local ranks train");
        let dp = &common::stage(&doc, "train")["metrics"]["data_parallel"];
        assert_eq!(dp["ranks"].as_u64(), Some(2), "{dp}");
        // The train key is the local 2-rank run's: the same stage, computed elsewhere.
        let local_doc = run_json(&local, "m.yaml", &["--ranks", "2"]);
        assert_eq!(
            common::stage(&doc, "train")["key"],
            common::stage(&local_doc, "train")["key"]
        );
        // --ranks that disagrees with the resources is bad input, before anything is submitted.
        let bad = sb
            .cmd(&["run", "m.yaml", "--executor", "slurm", "--ranks", "4"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&bad.stderr);
        assert_eq!(bad.status.code(), Some(2), "{err}");
        assert!(
            err.contains("asks for 4 ranks")
                && err.contains("stage `train`'s resources ask Slurm for 2"),
            "{err}"
        );
    }

    /// The pid of rank `rank` of a job whose command line mentions `needle`.
    fn rank_pid(needle: &str, rank: usize) -> Option<i32> {
        for e in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            if !String::from_utf8_lossy(&cmd).contains(needle) {
                continue;
            }
            let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
            let want = format!("OMPI_COMM_WORLD_RANK={rank}");
            if env.split(|b| *b == 0).any(|v| v == want.as_bytes()) {
                return Some(pid);
            }
        }
        None
    }

    /// Starts a long 2-rank run, waits for its first checkpoint, and does `what` to rank 1; the
    /// run must end with an error within 30 s, and `pipe resume` must complete it.
    fn rank_fault(name: &str, signal: i32, timeout: Option<&str>) {
        let sb = sandbox(name);
        let file = format!("{name}.yaml");
        sb.write(&file, &manifest(4000, SCRATCH));
        let mut cmd = sb.cmd(&["run", &file, "--ranks", "2"]);
        if let Some(t) = timeout {
            cmd.env("PIPE_STEP_TIMEOUT", t);
        }
        let child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let progress = sb.cache().join("progress");
        let started = Instant::now();
        let has_checkpoint = || {
            std::fs::read_dir(&progress)
                .map(|d| d.count() > 0)
                .unwrap_or(false)
        };
        while !has_checkpoint() {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "no checkpoint after 120 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let pid = rank_pid(&file, 1).expect("rank 1 is running");
        // SAFETY: signalling a process this test started.
        unsafe { libc::kill(pid, signal) };
        let hit = Instant::now();
        let out = child.wait_with_output().unwrap();
        let took = hit.elapsed();
        if signal == libc::SIGSTOP {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "the run must fail: {stderr}");
        assert!(
            took < Duration::from_secs(30),
            "took {took:?} to end: {stderr}"
        );
        assert!(
            stderr.contains("pipe resume"),
            "the error says how to continue: {stderr}"
        );
        let run_id = stderr
            .lines()
            .find_map(|l| {
                l.strip_prefix("run ")
                    .and_then(|r| r.split_whitespace().next())
            })
            .expect("the run id is printed")
            .to_string();
        // After a hang, the run continues on 1 rank from the 2 ranks' checkpoint.
        let mut args = vec!["resume", run_id.as_str(), "--json"];
        if signal == libc::SIGSTOP {
            args.extend(["--ranks", "1"]);
        }
        let doc = sb.json(&args);
        assert_eq!(doc["status"], "succeeded", "{doc}");
        let train = common::stage(&doc, "train");
        assert_eq!(train["status"], "resumed", "{train}");
        assert!(
            train["metrics"]["resumed_from_iter"].as_u64().unwrap() >= 10,
            "{train}"
        );
    }

    #[test]
    fn data_parallel_kill_9_of_one_rank_ends_the_stage_and_resume_completes() {
        rank_fault("kill", libc::SIGKILL, None);
    }

    #[test]
    fn data_parallel_a_hung_rank_ends_the_stage_by_the_step_timeout() {
        rank_fault("hang", libc::SIGSTOP, Some("3"));
    }

    #[test]
    fn data_parallel_without_mpirun_says_what_to_install() {
        let sb = sandbox("nompirun");
        sb.write("m.yaml", &manifest(20, SCRATCH));
        let out = sb
            .cmd(&["run", "m.yaml", "--ranks", "2"])
            .env("PATH", "/nonexistent")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("mpirun") && stderr.contains("openmpi-bin"),
            "{stderr}"
        );
        assert!(
            !sb.cache().join("runs").exists()
                || std::fs::read_dir(sb.cache().join("runs")).unwrap().count() == 0,
            "nothing was run"
        );
    }
}

#[cfg(not(feature = "mpi"))]
#[test]
fn data_parallel_ranks_without_the_mpi_feature_say_how_to_build_it() {
    let sb = sandbox("nofeature");
    sb.write("m.yaml", &manifest(20, SCRATCH));
    let out = sb.pipe(&["run", "m.yaml", "--ranks", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--features mpi") && stderr.contains("libopenmpi-dev"),
        "{stderr}"
    );
}

#[test]
fn data_parallel_accumulation_steps_that_do_not_divide_are_located() {
    let sb = sandbox("divide");
    let text = manifest(20, SCRATCH).replace(
        "gradient_accumulation_steps: 4",
        "gradient_accumulation_steps: 3",
    );
    sb.write("m.yaml", &text);
    let out = sb.pipe(&["run", "m.yaml", "--ranks", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("m.yaml:"), "located: {stderr}");
    assert!(
        stderr.contains("3 does not divide among 2 ranks") && stderr.contains("for example 2 or 4"),
        "{stderr}"
    );
    let out = sb.pipe(&["run", "m.yaml", "--ranks", "0"]);
    assert_eq!(out.status.code(), Some(2));
}

/// A sweep runs each variant on one process, so a manifest's `ranks` is refused rather than
/// keying one-rank training as two ranks'.
#[test]
fn data_parallel_ranks_in_a_swept_manifest_are_refused() {
    let sb = sandbox("sweep");
    let text = manifest(20, SCRATCH).replace("  seed: 11\n", "  seed: 11\n  ranks: 2\n");
    sb.write("m.yaml", &text);
    let out = sb.pipe(&["run", "m.yaml", "--sweep", "train.learning_rate=1e-3,2e-3"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr
            .contains("a sweep cannot run on data-parallel ranks yet, and the manifest asks for 2"),
        "{stderr}"
    );
    assert!(
        !sb.cache().join("runs").exists()
            || std::fs::read_dir(sb.cache().join("runs"))
                .unwrap()
                .next()
                .is_none()
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether this machine has a GPU (these tests are about what happens without one).
fn gpu_here() -> bool {
    #[cfg(feature = "cuda")]
    if pipe::gpt::cuda::device_count().unwrap_or(0) > 0 {
        eprintln!(
            "a GPU is here: this test is for machines without one (scripts/gpu-check.sh covers GPUs)"
        );
        return true;
    }
    false
}

/// The variables torchrun gives rank `rank` of 2 on this machine, with a free port for NCCL's
/// id and a short bound on every wait.
fn torchrun_env(cmd: &mut std::process::Command, rank: usize) {
    cmd.env("RANK", rank.to_string())
        .env("WORLD_SIZE", "2")
        .env("LOCAL_RANK", rank.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", free_port().to_string())
        .env("PIPE_STEP_TIMEOUT", "5")
        .env_remove("PIPE_NCCL_LIB")
        .env_remove("PIPE_COLLECTIVE");
}

/// `--ranks 2` on `device: cuda` starts one rank per GPU: without a GPU (or CUDA in the build)
/// it is a clear error at once, before any rank starts.
#[test]
fn data_parallel_gpu_ranks_without_a_gpu_say_so() {
    if gpu_here() {
        return;
    }
    let sb = sandbox("nogpu");
    sb.write("m.yaml", &manifest(20, SCRATCH));
    let started = std::time::Instant::now();
    let out = sb
        .cmd(&["run", "m.yaml", "--ranks", "2", "--set", "device=cuda"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let said = if cfg!(feature = "cuda") {
        "no CUDA GPU is usable"
    } else {
        "--features cuda"
    };
    assert!(stderr.contains(said), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

/// A rank that torchrun starts joins over NCCL; where NCCL is missing, rank 0 says which pip
/// wheels have it and how to point pipe at them, and ends (no panic, no wait for the others).
#[test]
fn data_parallel_torchrun_ranks_without_nccl_name_the_wheels() {
    if gpu_here() {
        return;
    }
    let sb = sandbox("nonccl");
    sb.write("m.yaml", &manifest(20, SCRATCH));
    let mut cmd = sb.cmd(&["run", "m.yaml", "--set", "device=cuda"]);
    torchrun_env(&mut cmd, 0);
    // No NCCL to find: none on the loader's path, and PIPE_NCCL_LIB names a folder without it.
    let empty = sb.dir.join("no-nccl");
    std::fs::create_dir_all(&empty).unwrap();
    cmd.env("LD_LIBRARY_PATH", "").env("PIPE_NCCL_LIB", &empty);
    let started = std::time::Instant::now();
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    if cfg!(feature = "cuda") {
        assert!(
            stderr.contains("nvidia-nccl-cu12")
                && stderr.contains("nvidia-nccl-cu13")
                && stderr.contains("PIPE_NCCL_LIB"),
            "{stderr}"
        );
    } else {
        assert!(stderr.contains("--features cuda"), "{stderr}");
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    // A collective that is neither backend is named, with what to write instead.
    let mut cmd = sb.cmd(&["run", "m.yaml"]);
    torchrun_env(&mut cmd, 1);
    let out = cmd.env("PIPE_COLLECTIVE", "gloo").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr
            .contains("PIPE_COLLECTIVE=\"gloo\": expected `mpi` (CPU ranks) or `nccl` (GPU ranks)"),
        "{stderr}"
    );
}

/// NCCL's own library, from the pip wheel torch brings (`nvidia-nccl-cu13`): two ranks started
/// as torchrun starts them load it, rank 0 makes a real unique id (ncclGetUniqueId needs no GPU)
/// and hands it to rank 1 over loopback, and then both stop at the missing GPU with the CUDA
/// message, within a bound. The same wheel through PIPE_NCCL_LIB alone gets the instruction
/// to put pipe's link on LD_LIBRARY_PATH, since cudarc loads only `libnccl.so`.
#[cfg(feature = "cuda")]
#[test]
fn data_parallel_torchrun_ranks_meet_over_the_nccl_wheel() {
    if gpu_here() {
        return;
    }
    let Some(py) = common::python_with("nvidia.nccl") else {
        return common::missing("no Python with the nvidia-nccl wheel (torch brings it)");
    };
    let out = std::process::Command::new(&py)
        .args(["-c", "import nvidia.nccl as n; print(n.__path__[0])"])
        .output()
        .unwrap();
    let wheel = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        .join("lib/libnccl.so.2");
    assert!(wheel.is_file(), "{}", wheel.display());
    let sb = sandbox("wheel");
    sb.write("m.yaml", &manifest(20, SCRATCH));

    let mut cmd = sb.cmd(&["run", "m.yaml", "--set", "device=cuda"]);
    torchrun_env(&mut cmd, 0);
    let out = cmd
        .env("LD_LIBRARY_PATH", "")
        .env("PIPE_NCCL_LIB", &wheel)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cudarc loads only as libnccl.so")
            && stderr.contains("export LD_LIBRARY_PATH="),
        "{stderr}"
    );

    let links = sb.dir.join("nccl-link");
    std::fs::create_dir_all(&links).unwrap();
    std::os::unix::fs::symlink(&wheel, links.join("libnccl.so")).unwrap();
    let port = free_port();
    let started = std::time::Instant::now();
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            let mut cmd = sb.cmd(&["run", "m.yaml", "--set", "device=cuda"]);
            torchrun_env(&mut cmd, rank);
            cmd.env("PIPE_NCCL_PORT", port.to_string())
                .env("LD_LIBRARY_PATH", &links)
                .env("PIPE_STEP_TIMEOUT", "20")
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (rank, child) in ranks.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "rank {rank}: {stderr}");
        assert!(!stderr.contains("panicked"), "rank {rank}: {stderr}");
        // Past the exchange (no rank waited for the other), stopped by the missing GPU.
        assert!(
            stderr.contains("no CUDA GPU is usable") && !stderr.contains("never came"),
            "rank {rank}: {stderr}"
        );
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}
