//! One accepted client connection, from its TLS handshake to its last byte:
//! the first-request deadline, the choice of HTTP/1.1 or HTTP/2, the service
//! that hands each request to the pipeline, and HTTP/2's idle close. HTTP/1
//! connections are served by `keep_alive.rs`, which parks idle ones.
//!
//! The protocol comes from ALPN under TLS; without it (plain TCP, or a TLS
//! client that offered no ALPN) the first bytes are read, as hyper-util's
//! auto builder did, and compared with the HTTP/2 prior-knowledge preface.
//! Those bytes go through [`ClientIo`] like any other and are replayed to
//! hyper. Both builders are made once per listener ([`Settings`]) with the
//! configured limits.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::server::TlsStream;
use tracing::{debug, info};

use crate::body::ProxyBody;
use crate::client_io::{ClientDeadlines, ClientIo, ConnectionWatch, OnStall, Stall};
use crate::config::Limits;
use crate::drain::DrainWatch;
use crate::error::BoxError;
use crate::framing::FRAMING_CONFLICT;
use crate::metrics::Metrics;
use crate::proxy::{self, ClientInfo, Proxy};
use crate::server::Surface;
use crate::tls::Tls;
use crate::write_batch::{self, BatchedIo};

/// What every connection of a listener is served with, from the limits.
/// Shared, so that a connection's task holds a pointer, not two builders.
pub(crate) struct Settings {
    pub http1: http1::Builder,
    pub http2: http2::Builder<TokioExecutor>,
    /// Request body and answer write deadlines.
    pub deadlines: ClientDeadlines,
    /// `header_read_timeout`: how long a connection may wait for a request
    /// head, or stay idle between requests.
    pub idle_timeout: Duration,
    /// Quiet time before an idle HTTP/1 connection is parked.
    pub park_after: Duration,
}

impl Settings {
    pub fn new(limits: &Limits) -> Self {
        // Validated in config: 8 KiB ..= 16 MiB, so both conversions are exact.
        let max_header_bytes = limits.max_header_bytes as usize;
        let mut http1 = http1::Builder::new();
        http1
            // `ClientIo` times request heads instead, with one timer per
            // connection rather than one per request; it also ends a
            // keep-alive connection that stays idle this long (a parked one
            // is closed at the same moment, `keep_alive.rs`).
            .header_read_timeout(None)
            // A head over the limit is answered 431, by its parsed length:
            // the read buffer's bound alone lets a head through when one
            // read brings it whole (after bytes replayed by the express
            // lane, say), since hyper checks that bound only on a partial
            // head.
            .max_header_size(max_header_bytes)
            .max_buf_size(max_header_bytes)
            .keep_alive(true);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(max_header_bytes as u32)
            .max_concurrent_streams(limits.http2_max_concurrent_streams)
            .max_pending_accept_reset_streams(limits.http2_max_pending_accept_reset_streams)
            .keep_alive_interval(limits.http2_keep_alive_interval)
            .keep_alive_timeout(limits.http2_keep_alive_timeout);
        Self {
            http1,
            http2,
            deadlines: ClientDeadlines {
                max_header_bytes,
                body_read_timeout: limits.body_read_timeout,
                body_min_rate: limits.body_min_rate,
                send_timeout: limits.send_timeout,
                header_read_timeout: limits.header_read_timeout,
            },
            idle_timeout: limits.header_read_timeout,
            park_after: limits.idle_park_after,
        }
    }
}

/// An accepted connection and what it may do.
pub(crate) struct Connection {
    pub addr: SocketAddr,
    pub surface: Surface,
    pub tls: Option<Arc<Tls>>,
    /// TLS handshake and first request head must both be done by then.
    pub deadline: tokio::time::Instant,
    /// Returned to the listener when the connection ends (parked or not).
    pub slot: OwnedSemaphorePermit,
}

/// Which HTTP a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    Http2,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http/1.1",
            Self::Http2 => "h2",
        }
    }
}

/// A client's byte stream, plain or TLS: what protocol detection and
/// parking need beyond reading and writing.
pub(crate) trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The protocol ALPN settled on, if any.
    fn negotiated(&self) -> Option<Protocol>;

    /// Ready once the client has sent something (or closed). Called only
    /// after a read found nothing, so nothing already received waits in a
    /// buffer above the socket.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl ClientStream for TcpStream {
    fn negotiated(&self) -> Option<Protocol> {
        None
    }

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

