//! Text tokenizers for nanoGPT-style data preparation.
//!
//! Two kinds, matching nanoGPT's `data/*/prepare.py` scripts:
//! - [`Tokenizer::Char`]: `shakespeare_char`, whose vocabulary is the sorted set of
//!   characters in the corpus (the `stoi`/`itos` of its `meta.pkl`);
//! - [`Tokenizer::Gpt2`]: the GPT-2 BPE (`tiktoken.get_encoding("gpt2")`, i.e. the
//!   `r50k_base` ranks, bundled in tiktoken-rs so no network access is needed). Encoding goes
//!   through [`gpt2::Gpt2Encoder`] (same tokens as tiktoken, several times faster); decoding through
//!   tiktoken-rs.

pub mod gpt2;

use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;

use anyhow::{Context, anyhow};
use tiktoken_rs::CoreBPE;

/// GPT-2's vocabulary: 50,000 merges + 256 byte tokens + `<|endoftext|>`.
const GPT2_VOCAB_SIZE: usize = 50257;
/// Id of GPT-2's `<|endoftext|>`, the only special token of the `gpt2` encoding.
const GPT2_EOT: u32 = 50256;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Tokenizer {
    /// nanoGPT's shakespeare_char: the sorted set of characters in the text (meta.pkl's stoi/itos).
    Char { chars: Vec<char> },
    /// GPT-2 BPE (tiktoken's r50k_base / "gpt2" ranks, bundled offline by tiktoken-rs), vocab 50257.
    Gpt2,
}

/// The GPT-2 BPE, built on first use (parsing the bundled ranks takes a moment).
/// Building can only fail if the bundled ranks are corrupt, so the error is kept
/// as a message and reported by each call rather than panicking.
fn gpt2_bpe() -> anyhow::Result<&'static CoreBPE> {
    static BPE: OnceLock<Result<CoreBPE, String>> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::r50k_base().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("building the GPT-2 (r50k_base) tokenizer: {e}"))
}

/// The fast GPT-2 encoder (built on first use from the bundled ranks, like [`gpt2_bpe`]).
pub fn gpt2_encoder() -> anyhow::Result<&'static gpt2::Gpt2Encoder> {
    static ENC: OnceLock<Result<gpt2::Gpt2Encoder, String>> = OnceLock::new();
    ENC.get_or_init(|| {
        let bpe = gpt2_bpe().map_err(|e| format!("{e:#}"))?;
        gpt2::Gpt2Encoder::new(bpe, GPT2_EOT).map_err(|e| format!("{e:#}"))
    })
    .as_ref()
    .map_err(|e| anyhow!("building the GPT-2 encoder: {e}"))
}

impl Tokenizer {
    /// A character-level tokenizer whose vocabulary is the sorted unique characters of
    /// `text` (sorted by code point, as Python's `sorted(set(text))`).
    pub fn char_from_text(text: &str) -> Tokenizer {
        let chars: BTreeSet<char> = text.chars().collect();
        Tokenizer::Char {
            chars: chars.into_iter().collect(),
        }
    }

