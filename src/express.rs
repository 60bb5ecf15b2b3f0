//! The express lane: an HTTP/1.1 `GET` or `HEAD` whose answer is fresh in
//! memory, read, answered and written without hyper.
//!
//! hyper's per-request machinery (its dispatcher, its read and write
//! buffers, the head encoder) costs a cache hit about as much user-space
//! time as everything the proxy itself does for it, and a plain hit needs
//! none of it: its head arrives in one read, its answer leaves in one
//! write. So while no hyper connection runs on an HTTP/1 connection
//! (`keep_alive.rs`: before the first request, and whenever hyper's
//! connection ended at rest), the next request is read here first.
//!
//! [`answer`] answers it when it is a plain hit, through the same
//! [`Proxy::answer_at_once`](crate::proxy::Proxy::answer_at_once) hyper's
//! path takes first (the same lookup, `X-Request-Id`, access line and
//! counters), and writes the answer as hyper would, byte for byte
//! ([`encode_head`], tested against hyper's own output). Everything else
//! goes to hyper untouched, the bytes read replayed to it
//! ([`ClientIo::replay`]): a head not complete in what has arrived, more
//! than one request (pipelining) or a body, anything but HTTP/1.1, a
//! `Connection` other than `keep-alive`, `Expect`, `Upgrade`, `TE`,
//! conditional and range fields, a draining server, and every request the
//! proxy would not answer at once (a miss, the admin API, a refusal…).
//! Bytes are read through [`ClientIo`], so the framing guard, the head and
//! send deadlines and the connection's watch see them as they see hyper's.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, DATE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Either, Empty};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tracing::debug;

use crate::body::ProxyBody;
use crate::client_io::ClientIo;
use crate::connection::{ClientStream, ProxyService};
use crate::drain::DrainWatch;

/// What [`answer`] did with the connection's next request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Express {
    /// Answered here; the connection waits for its next request.
    Answered,
    /// For hyper: what was read is replayed to it.
    Hyper,
    /// Nothing had arrived (a wake-up without bytes): wait again.
    Nothing,
    /// The client left, a deadline ran out, or a read or write failed.
    Closed,
}

/// The bytes read for one head: a head larger than this goes to hyper.
const HEAD_BYTES: usize = 4096;

/// Header fields followed; a head with more goes to hyper.
const MAX_FIELDS: usize = 32;

/// Request fields that need hyper: a body, the connection's handling, or a
/// conditional or partial answer.
const FOR_HYPER: [&str; 12] = [
    "content-length",
    "transfer-encoding",
    "expect",
    "upgrade",
    "te",
    "http2-settings",
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
    "if-range",
    "range",
];

/// Reads the connection's next request and answers it when it is a plain
/// hit in memory. Call it only while no hyper connection runs on `io`.
pub(crate) async fn answer<IO: ClientStream>(
    io: &mut ClientIo<IO>,
    service: &ProxyService,
    drain: &DrainWatch,
    client: SocketAddr,
) -> Express {
    // Only what has arrived is read: a connection waiting for its next
    // request holds no buffer (`keep_alive.rs` waits for the client).
    let mut buf = BytesMut::with_capacity(HEAD_BYTES);
    match read_ready(io, &mut buf).await {
        None => return Express::Nothing,
        Some(Ok(0)) => return Express::Closed,
        Some(Ok(_)) => {}
        Some(Err(err)) => {
            debug!(client = %client, error = %err, "connection ended with an error");
            return Express::Closed;
        }
    }
    let head = loop {
        match parse(&buf) {
            // A full buffer may leave bytes above the socket (TLS) that
            // only hyper's next read would take.
            _ if buf.len() == buf.capacity() => break None,
            Parsed::Complete(head) => break Some(head),
            Parsed::Hyper => break None,
            Parsed::Partial => match read_ready(io, &mut buf).await {
                Some(Ok(0)) | None => break None,
                Some(Ok(_)) => {}
                Some(Err(err)) => {
                    debug!(client = %client, error = %err, "connection ended with an error");
                    return Express::Closed;
                }
            },
        }
    };
    let bytes = buf.freeze();
    let request = head
        .filter(|_| !drain.has_started())
        .and_then(|head| head.request(&bytes));
    let Some(request) = request else {
        io.replay(bytes);
        return Express::Hyper;
    };
    let head_only = request.method() == Method::HEAD;
    let (response, answered) = match service.answer_at_once(request) {
        Ok(answered) => answered,
        Err(_) => {
            io.replay(bytes);
            return Express::Hyper;
        }
    };
    let (parts, body) = response.into_parts();
    let body = whole(body).await;
    let mut out = Vec::with_capacity(HEAD_OUT_BYTES);
    let send_body = encode_head(&parts, head_only, body.len(), &mut out);
    let written = if send_body {
        write_all(io, &out, &body).await
    } else {
        write_all(io, &out, &[]).await
    };
    // Ends the answer for the connection's watch, as hyper's end of body does.
    drop(answered);
    match written {
        Ok(()) => Express::Answered,
        Err(err) => {
            debug!(client = %client, error = %err, "connection ended with an error");
            Express::Closed
        }
    }
}

