//! Bad input: the one error type behind exit code 2 (a manifest, a stage's parameters, a `--set`,
//! a checkpoint or model that cannot be found). Any other error is a failure while running
//! (exit 1). `cli::error_json` reads the location and help of a `--json` command's error from it.

use crate::manifest::{ManifestError, Origin};
use std::fmt;

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
        e.downcast_ref::<InputError>().cloned().or_else(|| {
            // manifest.rs still makes its own type; it is bad input all the same.
            e.downcast_ref::<ManifestError>().map(InputError::from)
        })
    }
}

impl From<&ManifestError> for InputError {
    fn from(m: &ManifestError) -> InputError {
        InputError {
            origin: Some(m.origin.clone()),
            message: m.message.clone(),
            help: m.help.clone(),
        }
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
    fn reads_the_same_as_a_manifest_error_and_is_found_under_context() {
        let origin = Origin {
            file: "m.yaml".into(),
            line: 3,
            col: 5,
        };
        let m = ManifestError {
            origin: origin.clone(),
            message: "bad".into(),
            help: Some("fix it".into()),
        };
        let i = InputError::at(origin, "bad", Some("fix it"));
        assert_eq!(i.to_string(), m.to_string());
        assert_eq!(InputError::from(&m), i);
        let e = anyhow::Error::from(i.clone()).context("loading");
        assert_eq!(InputError::of(&e), Some(i));
        let e = anyhow::Error::from(m).context("loading");
        assert!(InputError::of(&e).is_some());
        assert_eq!(InputError::of(&anyhow::anyhow!("io")), None);
        assert_eq!(InputError::new("bad", None).to_string(), "bad");
    }
}
