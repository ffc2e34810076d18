//! Parsing one input line.
//!
//! A line is parsed once into borrowed parts: `custom_id`, `method` and `url` as strings, and
//! `body` as a [`RawValue`], so the body can be forwarded to the engine exactly as the user wrote
//! it. Only the two body fields the batch rules need (`model`, `stream`) are looked at.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::Problem;

/// A structurally valid request line (the file-wide rules are checked by [`crate::LineRules`]).
#[derive(Debug)]
pub struct Request<'a> {
    pub custom_id: Cow<'a, str>,
    pub url: Cow<'a, str>,
    pub model: Cow<'a, str>,
    /// The body exactly as it appears in the line.
    pub body: &'a RawValue,
}

/// The top-level fields, each kept raw so that a wrong type becomes a precise [`Problem`]
/// instead of serde's generic message.
#[derive(Deserialize)]
struct RawLine<'a> {
    #[serde(borrow)]
    custom_id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<&'a RawValue>,
    #[serde(borrow)]
    url: Option<&'a RawValue>,
    #[serde(borrow)]
    body: Option<&'a RawValue>,
}

/// The only two body fields the rules need; everything else is skipped.
#[derive(Deserialize)]
struct BodyProbe<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    stream: Option<&'a RawValue>,
}

/// A JSON string that borrows from the input when it has no escapes.
#[derive(Deserialize)]
pub(crate) struct Str<'a>(#[serde(borrow)] pub(crate) Cow<'a, str>);

/// Parses one line (without its line ending). Returns every problem found on the line.
pub fn parse_line(line: &[u8]) -> Result<Request<'_>, Vec<Problem>> {
    let text = std::str::from_utf8(line).map_err(|e| {
        vec![Problem::InvalidUtf8 {
            byte_offset: e.valid_up_to(),
        }]
    })?;
    if first_byte(text) != Some(b'{') {
        // Tell "valid JSON of the wrong kind" apart from "not JSON at all".
        return Err(vec![
            match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Ok(_) => Problem::NotAnObject,
                Err(e) => Problem::InvalidJson {
                    detail: e.to_string(),
                },
            },
        ]);
    }
    let raw: RawLine<'_> = serde_json::from_str(text).map_err(|e| {
        vec![Problem::InvalidJson {
            detail: e.to_string(),
        }]
    })?;

    let mut problems = Vec::new();
    let custom_id = string_field(raw.custom_id, "custom_id", &mut problems);
    if custom_id.as_deref() == Some("") {
        problems.push(Problem::EmptyCustomId);
    }
    if let Some(method) = string_field(raw.method, "method", &mut problems)
        && method != "POST"
    {
        problems.push(Problem::InvalidMethod {
            found: method.into_owned(),
        });
    }
    let url = string_field(raw.url, "url", &mut problems);
    let (body, model) = match present(raw.body) {
        None => {
            problems.push(Problem::MissingField { field: "body" });
            (None, None)
        }
        Some(body) if first_byte(body.get()) != Some(b'{') => {
            problems.push(Problem::WrongType {
                field: "body",
                expected: "a JSON object",
            });
            (None, None)
        }
        Some(body) => (Some(body), probe_body(body, &mut problems)),
    };
    match (custom_id, url, body, model) {
        (Some(custom_id), Some(url), Some(body), Some(model)) if problems.is_empty() => {
            Ok(Request {
                custom_id,
                url,
                model,
                body,
            })
        }
        _ => Err(problems),
    }
}

/// The `custom_id` of a line when it has a string one, however wrong the rest of the line is
/// (invalid UTF-8 elsewhere, a field of the wrong type, JSON cut off after the id). Lets an
/// invalid line's error record still say which request it was.
pub fn custom_id_of(line: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(line);
    let mut found = None;
    // Errors after the id was read (the rest of the line is broken) do not matter here.
    let _ = serde::de::DeserializeSeed::deserialize(
        FirstCustomId(&mut found),
        &mut serde_json::Deserializer::from_str(&text),
    );
    found
}