    /// Number of distinct token ids.
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Char { chars } => chars.len(),
            Tokenizer::Gpt2 => GPT2_VOCAB_SIZE,
        }
    }

    /// Encodes `text` to token ids.
    ///
    /// `Char` fails on the first character not in the vocabulary, naming it and its
    /// position. `Gpt2` is tiktoken's `encode_ordinary`: special-token text such as
    /// `<|endoftext|>` is encoded as plain text, as in nanoGPT's `prepare.py`.
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        match self {
            Tokenizer::Char { chars } => {
                let stoi: HashMap<char, u32> = chars
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| (c, i as u32))
                    .collect();
                text.char_indices()
                    .enumerate()
                    .map(|(index, (byte, c))| {
                        stoi.get(&c).copied().ok_or_else(|| {
                            anyhow!(
                                "character {c:?} (U+{:04X}) at character {index} (byte {byte}) \
                                 is not in the tokenizer's vocabulary of {} characters",
                                c as u32,
                                chars.len()
                            )
                        })
                    })
                    .collect()
            }
            Tokenizer::Gpt2 => {
                let mut ids = Vec::with_capacity(text.len() / 3);
                gpt2_encoder()?.encode_with(text, |id| ids.push(id));
                Ok(ids)
            }
        }
    }

    /// Decodes token ids back to text; fails on an id outside the vocabulary.
    ///
    /// For `Gpt2`, a slice of ids can end (or start) inside a multi-byte UTF-8
    /// character; such bytes become U+FFFD rather than an error.
    pub fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        match self {
            Tokenizer::Char { chars } => ids
                .iter()
                .enumerate()
                .map(|(i, &id)| {
                    chars.get(id as usize).copied().ok_or_else(|| {
                        anyhow!(
                            "token id {id} at position {i} is out of range for a vocabulary of {}",
                            chars.len()
                        )
                    })
                })
                .collect(),
            Tokenizer::Gpt2 => {
                let bytes = gpt2_bpe()?
                    .decode_bytes(ids)
                    .with_context(|| format!("GPT-2 vocabulary has {GPT2_VOCAB_SIZE} ids"))?;
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
        }
    }

    /// The end-of-text token nanoGPT appends between documents, if the tokenizer has one.
    pub fn eot_token(&self) -> Option<u32> {
        match self {
            Tokenizer::Char { .. } => None,
            Tokenizer::Gpt2 => Some(GPT2_EOT),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_vocab_is_sorted_and_round_trips() {
        let text = "hello world\nHe said: 'hi!'";
        let tok = Tokenizer::char_from_text(text);
        let Tokenizer::Char { chars } = &tok else {
            panic!("expected a char tokenizer")
        };
        let mut expected: Vec<char> = text.chars().collect();
        expected.sort();
        expected.dedup();
        assert_eq!(chars, &expected);
        assert_eq!(chars[0], '\n');
        assert_eq!(tok.vocab_size(), expected.len());
        assert_eq!(tok.eot_token(), None);

        let ids = tok.encode(text).unwrap();
        assert_eq!(ids.len(), text.chars().count());
        assert!(ids.iter().all(|&i| (i as usize) < tok.vocab_size()));
        assert_eq!(tok.decode(&ids).unwrap(), text);
        // 'H' < 'e' < 'h' in code-point order.
        assert_eq!(
            tok.encode("He").unwrap()[0],
            chars.iter().position(|&c| c == 'H').unwrap() as u32
        );
    }

    #[test]
    fn char_handles_non_ascii() {
        let text = "naïve café ☕";
        let tok = Tokenizer::char_from_text(text);
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }

    #[test]
    fn char_unknown_character_is_named_with_position() {
        let tok = Tokenizer::char_from_text("abc");
        let err = tok.encode("abéc").unwrap_err().to_string();
        assert!(err.contains("'é'"), "{err}");
        assert!(err.contains("character 2"), "{err}");
        assert!(err.contains("byte 2"), "{err}");
        let err = tok.decode(&[0, 3]).unwrap_err().to_string();
        assert!(err.contains("token id 3"), "{err}");
    }

    #[test]
    fn serde_shape() {
        let tok = Tokenizer::char_from_text("ba");
        let json = serde_json::to_string(&tok).unwrap();
        assert_eq!(json, r#"{"kind":"char","chars":["a","b"]}"#);
        assert_eq!(serde_json::from_str::<Tokenizer>(&json).unwrap(), tok);
        let json = serde_json::to_string(&Tokenizer::Gpt2).unwrap();
        assert_eq!(json, r#"{"kind":"gpt2"}"#);
        assert_eq!(
            serde_json::from_str::<Tokenizer>(&json).unwrap(),
            Tokenizer::Gpt2
        );
    }

    #[test]
    fn gpt2_known_ids() {
        let tok = Tokenizer::Gpt2;
        assert_eq!(tok.vocab_size(), 50257);
        assert_eq!(tok.eot_token(), Some(50256));
        assert_eq!(
            tok.encode("Hello, my dog is cute").unwrap(),
            vec![15496, 11, 616, 3290, 318, 13779]
        );
        // encode_ordinary: special-token text is not turned into the special token.
        let ids = tok.encode("<|endoftext|>").unwrap();
        assert!(!ids.contains(&50256), "{ids:?}");
        assert_eq!(tok.decode(&[50256]).unwrap(), "<|endoftext|>");
    }

    #[test]
    fn gpt2_round_trip_and_lossy_decode() {
        let tok = Tokenizer::Gpt2;
        let text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\n\
                    All:\tSpeak, speak!  \"Quoted\" (parens) — em-dash; naïve 100% ☕\n";
        let ids = tok.encode(text).unwrap();
        assert!(ids.iter().all(|&i| (i as usize) < tok.vocab_size()));
        assert_eq!(tok.decode(&ids).unwrap(), text);

        // '☕' is 3 UTF-8 bytes split over byte tokens: decoding only some of them
        // must not fail.
        let ids = tok.encode("☕").unwrap();
        assert!(ids.len() > 1, "{ids:?}");
        let partial = tok.decode(&ids[..1]).unwrap();
        assert!(partial.contains('\u{FFFD}'), "{partial:?}");

        assert!(tok.decode(&[50257]).is_err());
    }
}
