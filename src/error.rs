//! Bad input: the one error type behind exit code 2 (a manifest, a stage's parameters, a `--set`,
//! a checkpoint or model that cannot be found). Any other error is a failure while running
//! (exit 1). `cli::error_json` reads the location and help of a `--json` command's error from it.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a value came from, for error messages.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct Origin {
    pub file: String,
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file)
        } else {
            write!(f, "{}:{}:{}", self.file, self.line, self.col)
        }
    }
}

/// Bad input: where (when known), what, and how to fix it.
#[derive(Clone, Debug, PartialEq)]
pub struct InputError {
    pub origin: Option<Origin>,
    pub message: String,
    pub help: Option<String>,
}

impl InputError {
    /// An error located at `origin` (a file, or a file:line:col).
    pub fn at(origin: Origin, message: impl Into<String>, help: Option<&str>) -> InputError {
        InputError {
            origin: Some(origin),
            message: message.into(),
            help: help.map(str::to_string),
        }
    }

    /// An error with no place in a file.
    pub fn new(message: impl Into<String>, help: Option<&str>) -> InputError {
        InputError {
            origin: None,
            message: message.into(),
            help: help.map(str::to_string),
        }
    }

    /// The input error `e` is (or wraps in a context), if it is one.
    pub fn of(e: &anyhow::Error) -> Option<InputError> {
        e.downcast_ref::<InputError>().cloned()
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if let Some(o) = &self.origin {
            write!(f, "{o}: ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(h) = &self.help {
            write!(f, "\n  help: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for InputError {}

/// An [`InputError`] at `origin`, as an `anyhow::Error`.
pub fn err(origin: Origin, message: impl Into<String>, help: Option<&str>) -> anyhow::Error {
    InputError::at(origin, message, help).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_found_under_context_and_reads_with_its_location() {
        let origin = Origin {
            file: "m.yaml".into(),
            line: 3,
            col: 5,
        };
        let i = InputError::at(origin, "bad", Some("fix it"));
        assert_eq!(i.to_string(), "m.yaml:3:5: bad\n  help: fix it");
        let e = anyhow::Error::from(i.clone()).context("loading");
        assert_eq!(InputError::of(&e), Some(i));
        assert_eq!(InputError::of(&anyhow::anyhow!("io")), None);
        assert_eq!(InputError::new("bad", None).to_string(), "bad");
        let file = InputError::at(
            Origin {
                file: "m.yaml".into(),
                line: 0,
                col: 0,
            },
            "bad",
            None,
        );
        assert_eq!(file.to_string(), "m.yaml: bad");
    }
}
