//! Stage and run statuses: what a run's log says, what `show` and `--json` print.

use super::RunEvent;
use serde::{Deserialize, Serialize};

/// A status enum, its `as_str` (the log's and `--json`'s string) and `ALL` (every variant), from
/// one list, so no list of them can leave one out.
macro_rules! status_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(rename_all = "kebab-case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every status, in declaration order (the tests check each one's text).
            #[cfg(test)]
            pub const ALL: &[$name] = &[$($name::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}

status_enum!(
    /// A stage's status. A run logs `executed`, `cached`, `pulled` or `resumed` when a stage
    /// finishes; `show` rebuilds the others from the log (`pending`, `running`, `interrupted`,
    /// `failed`, `skipped`); `pipe status` predicts `cached`, `stale`, `pulled` or `blocked`.
    /// Serialized as the lower-case name.
    StageStatus {
        Executed => "executed",
        Cached => "cached",
        /// Downloaded from the remote store (`--remote`): computed elsewhere, not here.
        Pulled => "pulled",
        Resumed => "resumed",
        Failed => "failed",
        Skipped => "skipped",
        Pending => "pending",
        Running => "running",
        Interrupted => "interrupted",
        Stale => "stale",
        Blocked => "blocked",
    }
);

impl StageStatus {
    /// Whether the stage's outputs exist (it ran, was cached, or resumed to the end).
    pub fn done(self) -> bool {
        matches!(
            self,
            StageStatus::Executed
                | StageStatus::Cached
                | StageStatus::Pulled
                | StageStatus::Resumed
        )
    }
}

status_enum!(
    /// A run's status. A run logs `succeeded` or `failed` when it finishes; reading it back adds
    /// `running` (its lock is held), `interrupted` (no `run_finished` and nobody holds the lock)
    /// and `damaged` (its plan cannot be read). Serialized as the lower-case name.
    RunStatus {
        Succeeded => "succeeded",
        Failed => "failed",
        Interrupted => "interrupted",
        Running => "running",
        Damaged => "damaged",
    }
);

/// How a run's log says it ended: its last `run_finished`, unless a `run_started` came after it
/// (a resume is, or was, in progress); none while it has not finished.
pub fn finished_status(events: &[RunEvent]) -> Option<RunStatus> {
    let last_start = events
        .iter()
        .rposition(|e| matches!(e, RunEvent::RunStarted { .. }));
    let last_finish = events
        .iter()
        .rposition(|e| matches!(e, RunEvent::RunFinished { .. }))?;
    if last_start > Some(last_finish) {
        return None;
    }
    match &events[last_finish] {
        RunEvent::RunFinished { status, .. } => Some(*status),
        _ => None,
    }
}
