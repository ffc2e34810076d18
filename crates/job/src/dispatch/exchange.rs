//! What one exchange with an engine gives, whichever transport carried it (see `transport`).

use std::fmt;

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderValue};

/// A request's body and its media type: JSON, as read from a line, or a multipart form made
/// from one (audio transcriptions).
#[derive(Debug, Clone)]
pub struct Payload {
    pub bytes: Bytes,
    pub content_type: HeaderValue,
}

impl Payload {
    pub fn json(bytes: Bytes) -> Self {
        Self {
            bytes,
            content_type: HeaderValue::from_static("application/json"),
        }
    }

    pub fn is_json(&self) -> bool {
        self.content_type.as_bytes() == b"application/json"
    }
}

/// An engine's answer, whatever its status.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A request that got no answer.
#[derive(Debug)]
pub enum TransportError {
    Connect(String),
    Timeout,
    Io(String),
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Connect(e) => write!(f, "cannot connect: {e}"),
            TransportError::Timeout => f.write_str("timed out (see --request-timeout)"),
            TransportError::Io(e) => write!(f, "connection failed: {e}"),
        }
    }
}
