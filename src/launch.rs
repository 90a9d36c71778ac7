//! Where this process sits in a data-parallel job, read from the launcher that started it:
//! Open MPI's `mpirun` (`OMPI_COMM_WORLD_*`), Slurm's `srun` (`SLURM_PROCID`, `SLURM_NTASKS`,
//! `SLURM_LOCALID`, inside a job step), or torchrun (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
//! `MASTER_ADDR`, `MASTER_PORT`). pipe starts no ranks over the network itself: `--ranks N` on one
//! machine runs `mpirun -np N` for CPU ranks (see [`mpirun_command`]), and for GPU ranks starts one
//! process per GPU with torchrun's variables and ends them all when one fails, as torchrun does
//! (see [`run_gpu_ranks`]).

use crate::error::InputError;
use std::path::Path;

/// Which launcher started the ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launcher {
    OpenMpi,
    Slurm,
    Torchrun,
}

impl Launcher {
    pub fn name(self) -> &'static str {
        match self {
            Launcher::OpenMpi => "mpirun (Open MPI)",
            Launcher::Slurm => "srun (Slurm)",
            Launcher::Torchrun => "torchrun",
        }
    }
}

/// This process's rank in a job of `world` ranks, and on its machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub launcher: Launcher,
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    /// Ranks on this machine, when the launcher says.
    pub local_world: Option<usize>,
    /// torchrun's `MASTER_ADDR:MASTER_PORT`, or the first host of Slurm's node list: where rank
    /// 0 runs (NCCL's unique id would be exchanged there).
    pub master: Option<String>,
}

