//! Launch commands for the engines users run most, with the readiness check each needs.

/// A built-in way to start an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// `python -m sglang.launch_server` (metrics on, so load can be read from `/metrics`).
    Sglang,
    /// `vllm serve`.
    Vllm,
    /// `transformers serve --continuous-batching` (Hugging Face transformers' own server;
    /// without continuous batching it answers one request at a time).
    Transformers,
}

impl Preset {
    /// The command template (`{host}` and `{port}` substituted later) for `model` with the
    /// user's `extra` engine arguments appended.
    pub fn template(self, model: &str, extra: &[String]) -> String {
        let mut words: Vec<String> = match self {
            Preset::Sglang => [
                "python",
                "-m",
                "sglang.launch_server",
                "--model-path",
                model,
            ]
            .iter()
            .map(|s| quote(s))
            .collect(),
            Preset::Vllm => ["vllm", "serve", model].iter().map(|s| quote(s)).collect(),
            Preset::Transformers => ["transformers", "serve", model]
                .iter()
                .map(|s| quote(s))
                .collect(),
        };
        words.extend(["--host", "{host}", "--port", "{port}"].map(String::from));
        match self {
            Preset::Sglang => words.push("--enable-metrics".into()),
            Preset::Transformers => words.push("--continuous-batching".into()),
            Preset::Vllm => {}
        }
        words.extend(extra.iter().map(|a| quote(a)));
        words.join(" ")
    }

    /// Every preset's engine answers `GET /health` with 200 once the model is loaded.
    pub fn ready_path(self) -> &'static str {
        "/health"
    }
}

/// Quotes a word for `sh -c` when it needs it.
pub fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@+%".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_documented_commands() {
        assert_eq!(
            Preset::Sglang.template(
                "meta-llama/Llama-3.1-8B-Instruct",
                &["--tp".into(), "2".into()]
            ),
            "python -m sglang.launch_server --model-path meta-llama/Llama-3.1-8B-Instruct --host {host} --port {port} --enable-metrics --tp 2"
        );
        assert_eq!(
            Preset::Vllm.template("/models/my model", &[]),
            "vllm serve '/models/my model' --host {host} --port {port}"
        );
        assert_eq!(
            Preset::Transformers.template("/tmp/model", &[]),
            "transformers serve /tmp/model --host {host} --port {port} --continuous-batching"
        );
    }

    #[test]
    fn quotes_only_what_needs_it() {
        assert_eq!(quote("abc-1.2/x"), "abc-1.2/x");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
    }
}
