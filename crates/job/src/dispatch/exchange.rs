//! What one exchange with an engine gives, whichever transport carried it (see `transport`).

use std::fmt;

use bytes::Bytes;
use hyper::header::HeaderMap;

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
