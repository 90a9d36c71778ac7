//! A command stage's output streams to the terminal and the run's log file; it is never held in
//! memory. (Its own test binary, so the children's peak RSS it reads is this run's alone.)

mod common;
use common::*;

#[test]
fn a_command_that_prints_a_lot_does_not_grow_pipes_memory() {
    let sb = Sandbox::new("loud");
    let mb = 64;
    sb.write(
        "m.yaml",
        &format!(
            "name: loud\nstages:\n  talk:\n    kind: command\n    cmd: yes 'a line of output' | head -c {}; echo done > $PIPE_OUT/x\n    outs: [x]\n",
            mb << 20
        ),
    );
    let status = sb
        .cmd(&["run", "m.yaml"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    // SAFETY: getrusage fills the struct it is given.
    let peak_kb = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
        u.ru_maxrss
    };
    assert!(
        peak_kb < ((mb as i64) << 10) / 2,
        "pipe's peak RSS was {peak_kb} kB for {mb} MB of command output"
    );
    // All of it is in the stage's log.
    let runs = sb.cache().join("runs");
    let run = std::fs::read_dir(&runs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let log = std::fs::metadata(run.join("talk.log")).unwrap();
    assert_eq!(log.len(), mb << 20);
}