impl ClientStream for Box<TlsStream<TcpStream>> {
    fn negotiated(&self) -> Option<Protocol> {
        match self.get_ref().1.alpn_protocol()? {
            b"h2" => Some(Protocol::Http2),
            b"http/1.1" => Some(Protocol::Http1),
            _ => None,
        }
    }

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // tokio-rustls answered the last read with Pending only once rustls
        // held no plaintext and the socket had nothing: new bytes can only
        // come through the socket.
        self.get_ref().0.poll_read_ready(cx)
    }
}

/// Runs one connection to its end: TLS, the first-request deadline, hyper.
pub(crate) async fn serve_connection(
    stream: TcpStream,
    connection: Connection,
    settings: Arc<Settings>,
    proxy: Arc<Proxy>,
    drain: DrainWatch,
) {
    let _ = stream.set_nodelay(true);
    let addr = connection.addr;
    match connection.tls.clone() {
        None => serve_http(stream, "http", connection, settings, proxy, drain).await,
        Some(tls) => {
            // Both boxed, and the handshake's result taken apart before any
            // other await, so that the task of every plain connection is not
            // as large as a TLS session.
            let handshake = Box::pin(tls.accept(stream));
            let stream = match tokio::time::timeout_at(connection.deadline, handshake).await {
                Ok(Ok(stream)) => Box::new(stream),
                Ok(Err(err)) => {
                    debug!(client = %addr, error = %err, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(client = %addr, "TLS handshake not done within header_read_timeout; closing");
                    return;
                }
            };
            let served = Box::pin(serve_http(
                stream, "https", connection, settings, proxy, drain,
            ));
            served.await
        }
    }
}

async fn serve_http<IO: ClientStream>(
    io: IO,
    scheme: &'static str,
    connection: Connection,
    settings: Arc<Settings>,
    proxy: Arc<Proxy>,
    mut drain: DrainWatch,
) {
    let Connection {
        addr,
        surface,
        deadline,
        slot: _slot,
        ..
    } = connection;
    let watch = Arc::new(ConnectionWatch::default());
    let on_stall = stall_reporter(&proxy, addr);
    let negotiated = io.negotiated();
    let mut io = ClientIo::new(io, settings.deadlines, watch.clone(), on_stall);
    let service = ProxyService {
        proxy,
        watch,
        client: ClientInfo {
            addr,
            scheme,
            surface,
        },
    };
    // Until the first request the connection has only the deadline, which
    // also covers what hyper's own head timeout does not: a client that
    // sends nothing, or stalls inside the HTTP/2 preface.
    let protocol = match negotiated {
        Some(protocol) => protocol,
        None => {
            let detected = tokio::select! {
                // Boxed: the task keeps no room for it once it is done.
                detected = Box::pin(tokio::time::timeout_at(deadline, detect(&mut io))) => detected,
                () = drain.started() => return,
            };
            match detected {
                Ok(Ok(protocol)) => protocol,
                Ok(Err(err)) => {
                    debug!(client = %addr, error = %err, "connection ended with an error");
                    return;
                }
                Err(_) => {
                    debug!(client = %addr, "no request within header_read_timeout; closing");
                    return;
                }
            }
        }
    };
    debug!(client = %addr, protocol = protocol.as_str(), "connection serving");
    match protocol {
        Protocol::Http1 => {
            io.time_request_heads();
            let start = Box::new((io, service));
            crate::keep_alive::serve(start, deadline, &settings, drain, addr).await
        }
        // Boxed: an HTTP/2 connection's state is large, and would otherwise
        // size the task of every HTTP/1 connection too. Its writes go out
        // once per poll of the task (`write_batch.rs`).
        Protocol::Http2 => {
            let (io, batch) = write_batch::gather(io);
            let served = Box::pin(serve_http2(io, service, deadline, &settings, drain, addr));
            batch.flush_after_each_poll(served).await
        }
    }
}

/// The HTTP/2 prior-knowledge preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the bytes differ from the HTTP/2 preface or complete it, and
/// hands what was read back to `io` for hyper to read again.
async fn detect<IO: AsyncRead + Unpin>(io: &mut ClientIo<IO>) -> io::Result<Protocol> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut filled = 0;
    let mut protocol = Protocol::Http2;
    while filled < buf.len() {
        let n = io.read(&mut buf[filled..]).await?;
        let read = &buf[filled..filled + n];
        filled += n;
        if n == 0 || read != &H2_PREFACE[filled - n..filled] {
            protocol = Protocol::Http1;
            break;
        }
    }
    io.replay(Bytes::copy_from_slice(&buf[..filled]));
    Ok(protocol)
}