/// The placement the environment describes: `None` when no launcher started this process.
/// `env` reads one variable (`std::env::var` in the binary; a table in tests).
pub fn detect(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Placement>, InputError> {
    let p = if env("OMPI_COMM_WORLD_SIZE").is_some() || env("OMPI_COMM_WORLD_RANK").is_some() {
        Placement {
            launcher: Launcher::OpenMpi,
            rank: number(env, "OMPI_COMM_WORLD_RANK")?,
            world: number(env, "OMPI_COMM_WORLD_SIZE")?,
            local_rank: number(env, "OMPI_COMM_WORLD_LOCAL_RANK")?,
            local_world: Some(number(env, "OMPI_COMM_WORLD_LOCAL_SIZE")?),
            master: None,
        }
    } else if env("SLURM_STEP_ID").is_some() && env("SLURM_PROCID").is_some() {
        // srun's tasks; a batch script alone (no step) is one process.
        Placement {
            launcher: Launcher::Slurm,
            rank: number(env, "SLURM_PROCID")?,
            world: number(env, "SLURM_NTASKS")?,
            local_rank: number(env, "SLURM_LOCALID")?,
            local_world: None,
            master: env("SLURM_STEP_NODELIST")
                .or_else(|| env("SLURM_NODELIST"))
                .map(|l| first_host(&l)),
        }
    } else if env("WORLD_SIZE").is_some() || env("RANK").is_some() {
        let addr = required(env, "MASTER_ADDR", "torchrun")?;
        let port = number(env, "MASTER_PORT")?;
        if !(1..=65535).contains(&port) {
            return Err(bad(
                "MASTER_PORT",
                &port.to_string(),
                "a port from 1 to 65535",
            ));
        }
        Placement {
            launcher: Launcher::Torchrun,
            rank: number(env, "RANK")?,
            world: number(env, "WORLD_SIZE")?,
            local_rank: number(env, "LOCAL_RANK")?,
            local_world: env("LOCAL_WORLD_SIZE")
                .is_some()
                .then(|| number(env, "LOCAL_WORLD_SIZE"))
                .transpose()?,
            master: Some(format!("{addr}:{port}")),
        }
    } else {
        return Ok(None);
    };
    check(&p, env)?;
    Ok(Some(p))
}

/// The process's own environment.
pub fn from_process() -> Result<Option<Placement>, InputError> {
    detect(&|k| std::env::var(k).ok())
}

fn check(p: &Placement, env: &dyn Fn(&str) -> Option<String>) -> Result<(), InputError> {
    let who = p.launcher.name();
    let problem = if p.world == 0 {
        Some("the world size is 0".to_string())
    } else if p.rank >= p.world {
        Some(format!(
            "rank {} is not below the world size {}",
            p.rank, p.world
        ))
    } else if let Some(lw) = p.local_world
        && (p.local_rank >= lw || lw > p.world)
    {
        Some(format!(
            "local rank {} of {lw} ranks on this machine does not fit a world of {}",
            p.local_rank, p.world
        ))
    } else if p.local_rank >= p.world {
        Some(format!(
            "local rank {} is not below the world size {}",
            p.local_rank, p.world
        ))
    } else {
        None
    };
    if let Some(why) = problem {
        return Err(InputError::new(
            format!("{who} started this process with inconsistent values: {why}"),
            Some(
                "start pipe with the launcher's own command (mpirun -np N, srun, torchrun), not with these variables set by hand",
            ),
        ));
    }
    // A second launcher's variables that name another job.
    let other = |rank: &str, size: &str| -> Option<(usize, usize)> {
        Some((
            env(rank)?.trim().parse().ok()?,
            env(size)?.trim().parse().ok()?,
        ))
    };
    let others = [
        (Launcher::Torchrun, other("RANK", "WORLD_SIZE")),
        (
            Launcher::OpenMpi,
            other("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
        ),
    ];
    for (l, v) in others {
        if l != p.launcher
            && let Some((rank, world)) = v
            && (rank, world) != (p.rank, p.world)
        {
            return Err(InputError::new(
                format!(
                    "{who} says rank {} of {}, but {}'s variables say rank {rank} of {world}",
                    p.rank,
                    p.world,
                    l.name()
                ),
                Some("start pipe under one launcher; unset the other's variables"),
            ));
        }
    }
    Ok(())
}

fn required(
    env: &dyn Fn(&str) -> Option<String>,
    var: &str,
    who: &str,
) -> Result<String, InputError> {
    env(var).ok_or_else(|| {
        InputError::new(
            format!("{who}'s environment is incomplete: {var} is not set"),
            Some("start pipe with the launcher's own command, which sets all of its variables"),
        )
    })
}

fn number(env: &dyn Fn(&str) -> Option<String>, var: &str) -> Result<usize, InputError> {
    let v = required(env, var, "the launcher")?;
    v.trim().parse().map_err(|_| bad(var, &v, "a whole number"))
}

fn bad(var: &str, value: &str, expected: &str) -> InputError {
    InputError::new(
        format!("{var}={value:?}: expected {expected}"),
        Some("start pipe with the launcher's own command, which sets all of its variables"),
    )
}

/// Where and how the ranks of an NCCL job meet to share NCCL's unique id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NcclMeeting {
    /// Rank 0's `host:port`.
    pub address: String,
    pub port: u16,
    /// Tells this job's ranks from another job's on the same port.
    pub job: u64,
}

/// Where rank 0 hands out NCCL's unique id: rank 0's host (torchrun's `MASTER_ADDR`, or the
/// first host of Slurm's node list) and a port: `PIPE_NCCL_PORT`, else torchrun's `MASTER_PORT` +
/// 1 (torchrun's own store holds `MASTER_PORT`), else under Slurm 30000 + the job id mod 30000
/// (jobs sharing a node rarely collide), else 29501. The job token is the Slurm job and step,
/// torchrun's run id, or pipe's own launcher's `PIPE_NCCL_TOKEN`.
pub fn nccl_rendezvous(
    p: &Placement,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<NcclMeeting, InputError> {
    let Some(master) = &p.master else {
        return Err(InputError::new(
            format!(
                "{} gives no address for rank 0, which NCCL's ranks need to meet",
                p.launcher.name()
            ),
            Some("start GPU ranks with torchrun (MASTER_ADDR), srun, or `pipe run --ranks N`"),
        ));
    };
    let (host, launcher_port) = match (p.launcher, master.rsplit_once(':')) {
        (Launcher::Torchrun, Some((host, port))) => (host.to_string(), port.parse::<u16>().ok()),
        _ => (master.clone(), None),
    };
    let slurm_job = env("SLURM_JOB_ID").and_then(|v| v.trim().parse::<u64>().ok());
    let port = match env("PIPE_NCCL_PORT") {
        Some(v) => match v.trim().parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => {
                return Err(InputError::new(
                    format!("PIPE_NCCL_PORT={v:?}: expected a port from 1 to 65535"),
                    Some("give a free port on rank 0's machine, or leave it unset"),
                ));
            }
        },
        None => match (launcher_port, slurm_job) {
            (Some(port), _) => port.checked_add(1).ok_or_else(|| {
                InputError::new(
                    "MASTER_PORT=65535: NCCL's id is handed out on MASTER_PORT + 1, which does not exist",
                    Some("give torchrun a lower --master-port, or set PIPE_NCCL_PORT"),
                )
            })?,
            (None, Some(job)) => 30000 + (job % 30000) as u16,
            (None, None) => 29501,
        },
    };
    let token = [
        "SLURM_JOB_ID",
        "SLURM_STEP_ID",
        "TORCHELASTIC_RUN_ID",
        "PIPE_NCCL_TOKEN",
    ]
    .map(|k| env(k).unwrap_or_default())
    .join("/");
    let job = u64::from_le_bytes(
        blake3::hash(token.as_bytes()).as_bytes()[..8]
            .try_into()
            .expect("8 bytes"),
    );
    // An IPv6 literal needs brackets before its port.
    let address = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok(NcclMeeting { address, port, job })
}

/// The first host of a Slurm node list: `node[03-05,7]` → `node03`, `a,b` → `a`.
fn first_host(list: &str) -> String {
    let first_entry_end = {
        let mut depth = 0;
        list.char_indices()
            .find(|&(_, c)| {
                match c {
                    '[' => depth += 1,
                    ']' => depth -= 1,
                    _ => {}
                }
                c == ',' && depth == 0
            })
            .map_or(list.len(), |(i, _)| i)
    };
    let entry = &list[..first_entry_end];
    match entry.split_once('[') {
        Some((prefix, range)) => {
            let first = range
                .trim_end_matches(']')
                .split([',', '-'])
                .next()
                .unwrap_or("");
            format!("{prefix}{first}")
        }
        None => entry.to_string(),
    }
}

/// The command that starts `ranks` copies of this pipe on this machine: `mpirun -np N`, with
/// `--oversubscribe` (more ranks than cores is the user's choice) and, as root, Open MPI's
/// root permission, then `exe args`.
pub fn mpirun_command(
    mpirun: &Path,
    ranks: usize,
    exe: &Path,
    args: &[String],
) -> std::process::Command {
    let mut c = std::process::Command::new(mpirun);
    c.arg("-np").arg(ranks.to_string()).arg("--oversubscribe");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        c.arg("--allow-run-as-root");
    }
    c.arg(exe).args(args);
    c
}