/// Reads a JSON object's entries up to its `custom_id`, storing it when it is a string.
struct FirstCustomId<'a>(&'a mut Option<String>);

impl<'de> serde::de::DeserializeSeed<'de> for FirstCustomId<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FirstCustomId<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key == "custom_id" {
                if let Ok(Some(Str(id))) = map.next_value::<Option<Str<'de>>>() {
                    *self.0 = Some(id.into_owned());
                }
                // Stop here: the first custom_id is the line's (duplicate keys are invalid).
                return Err(serde::de::Error::custom("stop"));
            }
            map.next_value::<serde::de::IgnoredAny>()?;
        }
        Ok(())
    }
}

/// Checks `body.model` and `body.stream`; returns the model when it is a string.
fn probe_body<'a>(body: &'a RawValue, problems: &mut Vec<Problem>) -> Option<Cow<'a, str>> {
    // The body was already parsed as part of the line, so this cannot fail on syntax; a failure
    // here would be a duplicate key, which is reported like any other invalid JSON.
    let probe: BodyProbe<'a> = match serde_json::from_str(body.get()) {
        Ok(probe) => probe,
        Err(e) => {
            problems.push(Problem::InvalidJson {
                detail: format!("in body: {e}"),
            });
            return None;
        }
    };
    if probe.stream.is_some_and(|s| s.get() == "true") {
        problems.push(Problem::StreamNotSupported);
    }
    string_field(probe.model, "body.model", problems)
}

/// A field that must be a string: records a problem when it is absent, null or not a string.
fn string_field<'a>(
    value: Option<&'a RawValue>,
    field: &'static str,
    problems: &mut Vec<Problem>,
) -> Option<Cow<'a, str>> {
    let Some(value) = present(value) else {
        problems.push(Problem::MissingField { field });
        return None;
    };
    match serde_json::from_str::<Str<'a>>(value.get()) {
        Ok(Str(s)) => Some(s),
        // A JSON string whose escapes do not decode (a lone surrogate): not a type problem.
        Err(e) if value.get().starts_with('"') => {
            problems.push(Problem::UndecodableString {
                field,
                detail: e.to_string(),
            });
            None
        }
        Err(_) => {
            problems.push(Problem::WrongType {
                field,
                expected: "a string",
            });
            None
        }
    }
}

/// Treats an explicit JSON `null` like an absent field.
fn present(value: Option<&RawValue>) -> Option<&RawValue> {
    value.filter(|v| v.get() != "null")
}