/// Room for a typical answer head: the stored fields and the four added.
const HEAD_OUT_BYTES: usize = 512;

/// One read of what has already arrived; `None` when nothing has.
async fn read_ready<IO: ClientStream>(
    io: &mut ClientIo<IO>,
    buf: &mut BytesMut,
) -> Option<io::Result<usize>> {
    std::future::poll_fn(|cx| {
        let spare = buf.spare_capacity_mut();
        let mut read = ReadBuf::uninit(spare);
        match Pin::new(&mut *io).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Ready(None),
            Poll::Ready(Err(err)) => Poll::Ready(Some(Err(err))),
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                // SAFETY: `poll_read` initialised the first `n` spare bytes.
                unsafe { buf.set_len(buf.len() + n) };
                Poll::Ready(Some(Ok(n)))
            }
        }
    })
    .await
}

/// What the bytes read so far hold.
// Made once per request and taken apart at once: a box would only add an
// allocation.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    /// One whole request head for the express lane, and nothing after it.
    Complete(Head),
    /// A head not yet complete.
    Partial,
    /// For hyper (see the module doc).
    Hyper,
}

/// Where the parts of a request head lie in the bytes read.
struct Head {
    method: Method,
    target: Span,
    fields: [Field; MAX_FIELDS],
    count: usize,
}

/// Start and end of a part of the head (at most [`HEAD_BYTES`] long).
type Span = (u16, u16);

#[derive(Clone, Copy, Default)]
struct Field {
    name: Span,
    value: Span,
}

fn parse(read: &[u8]) -> Parsed {
    if read.len() > HEAD_BYTES {
        return Parsed::Hyper;
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut request = httparse::Request::new(&mut fields);
    let len = match request.parse(read) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Hyper,
    };
    let method = match request.method {
        Some("GET") => Method::GET,
        Some("HEAD") => Method::HEAD,
        _ => return Parsed::Hyper,
    };
    let Some(target) = request.path.filter(|t| t.starts_with('/')) else {
        return Parsed::Hyper;
    };
    if len != read.len() || request.version != Some(1) {
        return Parsed::Hyper;
    }
    // Within `read`, which is at most `HEAD_BYTES` long.
    let at = |part: &[u8]| -> Span {
        let start = part.as_ptr() as usize - read.as_ptr() as usize;
        (start as u16, (start + part.len()) as u16)
    };
    let mut head = Head {
        method,
        target: at(target.as_bytes()),
        fields: [Field::default(); MAX_FIELDS],
        count: request.headers.len(),
    };
    for (field, parsed) in head.fields.iter_mut().zip(request.headers.iter()) {
        let name = parsed.name;
        if FOR_HYPER.iter().any(|n| n.eq_ignore_ascii_case(name))
            || (name.eq_ignore_ascii_case("connection")
                && !parsed.value.eq_ignore_ascii_case(b"keep-alive"))
        {
            return Parsed::Hyper;
        }
        *field = Field {
            name: at(name.as_bytes()),
            value: at(parsed.value),
        };
    }
    Parsed::Complete(head)
}

impl Head {
    /// The request as hyper would hand it to the service (values share the
    /// bytes read); `None` when hyper would refuse it.
    fn request(&self, bytes: &Bytes) -> Option<Request<Empty<Bytes>>> {
        let slice = |(start, end): Span| bytes.slice(usize::from(start)..usize::from(end));
        let uri = Uri::from_maybe_shared(slice(self.target)).ok()?;
        let mut headers = HeaderMap::with_capacity(self.count);
        for field in &self.fields[..self.count] {
            let (start, end) = field.name;
            let name = HeaderName::from_bytes(&bytes[usize::from(start)..usize::from(end)]).ok()?;
            let value = HeaderValue::from_maybe_shared(slice(field.value)).ok()?;
            headers.append(name, value);
        }
        let mut request = Request::new(Empty::new());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        Some(request)
    }
}

