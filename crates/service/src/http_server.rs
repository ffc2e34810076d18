//! The API's HTTP/1.1 server, with the limits a public server needs.
//!
//! `axum::serve` keeps every connection as long as its client likes, which lets idle or
//! trickling clients use up the process's file descriptors and memory until `/health` itself
//! times out. Here every connection is bounded:
//! - its request headers must arrive within the header-read timeout; hyper applies the same
//!   timer while a kept-alive connection waits for its next request, so idle connections close
//!   too;
//! - a request body that sends nothing for the body-stall timeout ends with an error: a slow
//!   upload that keeps moving is fine, a stalled one (slowloris) is not;
//! - at most `max_connections` are open at once; past that a connection is answered `503` at
//!   once and closed, rather than left waiting. The default is sized from the file-descriptor
//!   limit, which is raised to its hard limit at start.
//!
//! On shutdown the listener closes and open connections finish their current request.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::error::ApiError;

/// File descriptors kept for everything but client connections: the database, blobs, worker
/// pipes and logs.
const RESERVED_FDS: u64 = 256;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub body_stall_timeout: Duration,
}

impl Limits {
    /// The default connection cap: the file-descriptor limit less what the service needs
    /// for itself, and never below 64.
    pub fn default_max_connections() -> usize {
        let fds = raise_fd_limit();
        usize::try_from(fds.saturating_sub(RESERVED_FDS).max(64)).unwrap_or(usize::MAX)
    }
}

/// Raises the soft limit on open files to the hard limit; returns the soft limit in force.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// Serves `router` on `listener` until `shutdown` resolves, then waits for the open
/// connections to finish their current request.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (closing_tx, closing) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was accepted: wait a
                // little rather than spin.
                tracing::warn!("cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream));
            continue;
        };
        let (router, closing) = (router.clone(), closing.clone());
        tokio::spawn(async move {
            // The HTTP connection is set up only once the client sends something; one that
            // sends nothing within the header-read timeout is closed without it.
            let first = tokio::time::timeout(limits.header_read_timeout, stream.readable());
            if matches!(first.await, Ok(Ok(()))) {
                Box::pin(serve_connection(stream, router, limits, closing)).await;
            }
            drop(slot);
        });
    }
    drop(listener);
    let _ = closing_tx.send(true);
    // Every slot back: every connection has finished (bounded by the timeouts above).
    let all = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(30), slots.acquire_many(all)).await;
    Ok(())
}

/// Serves one connection until it ends, or until `closing` turns true (then it finishes its
/// current request).
async fn serve_connection(
    stream: TcpStream,
    router: Router,
    limits: Limits,
    mut closing: watch::Receiver<bool>,
) {
    let stall = limits.body_stall_timeout;
    let service = tower::ServiceExt::map_request(router, move |request: hyper::Request<_>| {
        request.map(|body| Body::new(StallGuard::new(body, stall)))
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(
            TokioIo::new(HeadTooLarge::new(stream)),
            TowerToHyperService::new(service),
        );
    let mut connection = std::pin::pin!(connection);
    let closed = async move {
        // (The guard `wait_for` returns must not live across an await.)
        let _ = closing.wait_for(|c| *c).await.map(|_| ());
    };
    tokio::select! {
        _ = connection.as_mut() => {}
        () = closed => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Answers a connection over the cap with 503 and closes it.
async fn refuse(mut stream: TcpStream) {
    let response = ApiError::too_many_connections().raw_response();
    let write = async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), write).await;
}

/// A request body that fails once nothing has arrived for `limit`.
struct StallGuard<B> {
    inner: B,
    limit: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<B> StallGuard<B> {
    fn new(inner: B, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            timer: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

/// The client stopped sending its body.
#[derive(Debug, thiserror::Error)]
#[error("the request body stalled: nothing arrived for {0:?}")]
pub struct Stalled(Duration);

impl<B> HttpBody for StallGuard<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = tokio::time::Instant::now() + self.limit;
                self.timer.as_mut().reset(deadline);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(Stalled(self.limit))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection whose bare `431` (hyper's answer to a request head larger than its read buffer,
/// about 400 KB, written before any handler runs) is replaced by one with an OpenAI error body.
/// Smaller oversized heads get theirs from the router's header limit.
struct HeadTooLarge<S> {
    inner: S,
    /// The replacement being written, and how much of it is out.
    replacing: Option<(Vec<u8>, usize)>,
    /// Bytes went out already: only a connection's first answer is looked at, so the body of a
    /// later one (a stored file that happens to start like a 431) is never taken for one.
    answered: bool,
}

impl<S> HeadTooLarge<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            replacing: None,
            answered: false,
        }
    }

    fn is_bare_431(buf: &[u8]) -> bool {
        buf.starts_with(b"HTTP/1.1 431 ")
            && buf
                .windows(CONTENT_LENGTH_0.len())
                .any(|w| w.eq_ignore_ascii_case(CONTENT_LENGTH_0))
    }
}

const CONTENT_LENGTH_0: &[u8] = b"\r\ncontent-length: 0\r\n";

impl<S: AsyncRead + Unpin> AsyncRead for HeadTooLarge<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadTooLarge<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if !self.answered && self.replacing.is_none() && Self::is_bare_431(buf) {
            let message = "The request headers are larger than this service accepts (32 KB in \
                           all); send fewer or smaller headers";
            let answer = ApiError::headers_too_large(message).raw_response();
            self.replacing = Some((answer, 0));
        }
        let this = &mut *self;
        let Some((answer, written)) = this.replacing.as_mut() else {
            let sent = Pin::new(&mut this.inner).poll_write(cx, buf);
            if matches!(sent, Poll::Ready(Ok(n)) if n > 0) {
                this.answered = true;
            }
            return sent;
        };
        while *written < answer.len() {
            match Pin::new(&mut this.inner).poll_write(cx, &answer[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                other => return other,
            }
        }
        // Hyper's answer counts as written; the connection closes after a 431, and anything
        // hyper wrote after it would be dropped too.
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
