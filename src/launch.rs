//! Where this process sits in a data-parallel job, read from the launcher that started it:
//! Open MPI's `mpirun` (`OMPI_COMM_WORLD_*`), Slurm's `srun` (`SLURM_PROCID`, `SLURM_NTASKS`,
//! `SLURM_LOCALID`, inside a job step), or torchrun (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
//! `MASTER_ADDR`, `MASTER_PORT`). pipe starts no ranks over the network itself: `--ranks N` on one
//! machine runs `mpirun -np N` (see [`mpirun_command`]).

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
    fn slurm_node_lists_give_their_first_host() {
        assert_eq!(first_host("n1"), "n1");
        assert_eq!(first_host("a,b"), "a");
        assert_eq!(first_host("node[03-05,7],x"), "node03");
        assert_eq!(first_host("node[7,9]"), "node7");
    }
}
