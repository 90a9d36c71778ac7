//! The store's two kinds of name, as types: [`Hash`], an object's blake3 hash, and [`Key`], a
//! stage's key (the blake3 hash of its key material, see `key.rs`). Both are 64 lowercase hex
//! characters and serialize as plain strings; they are distinct so that one is never passed where
//! the other is meant. Names read from disk or the network are checked: a short or odd name would
//! index past its end or step outside the store's folders.

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

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
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
}
