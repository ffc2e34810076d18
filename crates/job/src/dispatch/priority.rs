//! `--priority N`: the body field `priority` that SGLang (`--enable-priority-scheduling`) and
//! vLLM (`--scheduling-policy priority`) schedule by, so online requests can win over batch
//! work.
//!
//! The field is spliced in front of the body's own fields rather than the body parsed and
//! written again: a request stays as cheap to forward as without it, and a line that sets its
//! own `priority` keeps it (JSON parsers, Python's included, keep the last of duplicate keys).

use bytes::Bytes;

/// `body` (a JSON object, as validation guarantees) with `"priority": N` as its first field.
pub fn with_priority(body: &Bytes, priority: i64) -> Bytes {
    let Some(open) = body.iter().position(|&b| b == b'{') else {
        return body.clone();
    };
    let rest = &body[open + 1..];
    let empty = rest
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'}');
    let field = format!("\"priority\":{priority}{}", if empty { "" } else { "," });
    let mut out = Vec::with_capacity(body.len() + field.len());
    out.extend_from_slice(&body[..=open]);
    out.extend_from_slice(field.as_bytes());
    out.extend_from_slice(rest);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(body: &Bytes) -> serde_json::Value {
        serde_json::from_slice(body).expect("still JSON")
    }

    #[test]
    fn the_field_comes_first_and_a_line_s_own_priority_wins() {
        let b = with_priority(&Bytes::from_static(br#"{"model":"m","max_tokens":3}"#), -5);
        assert_eq!(&b[..], br#"{"priority":-5,"model":"m","max_tokens":3}"#);
        assert_eq!(parsed(&b)["priority"], -5);
        let own = with_priority(&Bytes::from_static(br#" { "priority": 7 }"#), 1);
        assert_eq!(parsed(&own)["priority"], 7);
        let empty = with_priority(&Bytes::from_static(b"{ }"), 2);
        assert_eq!(parsed(&empty), serde_json::json!({"priority": 2}));
    }
}
