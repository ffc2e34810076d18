//! API keys: each maps to an owner, and every file and batch belongs to one owner. Keys come
//! from `--api-key-file` (one `KEY OWNER` per line) and/or `BATCH_RUNNER_API_KEYS` (the same,
//! entries separated by newlines or commas). A third word `operator` (`KEY OWNER operator`)
//! gives the key the operator's routes too (`/v1/x/usage`); as an owner it sees only its own.

use std::collections::HashMap;

/// The owner of everything when no keys are configured.
pub const ANONYMOUS: &str = "anonymous";

#[derive(Debug, Clone, Default)]
pub struct Keys {
    owners: HashMap<String, String>,
    operators: std::collections::HashSet<String>,
}

/// The owner a request acts for, put in its extensions by the auth layer.
#[derive(Debug, Clone)]
pub struct Owner(pub String);

/// Whether the request's key is an operator's, put in its extensions by the auth layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operator(pub bool);

impl Keys {
    /// Parses `KEY OWNER` entries; `source` names where they came from in error messages.
    pub fn add_entries(&mut self, text: &str, source: &str, commas: bool) -> Result<(), String> {
        let split: Vec<&str> = if commas {
            text.split([',', '\n']).collect()
        } else {
            text.split('\n').collect()
        };
        for (i, entry) in split.iter().enumerate() {
            let entry = entry.trim();
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            let mut parts = entry.split_whitespace();
            let (Some(key), Some(owner), role, None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(format!(
                    "{source}, entry {}: expected 'KEY OWNER' (two words, or three with \
                     'operator'), e.g. 'sk-team-a team-a'",
                    i + 1
                ));
            };
            match role {
                None => {}
                Some("operator") => {
                    self.operators.insert(key.to_owned());
                }
                Some(other) => {
                    return Err(format!(
                        "{source}, entry {}: unknown role {other:?}; the only role is 'operator'",
                        i + 1
                    ));
                }
            }
            if let Some(other) = self.owners.insert(key.to_owned(), owner.to_owned())
                && other != owner
            {
                return Err(format!(
                    "{source}, entry {}: this key already belongs to {other:?}; a key has one \
                     owner, give {owner:?} a key of its own",
                    i + 1
                ));
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    pub fn len(&self) -> usize {
        self.owners.len()
    }

    /// The owner of `Authorization: Bearer KEY`, or why the request is refused.
    pub fn owner(&self, authorization: Option<&str>) -> Result<Owner, &'static str> {
        self.identify(authorization).map(|(owner, _)| owner)
    }

    /// The owner of `Authorization: Bearer KEY` and whether the key is an operator's (without
    /// keys, the one anonymous owner is its own operator).
    pub fn identify(&self, authorization: Option<&str>) -> Result<(Owner, Operator), &'static str> {
        if self.owners.is_empty() {
            return Ok((Owner(ANONYMOUS.into()), Operator(true)));
        }
        // The scheme is case-insensitive (RFC 9110): `bearer` and `BEARER` are `Bearer`.
        let key = authorization
            .and_then(|h| h.trim_start().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim())
            .ok_or("Missing API key: send 'Authorization: Bearer YOUR_KEY'")?;
        // Compare against every key without stopping early, so timing tells nothing.
        let mut found = None;
        for (k, owner) in &self.owners {
            if constant_time_eq(k.as_bytes(), key.as_bytes()) {
                found = Some((k, owner));
            }
        }
        found
            .map(|(k, o)| (Owner(o.clone()), Operator(self.operators.contains(k))))
            .ok_or("Incorrect API key provided")
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_owners_and_bad_keys_are_refused() {
        let mut keys = Keys::default();
        keys.add_entries(
            "# team keys\nsk-a team-a\n\nsk-b team-b\n",
            "keys.txt",
            false,
        )
        .expect("accepted");
        keys.add_entries("sk-c team-c,sk-d team-d", "env", true)
            .expect("accepted");
        assert_eq!(keys.len(), 4);
        assert_eq!(
            keys.owner(Some("Bearer sk-b")).expect("accepted").0,
            "team-b"
        );
        assert_eq!(
            keys.owner(Some("Bearer sk-d")).expect("accepted").0,
            "team-d"
        );
        assert!(keys.owner(Some("Bearer sk-x")).is_err());
        keys.add_entries("sk-op ops operator", "keys.txt", false)
            .expect("accepted");
        let (owner, operator) = keys.identify(Some("Bearer sk-op")).expect("accepted");
        assert_eq!((owner.0.as_str(), operator), ("ops", Operator(true)));
        assert_eq!(
            keys.identify(Some("Bearer sk-a")).expect("a").1,
            Operator(false)
        );
        let err = keys
            .add_entries("sk-q q admin", "keys.txt", false)
            .expect_err("refused");
        assert!(err.contains("unknown role \"admin\""), "{err}");
        assert!(keys.owner(None).is_err());
        let err = keys
            .add_entries("lonely", "keys.txt", false)
            .expect_err("refused");
        assert!(err.contains("keys.txt, entry 1"), "{err}");
        let err = keys
            .add_entries("sk-x x\nsk-a someone-else", "env", true)
            .expect_err("refused");
        assert!(
            err.contains("env, entry 2") && err.contains("team-a"),
            "{err}"
        );
    }

    #[test]
    fn no_keys_means_one_anonymous_owner() {
        assert_eq!(Keys::default().owner(None).expect("accepted").0, ANONYMOUS);
    }
}
