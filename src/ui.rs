//! What the user sees while a run goes: messages on stderr (stdout is kept for results and
//! `--json`), and progress bars that hide themselves when stderr is not a terminal.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

pub struct Ui {
    pub json: bool,
    pub tty: bool,
}

impl Ui {
    pub fn new(json: bool) -> Ui {
        Ui {
            json,
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// A line for the user, on stderr.
    pub fn say(&self, msg: &str) {
        eprintln!("{msg}");
    }

    /// A progress bar over `len` steps that starts at step `start` (a resumed run), hidden when
    /// stderr is not a terminal. Its rate and ETA count only the steps made in this process.
    pub fn bar(&self, start: u64, len: u64, prefix: &str) -> ProgressBar {
        let pb = if self.tty {
            ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        pb.set_style(
            ProgressStyle::with_template(
                "{prefix:>10} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        pb.set_prefix(prefix.to_string());
        // indicatif's estimator takes the jump to `start` as steps done in no time. Setting the
        // position records it (the bar's first update is never rate-limited), and `reset_eta`
        // then forgets the rate while keeping that position as its base.
        pb.set_position(start);
        pb.reset_eta();
        pb
    }

    /// Prints a line above an active progress bar (or plainly when there is none).
    pub fn above(&self, pb: &ProgressBar, msg: &str) {
        if pb.is_hidden() {
            eprintln!("{msg}")
        } else {
            pb.println(msg)
        }
    }
}