/// An answer's body in one piece: a hit's is one `Bytes` already.
async fn whole(body: ProxyBody) -> Bytes {
    match body {
        Either::Left(mut full) => {
            let mut cx = Context::from_waker(Waker::noop());
            match Pin::new(&mut full).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
                // `Full` has one frame, ready, and no error.
                _ => Bytes::new(),
            }
        }
        // Not an answer at once; read whole all the same.
        streamed => streamed
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .unwrap_or_default(),
    }
}

/// Writes an answer's head as hyper's HTTP/1 server does (lower-case names
/// in the map's order, `content-length` and `date` added when the answer
/// has none, by hyper's rules for `HEAD`, 204 and 304); returns whether its
/// body is to be sent.
///
/// Hop-by-hop fields (`Connection`, `Transfer-Encoding`, `Trailer`), which
/// hyper treats apart, are never in a stored answer (`headers.rs`).
pub(crate) fn encode_head(
    parts: &http::response::Parts,
    head_only: bool,
    body_len: usize,
    out: &mut Vec<u8>,
) -> bool {
    let status = parts.status;
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        let reason = status.canonical_reason().unwrap_or("<none>");
        out.extend_from_slice(reason.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // hyper's "no body" is an answer whose body is already at its end.
    let has_body = body_len > 0;
    let no_length = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut wrote_len = false;
    let mut wrote_date = false;
    let mut previous: Option<&HeaderName> = None;
    for (name, value) in &parts.headers {
        let repeated = previous == Some(name);
        previous = Some(name);
        if name == CONTENT_LENGTH {
            if has_body {
                // hyper trusts the body's length and writes the first value.
                wrote_len = true;
                if repeated {
                    continue;
                }
            } else if head_only {
                wrote_len = true;
            } else {
                continue;
            }
        } else if name == DATE {
            wrote_date = true;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !wrote_len && !no_length && (has_body || !head_only) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !wrote_date {
        out.extend_from_slice(b"date: ");
        http_date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    has_body && !head_only && !no_length
}

/// The current time as an HTTP date, formatted once a second per thread
/// (as hyper does).
fn http_date(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    CACHED.with_borrow_mut(|(at, text)| {
        if *at != second {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

/// Writes the head and body in as few writes as the stream takes, then
/// flushes (a TLS stream holds records until then).
async fn write_all<IO: ClientStream>(
    io: &mut ClientIo<IO>,
    head: &[u8],
    body: &[u8],
) -> io::Result<()> {
    let mut slices = [IoSlice::new(head), IoSlice::new(body)];
    let mut left: &mut [IoSlice<'_>] = &mut slices;
    while !left.is_empty() {
        let n = io.write_vectored(left).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut left, n);
    }
    io.flush().await
}

#[cfg(test)]
mod tests {
    use http::Response;

    use super::*;

    fn parsed(text: &str) -> Option<Request<Empty<Bytes>>> {
        let bytes = Bytes::copy_from_slice(text.as_bytes());
        match parse(&bytes) {
            Parsed::Complete(head) => head.request(&bytes),
            _ => None,
        }
    }

    fn is_partial(text: &str) -> bool {
        matches!(parse(text.as_bytes()), Parsed::Partial)
    }

    #[test]
    fn a_plain_get_is_read_as_hyper_would_hand_it_over() {
        let request = parsed(
            "GET /api/metrics?org=1 HTTP/1.1\r\nHost: proxy\r\nX-Tenant:  a b \r\nAccept: */*\r\nAccept: text/html\r\nConnection: Keep-Alive\r\n\r\n",
        )
        .expect("express");
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().path(), "/api/metrics");
        assert_eq!(request.uri().query(), Some("org=1"));
        assert_eq!(request.version(), http::Version::HTTP_11);
        assert_eq!(request.headers()["host"], "proxy");
        assert_eq!(request.headers()["x-tenant"], "a b");
        assert_eq!(request.headers().get_all("accept").iter().count(), 2);
        assert!(parsed("HEAD / HTTP/1.1\r\nHost: p\r\n\r\n").is_some());
    }

    #[test]
    fn anything_but_one_plain_head_goes_to_hyper() {
        for (case, text) in [
            ("POST", "POST / HTTP/1.1\r\nHost: p\r\n\r\n"),
            ("HTTP/1.0", "GET / HTTP/1.0\r\nHost: p\r\n\r\n"),
            ("absolute form", "GET http://p/ HTTP/1.1\r\nHost: p\r\n\r\n"),
            ("asterisk", "GET * HTTP/1.1\r\nHost: p\r\n\r\n"),
            (
                "pipelined",
                "GET / HTTP/1.1\r\nHost: p\r\n\r\nGET / HTTP/1.1\r\n",
            ),
            (
                "a body",
                "GET / HTTP/1.1\r\nHost: p\r\nContent-Length: 2\r\n\r\n",
            ),
            (
                "chunked",
                "GET / HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n",
            ),
            (
                "close",
                "GET / HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
            ),
            (
                "upgrade",
                "GET / HTTP/1.1\r\nHost: p\r\nUpgrade: h2c\r\n\r\n",
            ),
            (
                "expect",
                "GET / HTTP/1.1\r\nHost: p\r\nExpect: 100-continue\r\n\r\n",
            ),
            (
                "conditional",
                "GET / HTTP/1.1\r\nHost: p\r\nIf-None-Match: \"a\"\r\n\r\n",
            ),
            (
                "range",
                "GET / HTTP/1.1\r\nHost: p\r\nRange: bytes=0-1\r\n\r\n",
            ),
            ("malformed", "GET / HTTP/1.1\r\nHo st: p\r\n\r\n"),
            ("lower-case method", "get / HTTP/1.1\r\nHost: p\r\n\r\n"),
        ] {
            assert!(
                matches!(parse(text.as_bytes()), Parsed::Hyper),
                "{case}: for hyper"
            );
        }
        let many: String = (0..=MAX_FIELDS).map(|i| format!("X-{i}: v\r\n")).collect();
        let text = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(
            matches!(parse(text.as_bytes()), Parsed::Hyper),
            "too many fields"
        );
        assert!(is_partial("GET / HTTP/1.1\r\nHost: p\r\n"));
        assert!(is_partial("GET /"));
    }

    fn head_of(response: Response<()>, head_only: bool, body_len: usize) -> (String, bool) {
        let (parts, ()) = response.into_parts();
        let mut out = Vec::new();
        let send = encode_head(&parts, head_only, body_len, &mut out);
        (String::from_utf8(out).unwrap(), send)
    }

    #[test]
    fn an_answer_head_follows_hypers_length_and_date_rules() {
        let with_date = |status: u16, fields: &[(&str, &str)]| {
            let mut response = Response::new(());
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            for (name, value) in fields {
                response.headers_mut().append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            response.headers_mut().append(
                DATE,
                HeaderValue::from_static("Mon, 07 Dec 2026 12:00:00 GMT"),
            );
            response
        };
        let date = "date: Mon, 07 Dec 2026 12:00:00 GMT\r\n";
        // A body and no length: hyper adds it after the fields.
        let (head, send) = head_of(with_date(200, &[("x-a", "1")]), false, 5);
        assert_eq!(
            head,
            format!("HTTP/1.1 200 OK\r\nx-a: 1\r\n{date}content-length: 5\r\n\r\n")
        );
        assert!(send);
        // A stored length is trusted, its first value written in place.
        let (head, _) = head_of(
            with_date(200, &[("content-length", "5"), ("content-length", "5")]),
            false,
            5,
        );
        assert_eq!(
            head,
            format!("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n{date}\r\n")
        );
        // HEAD: the stored length is kept, none is added, no body.
        let (head, send) = head_of(with_date(200, &[("content-length", "5")]), true, 0);
        assert_eq!(
            head,
            format!("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n{date}\r\n")
        );
        assert!(!send);
        let (head, _) = head_of(with_date(200, &[]), true, 0);
        assert_eq!(head, format!("HTTP/1.1 200 OK\r\n{date}\r\n"));
        // An empty GET body: a stated length is dropped, a zero one added.
        let (head, send) = head_of(with_date(404, &[("content-length", "9")]), false, 0);
        assert_eq!(
            head,
            format!("HTTP/1.1 404 Not Found\r\n{date}content-length: 0\r\n\r\n")
        );
        assert!(!send);
        // 304 and 204 carry no length.
        let (head, _) = head_of(with_date(304, &[]), false, 0);
        assert_eq!(head, format!("HTTP/1.1 304 Not Modified\r\n{date}\r\n"));
        let (head, _) = head_of(with_date(599, &[]), false, 0);
        assert!(head.starts_with("HTTP/1.1 599 <none>\r\n"), "{head}");
        // No date: the current one, in HTTP's format.
        let (head, _) = head_of(Response::new(()), false, 1);
        let date = head
            .lines()
            .find_map(|line| line.strip_prefix("date: "))
            .expect("a date");
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
    }
}