fn first_byte(text: &str) -> Option<u8> {
    text.bytes().find(|b| !b.is_ascii_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(line: &str) -> Vec<&'static str> {
        match parse_line(line.as_bytes()) {
            Ok(_) => vec![],
            Err(p) => p.iter().map(Problem::code).collect(),
        }
    }

    #[test]
    fn the_custom_id_is_read_however_broken_the_rest_is() {
        for (line, id) in [
            (&br#"{"custom_id":"a","method":3}"#[..], Some("a")),
            (
                br#"{"url":"/v1/x","custom_id":"b","body":{"model":"m""#,
                Some("b"),
            ),
            (b"{\"custom_id\":\"c\",\"body\":\"\xff\"}", Some("c")),
            (br#"{"custom_id":5}"#, None),
            (br#"{"custom_id":null}"#, None),
            (br#"not json"#, None),
            (br#"{"custom_id":"\ud800"}"#, None),
        ] {
            assert_eq!(
                custom_id_of(line).as_deref(),
                id,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn a_lone_surrogate_is_not_called_a_wrong_type() {
        let line = r#"{"custom_id":"\ud800","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}"#;
        let problems = parse_line(line.as_bytes()).expect_err("invalid");
        assert!(
            matches!(
                &problems[..],
                [Problem::UndecodableString {
                    field: "custom_id",
                    ..
                }]
            ),
            "{problems:?}"
        );
    }

    #[test]
    fn parses_a_valid_line_and_keeps_the_body_verbatim() {
        let line = r#"{"custom_id":"a\"1","method":"POST","url":"/v1/chat/completions","body":{"model":"m", "messages":[]}}"#;
        let req = parse_line(line.as_bytes()).expect("valid");
        assert_eq!(req.custom_id, "a\"1");
        assert_eq!(req.url, "/v1/chat/completions");
        assert_eq!(req.model, "m");
        assert_eq!(req.body.get(), r#"{"model":"m", "messages":[]}"#);
    }

    #[test]
    fn reports_every_field_problem_on_a_line() {
        let c = codes(r#"{"custom_id":"","method":"GET","body":{"stream":true,"model":3}}"#);
        assert_eq!(
            c,
            vec![
                "empty_custom_id",
                "invalid_method",
                "missing_required_field",
                "stream_not_supported",
                "invalid_field_type"
            ]
        );
    }

    #[test]
    fn tells_non_objects_from_broken_json() {
        assert_eq!(codes("[1,2]"), vec!["not_an_object"]);
        assert_eq!(codes("{\"custom_id\":"), vec!["invalid_json_line"]);
        assert_eq!(codes("nonsense"), vec!["invalid_json_line"]);
        assert_eq!(
            codes(r#"{"custom_id":"a","method":"POST","url":"/v1/x","body":[1]}"#),
            vec!["invalid_field_type"]
        );
    }

    #[test]
    fn null_fields_count_as_missing_and_stream_false_is_fine() {
        assert_eq!(
            codes(
                r#"{"custom_id":null,"method":"POST","url":"/u","body":{"model":"m","stream":false}}"#
            ),
            vec!["missing_required_field"]
        );
    }

    #[test]
    fn invalid_utf8_names_the_offset() {
        let err = parse_line(b"{\"a\":\"\xff\"}").expect_err("invalid");
        assert_eq!(err, vec![Problem::InvalidUtf8 { byte_offset: 6 }]);
    }

    #[test]
    fn duplicate_keys_are_invalid_json() {
        assert_eq!(
            codes(
                r#"{"custom_id":"a","custom_id":"b","method":"POST","url":"/u","body":{"model":"m"}}"#
            ),
            vec!["invalid_json_line"]
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_bytes_give_a_request_or_at_least_one_problem(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            match parse_line(&bytes) {
                Ok(r) => prop_assert!(r.body.get().starts_with('{'), "body must be an object"),
                Err(problems) => prop_assert!(!problems.is_empty()),
            }
        }

        #[test]
        fn any_json_object_gives_a_request_or_at_least_one_problem(
            id in prop::option::of(".{0,8}"),
            method in prop::option::of(prop_oneof![Just("POST".to_owned()), ".{0,5}"]),
            model in prop::option::of(".{0,8}"),
            stream in prop::option::of(any::<bool>()),
        ) {
            let mut line = serde_json::Map::new();
            if let Some(id) = &id { line.insert("custom_id".into(), id.clone().into()); }
            if let Some(m) = &method { line.insert("method".into(), m.clone().into()); }
            line.insert("url".into(), "/v1/completions".into());
            let mut body = serde_json::Map::new();
            if let Some(m) = &model { body.insert("model".into(), m.clone().into()); }
            if let Some(s) = stream { body.insert("stream".into(), s.into()); }
            line.insert("body".into(), body.into());
            let text = serde_json::Value::Object(line).to_string();
            let expect_ok = id.as_deref().is_some_and(|i| !i.is_empty())
                && method.as_deref() == Some("POST")
                && model.is_some()
                && stream != Some(true);
            match parse_line(text.as_bytes()) {
                Ok(r) => {
                    prop_assert!(expect_ok);
                    prop_assert_eq!(Some(r.custom_id.as_ref()), id.as_deref());
                }
                Err(p) => {
                    prop_assert!(!expect_ok);
                    prop_assert!(!p.is_empty());
                }
            }
        }
    }
}
