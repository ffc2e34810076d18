//! A keep-alive HTTP/1.1 client for one plain-`http` engine that runs every exchange inside the
//! calling task.
//!
//! A general client (reqwest, hyper-util) spawns a task per connection and hands each request
//! and response between that task and the caller. On an instant engine those hand-offs, and the
//! thread wake-ups they cause, were most of the runner's CPU. Here the caller polls the
//! connection itself while it waits for its answer, so a request costs a write, a read and no
//! wake-up of another thread. Engines behind TLS use reqwest instead (see `transport`).
//!
//! Idle connections are kept for less than the 5 s keep-alive of the uvicorn servers SGLang and
//! vLLM run on; a connection the server closed anyway fails on reuse and the caller retries on a
//! fresh one.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{Connection, SendRequest, handshake};
use hyper::header::{CONTENT_TYPE, HOST, HeaderMap, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::exchange::{Answer, Payload, TransportError};

/// Below uvicorn's default 5 s keep-alive.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

struct Conn {
    sender: SendRequest<Full<Bytes>>,
    driver: Driver,
}

/// The connection's I/O state machine, and whether it has finished (it must not be polled again).
struct Driver {
    connection: Connection<TokioIo<TcpStream>, Full<Bytes>>,
    done: bool,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

pub struct Http1Pool {
    /// `host:port` to connect to.
    authority: String,
    host: HeaderValue,
    headers: HeaderMap,
    connect_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
}

impl Http1Pool {
    pub fn new(uri: &Uri, headers: HeaderMap, connect_timeout: Duration) -> Option<Self> {
        let authority = uri.authority()?;
        let port = authority.port_u16().unwrap_or(80);
        Some(Self {
            authority: format!("{}:{port}", authority.host()),
            host: HeaderValue::from_str(authority.as_str()).ok()?,
            headers,
            connect_timeout,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// One exchange. A reused connection that fails before answering is replaced by a fresh one
    /// once, at once: that is a server closing an idle connection, not an engine failure. The
    /// request is then sent twice, so `on_resend` is told (it counts as a retry).
    pub async fn send(
        &self,
        method: Method,
        uri: &Uri,
        body: Payload,
        timeout: Duration,
        on_resend: &mut (dyn FnMut() + Send),
    ) -> Result<Answer, TransportError> {
        let deadline = Instant::now() + timeout;
        if let Some(conn) = self.checkout() {
            match self
                .exchange(conn, &method, uri, body.clone(), deadline)
                .await
            {
                Err(TransportError::Io(_)) => on_resend(),
                other => return other,
            }
        }
        let conn = tokio::time::timeout_at(
            deadline.min(Instant::now() + self.connect_timeout),
            self.connect(),
        )
        .await
        .map_err(|_| {
            TransportError::Connect(format!("connect to {} timed out", self.authority))
        })??;
        self.exchange(conn, &method, uri, body, deadline).await
    }

    async fn exchange(
        &self,
        mut conn: Conn,
        method: &Method,
        uri: &Uri,
        body: Payload,
        deadline: Instant,
    ) -> Result<Answer, TransportError> {
        let mut request = Request::new(Full::new(body.bytes));
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri.clone();
        let headers = request.headers_mut();
        headers.insert(HOST, self.host.clone());
        headers.insert(CONTENT_TYPE, body.content_type);
        for (name, value) in &self.headers {
            headers.append(name, value.clone());
        }
        let exchange = async {
            // A reused connection accepts the next request only once its driver has seen the
            // previous exchange through.
            let sender = &mut conn.sender;
            drive(&mut conn.driver, poll_fn(|cx| sender.poll_ready(cx))).await?;
            let response = drive(&mut conn.driver, conn.sender.send_request(request)).await?;
            let (parts, body) = response.into_parts();
            let body = drive(&mut conn.driver, body.collect()).await?;
            Ok::<_, TransportError>(Answer {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body: body.to_bytes(),
            })
        };
        let answer = tokio::time::timeout_at(deadline, exchange)
            .await
            .map_err(|_| TransportError::Timeout)??;
        self.checkin(conn);
        Ok(answer)
    }

    async fn connect(&self) -> Result<Conn, TransportError> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| TransportError::Connect(format!("connect to {}: {e}", self.authority)))?;
        let _ = stream.set_nodelay(true);
        let (sender, driver) = handshake(TokioIo::new(stream))
            .await
            .map_err(|e| TransportError::Connect(e.to_string()))?;
        Ok(Conn {
            sender,
            driver: Driver {
                connection: driver,
                done: false,
            },
        })
    }

    fn checkout(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(Idle { conn, since }) = idle.pop() {
            if since.elapsed() < IDLE_TIMEOUT && !conn.driver.done && !conn.sender.is_closed() {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&self, conn: Conn) {
        if conn.driver.done || conn.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.push(Idle {
            conn,
            since: Instant::now(),
        });
    }
}

/// Polls `fut` together with the connection that carries it.
async fn drive<F, T, E>(driver: &mut Driver, fut: F) -> Result<T, TransportError>
where
    F: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut fut = std::pin::pin!(fut);
    poll_fn(|cx| {
        loop {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(out.map_err(|e| TransportError::Io(e.to_string())));
            }
            if driver.done {
                // The connection ended and the exchange cannot finish.
                return Poll::Ready(Err(TransportError::Io(
                    "the engine closed the connection before answering".into(),
                )));
            }
            match Pin::new(&mut driver.connection).poll(cx) {
                // The connection ended, possibly right after delivering the answer, or handing
                // its error to the exchange: poll the exchange once more to find out which.
                Poll::Ready(Ok(())) => driver.done = true,
                Poll::Ready(Err(e)) => {
                    driver.done = true;
                    return Poll::Ready(Err(TransportError::Io(e.to_string())));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Reads one request (headers and a Content-Length body) from `s`; false at end of stream.
    async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    buf.drain(..end + 4 + len);
                    return true;
                }
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// A server that answers `per_connection` requests on each connection, then closes it
    /// without saying so (no `Connection: close`), as a server whose keep-alive ran out does.
    async fn closing_server(per_connection: usize) -> (Uri, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for _ in 0..per_connection {
                        if !read_request(&mut s, &mut buf).await {
                            return;
                        }
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                            .await;
                    }
                });
            }
        });
        let uri = format!("http://{addr}").parse().expect("uri");
        (uri, accepted)
    }

    #[tokio::test]
    async fn reuses_connections_and_replaces_one_the_server_closed() {
        let (base, accepted) = closing_server(2).await;
        let pool = Http1Pool::new(&base, HeaderMap::new(), Duration::from_secs(5)).expect("pool");
        let path: Uri = "/v1/x".parse().expect("path");
        let mut resent = 0;
        for _ in 0..3 {
            let answer = pool
                .send(
                    Method::POST,
                    &path,
                    Payload::json(Bytes::from_static(b"{}")),
                    Duration::from_secs(5),
                    &mut || resent += 1,
                )
                .await
                .expect("answer");
            assert_eq!(answer.status, 200);
            assert_eq!(&answer.body[..], b"{}");
        }
        // Two requests shared the first connection; the third found it closed and reconnected
        // (sent twice when the closing was seen only on sending).
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert!(resent <= 1, "{resent}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let base: Uri = format!("http://{addr}").parse().expect("uri");
        let pool = Http1Pool::new(&base, HeaderMap::new(), Duration::from_secs(5)).expect("pool");
        let err = pool
            .send(
                Method::GET,
                &"/".parse().expect("uri"),
                Payload::json(Bytes::new()),
                Duration::from_secs(5),
                &mut || {},
            )
            .await
            .expect_err("refused");
        assert!(matches!(err, TransportError::Connect(_)), "{err:?}");
    }
}
