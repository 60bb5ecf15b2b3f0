//! The express lane: an HTTP/1.1 `GET`, `HEAD` or `POST` whose answer is
//! fresh in memory, read, answered and written without hyper.
//!
//! hyper's per-request machinery (its dispatcher, its read and write
//! buffers, the head encoder) and the answer's header map are a large part
//! of a hit's user-space time, and a plain hit needs none of them: its head
//! arrives in one read, its answer leaves in one write. So while no hyper
//! connection runs on an HTTP/1 connection (`keep_alive.rs`: before the
//! first request, and whenever hyper's connection ended at rest), the next
//! request is read here first.
//!
//! [`answer`] answers it when it is a plain hit, through
//! [`Proxy::write_at_once`](crate::proxy::Proxy::write_at_once): the same
//! steps hyper's path takes first (the lookup, `X-Request-Id`, counters and
//! access line), with the answer's head written straight from the stored
//! entry (`respond::write_from_entry`) by hyper's rules (`head_writer.rs`),
//! byte for byte what hyper would send (tested against it). Everything else
//! goes to hyper untouched, the bytes read replayed to it
//! ([`ClientIo::replay`]): a request not complete in what has arrived (a
//! `POST` with its `Content-Length` body; [`REQUEST_BYTES`] in all, the
//! head under [`HEAD_BYTES`]), more than
//! one request (pipelining), a chunked body, anything but HTTP/1.1, a
//! `Connection` other than `keep-alive`, `Expect`, `Upgrade`, `TE`,
//! `If-Match`, `If-Unmodified-Since`, `If-Range` and `Range`, a draining
//! server, and every request the
//! proxy would not answer at once (a miss, the admin API, a refusal…).
//! Bytes are read and written through [`ClientIo`], so the deadlines and the
//! connection's watch see them as they see hyper's. The framing guard
//! follows a request the lane answers by counting it (the lane takes only
//! a whole head with plain framing and nothing after it, by the guard's
//! own httparse rules), and one it hands to hyper when it is replayed: its
//! head is parsed once, not twice ([`ClientIo::poll_read_unfollowed`]).

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::Empty;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tracing::debug;

use crate::client_io::ClientIo;
use crate::connection::{ClientStream, ProxyService};
use crate::drain::DrainWatch;

/// What [`answer`] did with the connection's next request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Express {
    /// Answered here; the connection waits for its next request.
    Answered,
    /// For hyper, not being the lane's kind of request (see the module
    /// doc): what was read is replayed to it.
    Hyper,
    /// For hyper, being the lane's kind of request but not answered at once
    /// (a miss, the admin API, a refusal…): what was read is replayed to it.
    /// The next request is likely the lane's again.
    NotAtOnce,
    /// Nothing had arrived (a wake-up without bytes): wait again.
    Nothing,
    /// The client left, a deadline ran out, or a read or write failed.
    Closed,
}

/// The first read's room: a browser's head, or a small `POST` whole.
const FIRST_READ: usize = 4096;

/// A request (head and body) larger than this goes to hyper. A dashboard's
/// filter bodies run to 20 KB; the lane's offsets are `u16`.
const REQUEST_BYTES: usize = 32 * 1024;

/// A head this long or longer goes to hyper: below the smallest
/// `max_header_bytes` hyper can be given, so the lane never takes a head
/// hyper would refuse as too large.
const HEAD_BYTES: usize = crate::config::MIN_MAX_HEADER_BYTES as usize;

/// Header fields followed; a head with more goes to hyper.
const MAX_FIELDS: usize = 32;