/// How a job of ranks started by [`run_gpu_ranks`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RanksEnded {
    /// Every rank ended by itself, the others without failing: rank 0's exit code.
    Rank0(i32),
    /// Rank `rank` failed (or was killed) first, with `status`; the others were stopped.
    Failed { rank: usize, status: String },
}

/// Starts `ranks` GPU ranks of `exe args` on this machine, one per GPU, with torchrun's
/// variables (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`,
/// `MASTER_PORT`) and a free port for NCCL's unique id, and waits for them.
pub fn run_gpu_ranks(ranks: usize, exe: &Path, args: &[String]) -> anyhow::Result<RanksEnded> {
    use anyhow::Context;
    let gpus = crate::gpt::cuda::device_count()?;
    if gpus < ranks {
        return Err(InputError::new(
            format!("--ranks {ranks} with device: cuda starts one rank per GPU, but this machine shows {gpus} GPU(s)"),
            Some("ask for at most as many ranks as GPUs, or train on CPU ranks (device: cpu)"),
        )
        .into());
    }
    // NCCL as only libnccl.so.2 (the pip wheels): linked as libnccl.so, on the ranks' path.
    let mut library_path = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    if let Some(dir) = crate::gpt::cuda::nccl::link_folder()? {
        // Never an empty entry, which the loader reads as the current folder.
        library_path = if library_path.is_empty() {
            dir.display().to_string()
        } else {
            format!("{}:{library_path}", dir.display())
        };
    }
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .context("finding a free port for the ranks to meet on")?
        .port();
    let token = format!(
        "{}-{port}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    );
    let commands = (0..ranks)
        .map(|rank| {
            let mut c = std::process::Command::new(exe);
            c.args(args);
            // This process's own launcher, if any, is not the ranks' (detect reads it first).
            for var in INHERITED_LAUNCHER_VARS {
                c.env_remove(var);
            }
            c.envs(gpu_rank_env(rank, ranks, port))
                .env("PIPE_NCCL_TOKEN", &token)
                .env("LD_LIBRARY_PATH", &library_path);
            c
        })
        .collect();
    supervise(commands, std::time::Duration::from_secs(10))
}

/// Launcher variables `detect` reads before torchrun's.
const INHERITED_LAUNCHER_VARS: [&str; 6] = [
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "SLURM_STEP_ID",
    "SLURM_PROCID",
];

/// Rank `rank` of `world`'s environment on this machine, as torchrun --standalone sets it, with
/// NCCL's id handed out on `port` (rank 0's only listener).
pub fn gpu_rank_env(rank: usize, world: usize, port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("RANK", rank.to_string()),
        ("WORLD_SIZE", world.to_string()),
        ("LOCAL_RANK", rank.to_string()),
        ("LOCAL_WORLD_SIZE", world.to_string()),
        ("MASTER_ADDR", "127.0.0.1".to_string()),
        ("MASTER_PORT", port.to_string()),
        ("PIPE_NCCL_PORT", port.to_string()),
        ("PIPE_COLLECTIVE", "nccl".to_string()),
    ]
}

