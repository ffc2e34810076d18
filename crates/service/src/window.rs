//! `completion_window`: OpenAI accepts only `24h`; as an extension any duration written like
//! `90m`, `2h` or `7d` within the service's configured bounds.

use std::time::Duration;

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct WindowBounds {
    pub min: Duration,
    pub max: Duration,
}

impl Default for WindowBounds {
    fn default() -> Self {
        Self {
            min: Duration::from_secs(60),
            max: Duration::from_secs(7 * 86400),
        }
    }
}

/// The window in whole seconds, or the message for a 400.
pub fn parse_window(text: &str, bounds: WindowBounds) -> Result<u64, String> {
    let d = batch_job::parse_duration(text).map_err(|e| {
        format!("Invalid completion_window: {e}. Use '24h' (or a duration such as '2h' or '90m')")
    })?;
    if text == "24h" {
        return Ok(86400);
    }
    if d < bounds.min || d > bounds.max {
        return Err(format!(
            "Invalid completion_window {text:?}: this service accepts '24h' or a duration from \
             {}s to {}s",
            bounds.min.as_secs(),
            bounds.max.as_secs()
        ));
    }
    Ok(d.as_secs().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_24h_always_and_other_windows_within_bounds() {
        let b = WindowBounds {
            min: Duration::from_secs(3600),
            max: Duration::from_secs(86400),
        };
        assert_eq!(parse_window("24h", b), Ok(86400));
        assert_eq!(parse_window("2h", b), Ok(7200));
        assert!(
            parse_window("10m", b)
                .expect_err("refused")
                .contains("3600s")
        );
        assert!(parse_window("8d", b).is_err());
        assert!(
            parse_window("soon", b)
                .expect_err("refused")
                .contains("completion_window")
        );
    }
}
