//! The store's names, as types: [`Hash`], an object's blake3 hash, and [`Key`], a stage's key
//! (the blake3 hash of its key material, see `key.rs`), both 64 lowercase hex characters; and
//! [`OutputName`], the name of one output of a stage (`ckpt`, `train.bin`, a command's `outs`).
//! All serialize as plain strings and are checked when read from disk or the network: a short or
//! odd name would index past its end, and an output name becomes a file name (a command's input
//! copy, an export's folder), so one that is absolute or climbs with `..` would write outside the
//! folder meant for it.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! hex_name {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, std::hash::Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks that `s` is 64 lowercase hex characters.
            pub fn parse(s: &str) -> Result<$name, String> {
                if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    Ok($name(s.to_string()))
                } else {
                    Err(format!(
                        "{:?} is not {} (64 lowercase hex characters)",
                        s,
                        $what
                    ))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The first 12 characters, as messages and tables print it.
            pub fn short(&self) -> &str {
                &self.0[..12]
            }
        }

        impl From<blake3::Hash> for $name {
            fn from(h: blake3::Hash) -> $name {
                $name(h.to_hex().to_string())
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<$name, String> {
                $name::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(h: $name) -> String {
                h.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.pad(&self.0)
            }
        }
    };
}

hex_name!(
    /// An object's name in the store: the blake3 hash of its bytes.
    Hash,
    "an object hash"
);

hex_name!(
    /// A stage's key: the blake3 hash of its canonical key material.
    Key,
    "a stage key"
);

/// The name of one output of a stage: one plain path component, so that joining it to a folder
/// stays inside that folder. 1 to [`OutputName::MAX_LEN`] bytes; no `/`, `\\`, NUL or other
/// control character; not starting with `.` (so never `.` or `..`) or `-` (never read as an option).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, std::hash::Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OutputName(String);

impl OutputName {
    pub const MAX_LEN: usize = 128;

    pub fn parse(s: &str) -> Result<OutputName, String> {
        let why = if s.is_empty() {
            Some("is empty")
        } else if s.len() > Self::MAX_LEN {
            Some("is longer than 128 bytes")
        } else if s.starts_with('.') {
            Some("starts with `.`")
        } else if s.starts_with('-') {
            Some("starts with `-`")
        } else if s.contains(['/', '\\']) {
            Some("contains a path separator")
        } else if s.chars().any(char::is_control) {
            Some("contains a control character")
        } else {
            None
        };
        match why {
            None => Ok(OutputName(s.to_string())),
            Some(why) => Err(format!(
                "output name {s:?} {why} (an output is a plain file name)"
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `folder/name`, which stays inside `folder` by construction (checked again here, so that
    /// no path built from a record can leave its base whatever the type allowed).
    pub fn path_in(&self, folder: &std::path::Path) -> std::path::PathBuf {
        let path = folder.join(&self.0);
        assert_eq!(path.parent(), Some(folder), "output name {:?}", self.0);
        path
    }
}

impl TryFrom<String> for OutputName {
    type Error = String;
    fn try_from(s: String) -> Result<OutputName, String> {
        OutputName::parse(&s)
    }
}

impl TryFrom<&str> for OutputName {
    type Error = String;
    fn try_from(s: &str) -> Result<OutputName, String> {
        OutputName::parse(s)
    }
}

impl From<OutputName> for String {
    fn from(n: OutputName) -> String {
        n.0
    }
}

impl std::borrow::Borrow<str> for OutputName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OutputName {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// A stage's outputs: each name and the object it is.
pub type Outputs = std::collections::BTreeMap<OutputName, Hash>;

/// Outputs from fixed names (the built-in kinds' `ckpt`, `train.bin`, ...).
pub fn outputs<const N: usize>(pairs: [(&str, Hash); N]) -> Outputs {
    pairs
        .into_iter()
        .map(|(n, h)| (OutputName::parse(n).expect("a fixed output name"), h))
        .collect()
}

impl Hash {
    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Hash {
        blake3::hash(bytes).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_when_read() {
        let h = Hash::of(b"x");
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, format!("\"{h}\""));
        assert_eq!(serde_json::from_str::<Hash>(&json).unwrap(), h);
        for bad in ["\"ab\"", "\"../../etc/passwd\"", &json.to_uppercase()] {
            assert!(serde_json::from_str::<Hash>(bad).is_err(), "{bad}");
        }
        assert!(Key::parse(h.as_str()).is_ok());
        assert_eq!(h.short().len(), 12);
    }

    #[test]
    fn output_names_are_one_plain_component() {
        for good in [
            "ckpt",
            "train.bin",
            "model.safetensors",
            "a b",
            "ünï",
            "x..y",
        ] {
            assert!(OutputName::parse(good).is_ok(), "{good}");
        }
        let long = "a".repeat(OutputName::MAX_LEN + 1);
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "/etc/passwd",
            "a/b",
            "a\\b",
            "-rf",
            ".hidden",
            "a\0b",
            "a\nb",
            &long,
        ] {
            assert!(OutputName::parse(bad).is_err(), "{bad:?}");
            let json = serde_json::to_string(bad).unwrap();
            assert!(
                serde_json::from_str::<OutputName>(&json).is_err(),
                "{bad:?}"
            );
        }
        let dir = std::path::Path::new("/base/dir");
        assert_eq!(
            OutputName::parse("a.txt").unwrap().path_in(dir),
            dir.join("a.txt")
        );
    }
}