/// Runs `commands` (rank i is the i-th) and waits for all of them, as torchrun's agent does:
/// - a rank that fails before rank 0 has ended ends the job: the others get SIGTERM, then
///   SIGKILL after `grace`;
/// - once rank 0 has ended with its own result (exit 0 to 2), that is the job's result; ranks
///   that do not follow it within `grace` are stopped the same way, with a warning;
/// - each rank gets SIGTERM if this process dies (PR_SET_PDEATHSIG), so none is left behind.
pub fn supervise(
    commands: Vec<std::process::Command>,
    grace: std::time::Duration,
) -> anyhow::Result<RanksEnded> {
    use anyhow::Context;
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    let mut children = Vec::new();
    for (rank, mut c) in commands.into_iter().enumerate() {
        // SAFETY: the closure runs in the child between fork and exec and calls only
        // async-signal-safe functions (prctl, getppid, _exit).
        unsafe {
            c.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                // This process died before the prctl took effect.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        match c.spawn() {
            Ok(child) => children.push(Some(child)),
            Err(e) => {
                stop(&mut children, Duration::ZERO);
                return Err(e).with_context(|| format!("starting rank {rank}"));
            }
        }
    }
    let mut failed: Option<(usize, String)> = None;
    let mut rank0: Option<i32> = None;
    let mut deadline: Option<Instant> = None;
    while failed.is_none() && children.iter().any(Option::is_some) {
        for (rank, slot) in children.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            let status = match child.try_wait() {
                Ok(Some(status)) => status,
                Ok(None) => continue,
                Err(e) => {
                    failed = Some((rank, format!("an error while waiting for it: {e}")));
                    break;
                }
            };
            *slot = None;
            match (rank, status.code()) {
                (0, Some(code @ 0..=2)) => {
                    rank0 = Some(code);
                    deadline = Some(Instant::now() + grace);
                }
                _ if status.success() => {}
                _ if rank0.is_some() => {
                    eprintln!("warning: rank {rank} ended with {status} after rank 0 had ended")
                }
                _ => failed = Some((rank, status.to_string())),
            }
        }
        if failed.is_none() && deadline.is_some_and(|d| Instant::now() >= d) {
            for rank in (0..children.len()).filter(|&r| children[r].is_some()) {
                eprintln!(
                    "warning: rank {rank} did not end within {} s of rank 0: stopping it",
                    grace.as_secs()
                );
            }
            stop(&mut children, Duration::ZERO);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop(&mut children, grace);
    Ok(match (failed, rank0) {
        (Some((rank, status)), _) => RanksEnded::Failed { rank, status },
        (None, Some(code)) => RanksEnded::Rank0(code),
        (None, None) => unreachable!("the loop ends when a rank fails or when all have ended"),
    })
}

/// SIGTERM to every rank still running, then SIGKILL to those left after `grace`; reaps them.
fn stop(children: &mut [Option<std::process::Child>], grace: std::time::Duration) {
    let deadline = std::time::Instant::now() + grace;
    for child in children.iter().flatten() {
        // SAFETY: kill has no memory preconditions; the pid is our own unreaped child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    }
    for slot in children.iter_mut() {
        let Some(child) = slot else { continue };
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
        }
        let _ = child.wait();
        *slot = None;
    }
}

/// `mpirun` in PATH, or an error naming the package that has it.
pub fn find_mpirun() -> Result<std::path::PathBuf, InputError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("mpirun"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            InputError::new(
                "`--ranks` (or `defaults: {ranks: N}`) starts the ranks with `mpirun`, which is not in PATH",
                Some("install Open MPI (Debian: `apt-get install openmpi-bin libopenmpi-dev`), or start the ranks yourself with mpirun or srun"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn placement(vars: &[(&str, &str)]) -> Result<Option<Placement>, InputError> {
        detect(&env(vars))
    }

    fn error(vars: &[(&str, &str)]) -> String {
        placement(vars).unwrap_err().to_string()
    }

    #[test]
    fn data_parallel_launcher_environments_are_read() {
        assert_eq!(placement(&[("HOME", "/root")]).unwrap(), None);
        let ompi = placement(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (ompi.launcher, ompi.rank, ompi.world, ompi.local_world),
            (Launcher::OpenMpi, 1, 2, Some(2))
        );
        let slurm = placement(&[
            ("SLURM_STEP_ID", "0"),
            ("SLURM_PROCID", "3"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_STEP_NODELIST", "gpu[07-08],cpu1"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (slurm.launcher, slurm.rank, slurm.world, slurm.local_rank),
            (Launcher::Slurm, 3, 4, 1)
        );
        assert_eq!(slurm.master.as_deref(), Some("gpu07"));
        // A batch script without a step is one process.
        assert_eq!(
            placement(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "4")]).unwrap(),
            None
        );
        let torch = placement(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "0"),
            ("LOCAL_WORLD_SIZE", "8"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29500"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (torch.launcher, torch.world, torch.master.as_deref()),
            (Launcher::Torchrun, 8, Some("10.0.0.1:29500"))
        );
    }

    #[test]
    fn data_parallel_inconsistent_launcher_environments_are_refused() {
        let e = error(&[
            ("OMPI_COMM_WORLD_RANK", "2"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "0"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
        ]);
        assert!(e.contains("rank 2 is not below the world size 2"), "{e}");
        let e = error(&[("OMPI_COMM_WORLD_SIZE", "2")]);
        assert!(e.contains("OMPI_COMM_WORLD_RANK is not set"), "{e}");
        let e = error(&[
            ("SLURM_STEP_ID", "0"),
            ("SLURM_PROCID", "x"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_LOCALID", "0"),
        ]);
        assert!(
            e.contains("SLURM_PROCID=\"x\": expected a whole number"),
            "{e}"
        );
        let e = error(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "0"),
            ("MASTER_PORT", "29500"),
        ]);
        assert!(e.contains("MASTER_ADDR is not set"), "{e}");
        let e = error(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "0"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "70000"),
        ]);
        assert!(e.contains("a port from 1 to 65535"), "{e}");
        let e = error(&[
            ("OMPI_COMM_WORLD_RANK", "0"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "0"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
            ("RANK", "1"),
            ("WORLD_SIZE", "4"),
        ]);
        assert!(e.contains("torchrun's variables say rank 1 of 4"), "{e}");
        let e = error(&[
            ("SLURM_STEP_ID", "0"),
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "0"),
            ("SLURM_LOCALID", "0"),
        ]);
        assert!(e.contains("the world size is 0"), "{e}");
    }

    #[test]
    fn data_parallel_nccl_rendezvous_is_rank_0s_host_and_a_port_beside_the_launchers() {
        let torchrun = [
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29500"),
        ];
        let p = placement(&torchrun).unwrap().unwrap();
        let at = |extra: &[(&str, &str)]| nccl_rendezvous(&p, &env(extra));
        let m = at(&[]).unwrap();
        assert_eq!((m.address.as_str(), m.port), ("10.0.0.1:29501", 29501));
        let m = at(&[("PIPE_NCCL_PORT", "4000")]).unwrap();
        assert_eq!(m.address, "10.0.0.1:4000");
        let e = at(&[("PIPE_NCCL_PORT", "0")]).unwrap_err().to_string();
        assert!(
            e.contains("PIPE_NCCL_PORT") && e.contains("1 to 65535"),
            "{e}"
        );
        // Two runs of torchrun on the same port are two jobs.
        let one = at(&[("TORCHELASTIC_RUN_ID", "a")]).unwrap().job;
        assert_ne!(one, at(&[("TORCHELASTIC_RUN_ID", "b")]).unwrap().job);
        assert_eq!(one, at(&[("TORCHELASTIC_RUN_ID", "a")]).unwrap().job);
        let mut last = torchrun;
        last[4] = ("MASTER_PORT", "65535");
        let p = placement(&last).unwrap().unwrap();
        let e = nccl_rendezvous(&p, &env(&[])).unwrap_err().to_string();
        assert!(e.contains("PIPE_NCCL_PORT"), "{e}");
        let mut v6 = torchrun;
        v6[3] = ("MASTER_ADDR", "fe80::1");
        let p = placement(&v6).unwrap().unwrap();
        assert_eq!(
            nccl_rendezvous(&p, &env(&[])).unwrap().address,
            "[fe80::1]:29501"
        );
        let slurm_vars = [
            ("SLURM_STEP_ID", "0"),
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_STEP_NODELIST", "gpu[07-08]"),
            ("SLURM_JOB_ID", "123456"),
        ];
        let slurm = placement(&slurm_vars).unwrap().unwrap();
        let m = nccl_rendezvous(&slurm, &env(&slurm_vars)).unwrap();
        assert_eq!(m.address, format!("gpu07:{}", 30000 + 123456 % 30000));
        let mut other = slurm_vars;
        other[5] = ("SLURM_JOB_ID", "123457");
        assert_ne!(nccl_rendezvous(&slurm, &env(&other)).unwrap().job, m.job);
        let mpi = placement(&[
            ("OMPI_COMM_WORLD_RANK", "0"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "0"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
        ])
        .unwrap()
        .unwrap();
        let e = nccl_rendezvous(&mpi, &env(&[])).unwrap_err().to_string();
        assert!(e.contains("no address for rank 0"), "{e}");
    }

    fn ranks(scripts: &[&str]) -> Vec<std::process::Command> {
        scripts
            .iter()
            .map(|s| {
                let mut c = std::process::Command::new("sh");
                c.arg("-c").arg(s);
                c
            })
            .collect()
    }

    /// A rank that fails stops the others at once (SIGTERM, then SIGKILL when ignored), and is
    /// named; rank 0's own code comes back when every rank ends by itself.
    #[test]
    fn data_parallel_gpu_ranks_end_together_when_one_fails() {
        use std::time::{Duration, Instant};
        let started = Instant::now();
        let ended = supervise(
            ranks(&["sleep 60", "trap '' TERM; sleep 60", "sleep 0.2; exit 3"]),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(
            ended,
            RanksEnded::Failed {
                rank: 2,
                status: "exit status: 3".into()
            }
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        let ended = supervise(ranks(&["exit 2", "exit 0"]), Duration::from_secs(5)).unwrap();
        assert_eq!(ended, RanksEnded::Rank0(2));
        // Rank 0 ended with its result, and rank 1 never follows: stopped after the grace
        // period, and rank 0's result stands; so does it when a rank fails after rank 0 ended.
        let started = Instant::now();
        let ended = supervise(ranks(&["exit 1", "sleep 60"]), Duration::from_secs(1)).unwrap();
        assert_eq!(ended, RanksEnded::Rank0(1));
        assert!(started.elapsed() < Duration::from_secs(10));
        let ended = supervise(
            ranks(&["exit 0", "sleep 0.3; exit 4"]),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(ended, RanksEnded::Rank0(0));
        // Killed rank 0: a failure, not its code.
        let ended = supervise(ranks(&["kill -9 $$", "sleep 60"]), Duration::from_secs(1)).unwrap();
        assert!(
            matches!(ended, RanksEnded::Failed { rank: 0, .. }),
            "{ended:?}"
        );
    }

    /// The ranks pipe starts read as torchrun's, and meet on the port given.
    #[test]
    fn data_parallel_gpu_rank_environment_is_torchruns() {
        let vars = gpu_rank_env(1, 2, 4242);
        let get = |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        let p = detect(&get).unwrap().unwrap();
        assert_eq!(
            (p.launcher, p.rank, p.world, p.local_rank, p.local_world),
            (Launcher::Torchrun, 1, 2, 1, Some(2))
        );
        assert_eq!(nccl_rendezvous(&p, &get).unwrap().address, "127.0.0.1:4242");
        assert_eq!(get("PIPE_COLLECTIVE").as_deref(), Some("nccl"));
    }

    #[test]
    fn slurm_node_lists_give_their_first_host() {
        assert_eq!(first_host("n1"), "n1");
        assert_eq!(first_host("a,b"), "a");
        assert_eq!(first_host("node[03-05,7],x"), "node03");
        assert_eq!(first_host("node[7,9]"), "node7");
    }
}