async fn serve_http2<IO: ClientStream>(
    io: BatchedIo<ClientIo<IO>>,
    service: ProxyService,
    deadline: tokio::time::Instant,
    settings: &Settings,
    mut drain: DrainWatch,
    addr: SocketAddr,
) {
    let watch = service.watch.clone();
    let served = settings.http2.serve_connection(TokioIo::new(io), service);
    tokio::pin!(served);
    let mut check = deadline;
    let mut draining = false;
    let result = loop {
        tokio::select! {
            biased;
            result = served.as_mut() => break result,
            () = drain.started(), if !draining => {
                // GOAWAY; open streams finish.
                draining = true;
                served.as_mut().graceful_shutdown();
                continue;
            }
            () = tokio::time::sleep_until(check) => {}
        }
        if watch.requests() == 0 {
            debug!(client = %addr, "no request within header_read_timeout; closing");
            return;
        }
        // hyper keeps an HTTP/2 connection whose client answers PINGs
        // forever: close it once no request has been open for
        // header_read_timeout, as an idle HTTP/1 connection is.
        let now = tokio::time::Instant::now();
        check = match watch.idle_since() {
            Some(since) if since + settings.idle_timeout <= now => {
                debug!(client = %addr, "HTTP/2 connection idle for header_read_timeout; closing");
                return;
            }
            Some(since) => since + settings.idle_timeout,
            None => now + settings.idle_timeout,
        };
    };
    if let Err(err) = result {
        debug!(client = %addr, error = %err, "connection ended with an error");
    }
}

/// Counts and logs a client that ran out a body or send deadline.
fn stall_reporter(proxy: &Arc<Proxy>, client: SocketAddr) -> OnStall {
    let proxy = proxy.clone();
    Arc::new(move |stall| {
        let metrics = &proxy.metrics;
        match stall {
            Stall::Body => {
                Metrics::bump(&metrics.body_timeouts);
                info!(
                    client = %client.ip(),
                    stall = stall.as_str(),
                    "request body too slow (body_read_timeout, body_min_rate); answering 408 and closing"
                );
            }
            Stall::Send => {
                Metrics::bump(&metrics.send_timeouts);
                info!(
                    client = %client.ip(),
                    stall = stall.as_str(),
                    "client left its answer unread (send_timeout); closing"
                );
            }
        }
    })
}

/// Hands each request of one connection to the pipeline. Kept across the
/// hyper connections of a parked and woken HTTP/1 connection.
pub(crate) struct ProxyService {
    proxy: Arc<Proxy>,
    watch: Arc<ConnectionWatch>,
    client: ClientInfo,
}

type Answer = hyper::Response<Tracked>;

impl hyper::service::Service<hyper::Request<Incoming>> for ProxyService {
    type Response = Answer;
    type Error = Infallible;
    type Future = Answering;

    fn call(&self, mut request: hyper::Request<Incoming>) -> Self::Future {
        if self.watch.next_request_conflicts() {
            // Its head had Content-Length and Transfer-Encoding (seen by
            // ClientIo): the pipeline refuses it with 400.
            request
                .headers_mut()
                .insert(FRAMING_CONFLICT, http::HeaderValue::from_static("1"));
        }
        let answer = AnswerGuard::new(
            self.watch.clone(),
            request.version() == http::Version::HTTP_2,
        );
        match self.proxy.clone().answer(request, self.client) {
            proxy::Answer::Now(response) => Answering::Ready(Some(response.map(|body| Tracked {
                body,
                _answer: answer,
            }))),
            proxy::Answer::Later(answering) => Answering::Pending {
                answering,
                guard: Some(answer),
            },
        }
    }
}