/// Request fields that need hyper: a chunked body, the connection's
/// handling, or a precondition or partial answer. (`If-None-Match` and
/// `If-Modified-Since` stay: a matching one is answered 304 from the entry,
/// as on hyper's path.)
const FOR_HYPER: [&str; 9] = [
    "transfer-encoding",
    "expect",
    "upgrade",
    "te",
    "http2-settings",
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
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    // Bytes fresh from the socket are not followed by the framing guard as
    // they are read: the lane parses the head itself, and the guard sees
    // them only if they go to hyper. Bytes a parked hyper connection left
    // were followed already, and so is what is read after them.
    let unfollowed = !io.has_replay();
    match read_ready(io, &mut buf, unfollowed).await {
        None => return Express::Nothing,
        Some(Ok(0)) => return Express::Closed,
        Some(Ok(_)) => {}
        Some(Err(err)) => {
            debug!(client = %client, error = %err, "connection ended with an error");
            return Express::Closed;
        }
    }
    let head = loop {
        // A full buffer may leave bytes above the socket (TLS) that only a
        // next read takes: make room and read on before judging it.
        let full = buf.len() == buf.capacity();
        if full {
            if buf.len() >= REQUEST_BYTES {
                break None;
            }
            buf.reserve(REQUEST_BYTES - buf.len());
        }
        let parsed = if full { Parsed::Partial } else { parse(&buf) };
        match parsed {
            Parsed::Complete(head) => break Some(head),
            Parsed::Hyper => break None,
            Parsed::Partial => match read_ready(io, &mut buf, unfollowed).await {
                Some(Ok(0)) => break None,
                // Nothing more has arrived: a full buffer was all there
                // was, and is judged now; a head or body still to come is
                // hyper's to wait for.
                None if full => continue,
                None => break None,
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
    let Some((request, request_body)) = request else {
        to_hyper(io, bytes, unfollowed);
        return Express::Hyper;
    };
    let mut head = Vec::with_capacity(HEAD_OUT_BYTES);
    let (body, answered) = match service.write_at_once(request, &request_body, &mut head) {
        Ok(answered) => answered,
        Err(_) => {
            to_hyper(io, bytes, unfollowed);
            return Express::NotAtOnce;
        }
    };
    if unfollowed {
        io.count_unfollowed_request();
    }
    // The request's bytes (up to `REQUEST_BYTES`) are not held while a
    // slow reader takes its answer.
    drop((request_body, bytes));
    let written = write_all(io, &head, &body).await;
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

/// Hands what was read to hyper.
fn to_hyper<IO: ClientStream>(io: &mut ClientIo<IO>, bytes: Bytes, unfollowed: bool) {
    if unfollowed {
        io.replay_unfollowed(bytes);
    } else {
        io.replay(bytes);
    }
}

/// One read of what has already arrived (followed by the framing guard
/// unless `unfollowed`); `None` when nothing has.
async fn read_ready<IO: ClientStream>(
    io: &mut ClientIo<IO>,
    buf: &mut BytesMut,
    unfollowed: bool,
) -> Option<io::Result<usize>> {
    std::future::poll_fn(|cx| {
        let spare = buf.spare_capacity_mut();
        let mut read = ReadBuf::uninit(spare);
        let polled = if unfollowed {
            io.poll_read_unfollowed(cx, &mut read)
        } else {
            Pin::new(&mut *io).poll_read(cx, &mut read)
        };
        match polled {
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

/// Where the parts of a request lie in the bytes read.
struct Head {
    method: Method,
    target: Span,
    fields: [Field; MAX_FIELDS],
    count: usize,
    /// A POST's body (empty for the others).
    body: Span,
}

/// A `Content-Length` value the express lane takes: digits only, as many
/// as [`REQUEST_BYTES`] has.
fn body_length(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 5 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value
        .iter()
        .try_fold(0usize, |n, digit| Some(n * 10 + usize::from(digit - b'0')))
}

/// Start and end of a part of the request (at most [`REQUEST_BYTES`] long).
type Span = (u16, u16);
const _: () = assert!(REQUEST_BYTES <= u16::MAX as usize && HEAD_BYTES <= REQUEST_BYTES);

#[derive(Clone, Copy, Default)]
struct Field {
    name: Span,
    value: Span,
}

fn parse(read: &[u8]) -> Parsed {
    if read.len() > REQUEST_BYTES {
        return Parsed::Hyper;
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut request = httparse::Request::new(&mut fields);
    let len = match request.parse(read) {
        Ok(httparse::Status::Complete(len)) if len < HEAD_BYTES => len,
        Ok(httparse::Status::Complete(_)) => return Parsed::Hyper,
        Ok(httparse::Status::Partial) if read.len() >= HEAD_BYTES => return Parsed::Hyper,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Hyper,
    };
    let method = match request.method {
        Some("GET") => Method::GET,
        Some("HEAD") => Method::HEAD,
        Some("POST") => Method::POST,
        _ => return Parsed::Hyper,
    };
    let Some(target) = request.path.filter(|t| t.starts_with('/')) else {
        return Parsed::Hyper;
    };
    if request.version != Some(1) {
        return Parsed::Hyper;
    }
    // Within `read`, which is at most `REQUEST_BYTES` long.
    let at = |part: &[u8]| -> Span {
        let start = part.as_ptr() as usize - read.as_ptr() as usize;
        (start as u16, (start + part.len()) as u16)
    };
    let mut head = Head {
        method,
        target: at(target.as_bytes()),
        fields: [Field::default(); MAX_FIELDS],
        count: request.headers.len(),
        body: (len as u16, len as u16),
    };
    let mut length = None;
    for (field, parsed) in head.fields.iter_mut().zip(request.headers.iter()) {
        let name = parsed.name;
        if name.eq_ignore_ascii_case("content-length") {
            // One plain length, on a POST; anything else is hyper's to judge.
            match (&head.method, length, body_length(parsed.value)) {
                (&Method::POST, None, Some(n)) => length = Some(n),
                _ => return Parsed::Hyper,
            }
        } else if FOR_HYPER.iter().any(|n| n.eq_ignore_ascii_case(name))
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
    // A POST's body must be all here, and nothing after it; a GET or HEAD
    // has none.
    let end = match (&head.method, length) {
        (&Method::POST, None) => return Parsed::Hyper,
        (_, length) => len + length.unwrap_or(0),
    };
    if end > REQUEST_BYTES || read.len() > end {
        return Parsed::Hyper;
    }
    if read.len() < end {
        return Parsed::Partial;
    }
    head.body = (len as u16, end as u16);
    Parsed::Complete(head)
}

impl Head {
    /// The request as hyper would hand it to the service, with its body
    /// apart (values share the bytes read); `None` when hyper would refuse
    /// it.
    fn request(&self, bytes: &Bytes) -> Option<(Request<Empty<Bytes>>, Bytes)> {
        let slice = |(start, end): Span| bytes.slice(usize::from(start)..usize::from(end));
        let uri = Uri::from_maybe_shared(slice(self.target)).ok()?;
        let mut headers = HeaderMap::with_capacity(self.count);
        for field in &self.fields[..self.count] {
            let (start, end) = field.name;
            let name = HeaderName::from_bytes(&bytes[usize::from(start)..usize::from(end)]).ok()?;
            // SAFETY: httparse took it as a field value, by the rule
            // `HeaderValue` checks (tab, space, visible ASCII, obs-text):
            // hyper builds its values so too. Tested for every byte by
            // `every_byte_httparse_takes_in_a_value_is_valid_in_a_header_value`.
            let value = unsafe { HeaderValue::from_maybe_shared_unchecked(slice(field.value)) };
            headers.append(name, value);
        }
        let mut request = Request::new(Empty::new());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        Some((request, slice(self.body)))
    }
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
    use super::*;

    fn parsed(text: &str) -> Option<Request<Empty<Bytes>>> {
        parsed_with_body(text).map(|(request, _)| request)
    }

    fn parsed_with_body(text: &str) -> Option<(Request<Empty<Bytes>>, Bytes)> {
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
    fn a_post_with_its_whole_body_is_read_with_the_body_apart() {
        let (request, body) = parsed_with_body(
            "POST /api/query HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
        )
        .expect("express");
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.headers()["content-length"], "7");
        assert_eq!(&body[..], b"{\"a\":1}");
        let (_, body) = parsed_with_body("POST / HTTP/1.1\r\nHost: p\r\nContent-Length: 0\r\n\r\n")
            .expect("an empty body");
        assert!(body.is_empty());
        assert_eq!(body_length(b"0042"), Some(42));
        assert_eq!(body_length(b"12345"), Some(12345));
        assert_eq!(body_length(b"123456"), None);
        assert_eq!(body_length(b""), None);
    }

    #[test]
    fn anything_but_one_plain_head_goes_to_hyper() {
        for (case, text) in [
            (
                "PUT",
                "PUT / HTTP/1.1\r\nHost: p\r\nContent-Length: 0\r\n\r\n",
            ),
            (
                "POST without a length",
                "POST / HTTP/1.1\r\nHost: p\r\n\r\n",
            ),
            (
                "POST, two lengths",
                "POST / HTTP/1.1\r\nHost: p\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
            ),
            (
                "POST, a signed length",
                "POST / HTTP/1.1\r\nHost: p\r\nContent-Length: +2\r\n\r\n{}",
            ),
            (
                "POST, more than its body",
                "POST / HTTP/1.1\r\nHost: p\r\nContent-Length: 2\r\n\r\n{}GET",
            ),
            (
                "POST, past 32 KiB",
                "POST / HTTP/1.1\r\nHost: p\r\nContent-Length: 32768\r\n\r\n{}",
            ),
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
                "precondition",
                "GET / HTTP/1.1\r\nHost: p\r\nIf-Match: \"a\"\r\n\r\n",
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
        assert!(is_partial(
            "POST / HTTP/1.1\r\nHost: p\r\nContent-Length: 5\r\n\r\n{}"
        ));
        assert!(is_partial("GET /"));
    }

    #[test]
    fn every_byte_httparse_takes_in_a_value_is_valid_in_a_header_value() {
        let mut taken = 0;
        for byte in 0..=u8::MAX {
            let text = [b"GET / HTTP/1.1\r\nX: a".as_slice(), &[byte], b"b\r\n\r\n"].concat();
            let mut fields = [httparse::EMPTY_HEADER; 4];
            let mut request = httparse::Request::new(&mut fields);
            if let Ok(httparse::Status::Complete(_)) = request.parse(&text) {
                let value = request.headers[0].value;
                assert!(
                    HeaderValue::from_bytes(value).is_ok(),
                    "byte {byte:#04x} taken by httparse"
                );
                taken += 1;
            }
        }
        // Tab, space to `~`, and obs-text.
        assert_eq!(taken, 1 + 95 + 128);
    }

    #[test]
    fn the_lane_reads_a_large_filter_body_and_a_browser_head_but_no_more() {
        let filters = format!("{{\"ids\":\"{}\"}}", "7".repeat(20_000));
        let post = |filters: &str| {
            format!(
                "POST /api/query HTTP/1.1\r\nHost: p\r\nContent-Length: {}\r\n\r\n{filters}",
                filters.len()
            )
        };
        let (_, body) = parsed_with_body(&post(&filters)).expect("a 20 KB body");
        assert_eq!(body.len(), filters.len());
        let cookie = |n: usize| {
            format!(
                "GET / HTTP/1.1\r\nHost: p\r\nCookie: s={}\r\n\r\n",
                "c".repeat(n)
            )
        };
        let browser = parsed(&cookie(6_000)).expect("a 6 KB head");
        assert_eq!(browser.headers()["cookie"].len(), 6_002);

        let whole = post(&"7".repeat(REQUEST_BYTES));
        assert!(
            matches!(parse(whole.as_bytes()), Parsed::Hyper),
            "past REQUEST_BYTES"
        );
        // A five-digit length: four digits more than `post("")`'s.
        let room = REQUEST_BYTES - post("").len() - 4;
        let just_in = post(&"7".repeat(room));
        assert_eq!(just_in.len(), REQUEST_BYTES);
        assert!(
            parsed_with_body(&just_in).is_some(),
            "exactly REQUEST_BYTES"
        );
        let just_over = post(&"7".repeat(room + 1));
        assert!(
            matches!(parse(just_over.as_bytes()), Parsed::Hyper),
            "one byte over"
        );
        let long_head = cookie(HEAD_BYTES);
        assert!(
            matches!(parse(long_head.as_bytes()), Parsed::Hyper),
            "a head of 8 KiB"
        );
        assert!(
            matches!(parse(&long_head.as_bytes()[..HEAD_BYTES]), Parsed::Hyper),
            "an unfinished head of 8 KiB"
        );
    }
}
