//! One JSONL line to its document: the string in `field`, found without building the whole object
//! (other fields are skipped, and the string is borrowed from the line when it has no escapes).

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// The document in `line` (one JSON object), or a message saying what is wrong with the line.
pub fn document<'a>(line: &'a [u8], field: &str) -> Result<Cow<'a, str>, String> {
    // A UTF-8 byte-order mark (what some editors write first) is skipped, as manifests' is.
    let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
    let mut de = serde_json::Deserializer::from_slice(line);
    let found = FieldOf { field }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| {
            if e.is_data() {
                // Our own messages (wrong type of value) or "expected a JSON object".
                strip_position(&e.to_string())
            } else {
                format!(
                    "not valid JSON ({}, at column {})",
                    strip_position(&e.to_string()),
                    e.column()
                )
            }
        })?;
    found.ok_or_else(|| {
        let keys = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(line)
            .map(|m| m.keys().cloned().collect::<Vec<_>>().join(", "))
            .unwrap_or_default();
        format!("no field `{field}` (the line's fields: {keys})")
    })
}

fn strip_position(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

struct FieldOf<'f> {
    field: &'f str,
}

impl<'de> DeserializeSeed<'de> for FieldOf<'_> {
    type Value = Option<Cow<'de, str>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FieldOf<'_> {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a JSON object with a string field `{}`", self.field)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<CowStr<'de>>()? {
            if key.0 == self.field {
                let v: Option<CowStr<'de>> =
                    map.next_value_seed(StringValue { field: self.field })?;
                found = v.map(|v| v.0);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// A string, borrowed from the input when it has no escapes.
struct CowStr<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The field's value: a string, or an error naming what it is instead.
struct StringValue<'f> {
    field: &'f str,
}

impl<'de> DeserializeSeed<'de> for StringValue<'_> {
    type Value = Option<CowStr<'de>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StringValue<'_> {
    type Value = Option<CowStr<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "field `{}` to be a string", self.field)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Some(CowStr(Cow::Borrowed(v))))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(CowStr(Cow::Owned(v.to_string()))))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Some(CowStr(Cow::Owned(v))))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Err(E::custom(format!("field `{}` is null", self.field)))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Err(E::custom(format!(
            "field `{}` is a boolean, not a string",
            self.field
        )))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Err(E::custom(format!(
            "field `{}` is a number, not a string",
            self.field
        )))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Err(E::custom(format!(
            "field `{}` is a number, not a string",
            self.field
        )))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Err(E::custom(format!(
            "field `{}` is a number, not a string",
            self.field
        )))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Err(de::Error::custom(format!(
            "field `{}` is a list, not a string",
            self.field
        )))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Err(de::Error::custom(format!(
            "field `{}` is an object, not a string",
            self.field
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_field() {
        let d = document(br#"{"id": 3, "meta": {"text": 1}, "text": "a b"}"#, "text").unwrap();
        assert!(matches!(d, Cow::Borrowed("a b")));
        let d = document(br#"{"text": "tab\there \u00e9"}"#, "text").unwrap();
        assert_eq!(d, "tab\there é");
        assert_eq!(document(br#"{"content": ""}"#, "content").unwrap(), "");
        // A file that starts with a byte-order mark.
        let d = document(b"\xEF\xBB\xBF{\"text\": \"bom\"}", "text").unwrap();
        assert_eq!(d, "bom");
    }

    #[test]
    fn says_what_is_wrong() {
        let e = document(br#"{"id": 1, "body": "x"}"#, "text").unwrap_err();
        assert!(
            e.contains("no field `text`") && e.contains("body, id"),
            "{e}"
        );
        let e = document(b"{\"text\": \"unterminated", "text").unwrap_err();
        assert!(e.starts_with("not valid JSON"), "{e}");
        let e = document(b"not json", "text").unwrap_err();
        assert!(e.starts_with("not valid JSON"), "{e}");
        let e = document(br#"{"text": null}"#, "text").unwrap_err();
        assert!(e.contains("is null"), "{e}");
        let e = document(br#"{"text": 5}"#, "text").unwrap_err();
        assert!(e.contains("is a number"), "{e}");
        let e = document(br#"["text"]"#, "text").unwrap_err();
        assert!(e.contains("JSON object"), "{e}");
        let e = document(br#"{"text": "a"} {"text": "b"}"#, "text").unwrap_err();
        assert!(e.contains("trailing"), "{e}");
    }
}