impl ProxyService {
    /// A plain hit written into `out` at once, for the express lane
    /// (`express.rs`; `read_body` is the request's body, read already):
    /// counted as a request of the connection, with the
    /// body to send and the guard whose drop ends it, as hyper's end of
    /// body does. The request back, uncounted, for anything else.
    #[allow(clippy::result_large_err)]
    pub(crate) fn write_at_once<B: Body>(
        &self,
        request: hyper::Request<B>,
        read_body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(Bytes, AnswerGuard), hyper::Request<B>> {
        let body = self
            .proxy
            .write_at_once(request, read_body, self.client, out)?;
        // Its head had one `Content-Length` at most: no framing conflict.
        self.watch.next_request_conflicts();
        Ok((body, AnswerGuard::new(self.watch.clone(), false)))
    }
}

/// The service's future: an answer ready at once (a fresh hit in memory),
/// or the proxy's future for it (boxed by the proxy: hyper keeps one slot
/// for the service's future for the whole life of an HTTP/1 connection, and
/// inline, every idle keep-alive connection would keep that much) with the
/// guard its answer will carry. The ready answer stays inline (the slot
/// grows to a few hundred bytes, freed when an idle connection is parked):
/// boxing it would cost the allocation that answering at once saves.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Answering {
    Ready(Option<Answer>),
    Pending {
        answering: Pin<Box<dyn Future<Output = hyper::Response<ProxyBody>> + Send>>,
        guard: Option<AnswerGuard>,
    },
}

impl Future for Answering {
    type Output = Result<Answer, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Self::Ready(answer) => Poll::Ready(Ok(answer.take().expect("polled once ready"))),
            Self::Pending { answering, guard } => answering.as_mut().poll(cx).map(|response| {
                let guard = guard.take().expect("polled once ready");
                Ok(response.map(|body| Tracked {
                    body,
                    _answer: guard,
                }))
            }),
        }
    }
}

/// An answer body that tells the connection when it ends (finished or
/// dropped): for HTTP/2's idle close and HTTP/1's parking.
pub(crate) struct Tracked {
    body: ProxyBody,
    _answer: AnswerGuard,
}

pub(crate) struct AnswerGuard {
    watch: Arc<ConnectionWatch>,
    http2: bool,
}

impl AnswerGuard {
    fn new(watch: Arc<ConnectionWatch>, http2: bool) -> Self {
        if http2 {
            watch.stream_opened();
        }
        Self { watch, http2 }
    }
}

impl Drop for AnswerGuard {
    fn drop(&mut self) {
        if self.http2 {
            self.watch.stream_done();
        } else {
            self.watch.answer_done();
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn deadlines() -> ClientDeadlines {
        ClientDeadlines {
            max_header_bytes: 64 * 1024,
            body_read_timeout: Duration::from_secs(10),
            body_min_rate: 0,
            send_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
        }
    }

    async fn detected(chunks: &[&[u8]]) -> (Protocol, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut io = ClientIo::new(server, deadlines(), Arc::default(), Arc::new(|_| {}));
        for chunk in chunks {
            client.write_all(chunk).await.unwrap();
        }
        drop(client);
        let protocol = detect(&mut io).await.unwrap();
        let mut replayed = Vec::new();
        io.read_to_end(&mut replayed).await.unwrap();
        (protocol, replayed)
    }

    #[tokio::test]
    async fn the_http2_preface_is_detected_even_in_pieces() {
        let (protocol, replayed) = detected(&[b"PRI * HTTP/2", b".0\r\n\r\nSM\r\n\r\nabc"]).await;
        assert_eq!(protocol, Protocol::Http2);
        assert_eq!(replayed, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nabc");
    }

    #[tokio::test]
    async fn an_http1_request_is_replayed_whole() {
        let request = b"GET /api/x HTTP/1.1\r\nHost: proxy\r\n\r\n";
        let (protocol, replayed) = detected(&[request]).await;
        assert_eq!(protocol, Protocol::Http1);
        assert_eq!(replayed, request);
    }

    #[tokio::test]
    async fn a_client_that_closes_at_once_is_http1_with_nothing_to_replay() {
        let (protocol, replayed) = detected(&[]).await;
        assert_eq!(protocol, Protocol::Http1);
        assert!(replayed.is_empty());
    }

    #[tokio::test]
    async fn a_stop_inside_the_preface_is_http1() {
        let (protocol, replayed) = detected(&[b"PRI * HTTP/2.0\r\n"]).await;
        assert_eq!(protocol, Protocol::Http1);
        assert_eq!(replayed, b"PRI * HTTP/2.0\r\n");
    }
}
