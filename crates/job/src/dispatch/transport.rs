//! How bytes reach one engine: the in-task HTTP/1.1 client for `http://` engines, reqwest (with
//! rustls) for `https://` ones.

use std::time::Duration;

use bytes::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderMap};
use hyper::{Method, Uri};

use super::exchange::{Answer, Payload, TransportError};
use super::http1::{self, Http1Pool};

/// Where one endpoint is on one engine, in the forms each transport wants.
#[derive(Debug, Clone)]
pub struct Url {
    /// The path (and query), as an HTTP/1.1 request line carries it.
    origin: Uri,
    absolute: reqwest::Url,
}

impl Url {
    pub fn parse(text: &str) -> Result<Self, String> {
        let absolute = reqwest::Url::parse(text).map_err(|e| e.to_string())?;
        let mut path = absolute.path().to_owned();
        if let Some(q) = absolute.query() {
            path.push('?');
            path.push_str(q);
        }
        let origin = path.parse::<Uri>().map_err(|e| e.to_string())?;
        Ok(Self { origin, absolute })
    }
}

pub enum Transport {
    Plain(Http1Pool),
    Tls(reqwest::Client),
}

impl Transport {
    pub fn new(base: &str, headers: HeaderMap, connect_timeout: Duration) -> Result<Self, String> {
        let uri = base.parse::<Uri>().map_err(|e| e.to_string())?;
        if uri.scheme_str() == Some("http") {
            return Http1Pool::new(&uri, headers, connect_timeout)
                .map(Transport::Plain)
                .ok_or_else(|| "the URL has no host".to_owned());
        }
        reqwest::Client::builder()
            .default_headers(headers)
            .pool_idle_timeout(http1::IDLE_TIMEOUT)
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .build()
            .map(Transport::Tls)
            .map_err(|e| e.to_string())
    }

    pub async fn send(
        &self,
        method: Method,
        url: &Url,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Answer, TransportError> {
        self.send_counting(method, url, Payload::json(body), timeout, &mut || {})
            .await
    }

    /// [`Transport::send`], telling `on_resend` when the request went out a second time on a
    /// fresh connection (a kept-alive one was found closed).
    pub async fn send_counting(
        &self,
        method: Method,
        url: &Url,
        body: Payload,
        timeout: Duration,
        on_resend: &mut (dyn FnMut() + Send),
    ) -> Result<Answer, TransportError> {
        match self {
            Transport::Plain(pool) => {
                pool.send(method, &url.origin, body, timeout, on_resend)
                    .await
            }
            Transport::Tls(client) => {
                let response = client
                    .request(method, url.absolute.clone())
                    .header(CONTENT_TYPE, body.content_type)
                    .timeout(timeout)
                    .body(body.bytes)
                    .send()
                    .await
                    .map_err(|e| reqwest_error(&e))?;
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                let body = response.bytes().await.map_err(|e| reqwest_error(&e))?;
                Ok(Answer {
                    status,
                    headers,
                    body,
                })
            }
        }
    }
}

fn reqwest_error(e: &reqwest::Error) -> TransportError {
    if e.is_timeout() {
        return TransportError::Timeout;
    }
    let text = crate::error_with_causes(e);
    if e.is_connect() {
        TransportError::Connect(text)
    } else {
        TransportError::Io(text)
    }
}
