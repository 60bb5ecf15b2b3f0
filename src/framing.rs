//! HTTP/1 request framing guard: a request whose head carries both
//! `Content-Length` and `Transfer-Encoding` is refused, never forwarded.
//!
//! RFC 9112 §6.3 calls such a message a likely smuggling attempt. hyper
//! accepts it the way the RFC allows (chunked wins, `Content-Length` is
//! dropped, the connection closes after the answer) and does not report the
//! conflict, so this reader follows the connection's framing itself: request
//! heads with httparse, then `Content-Length` or chunked bodies. A
//! conflicting head gets the [`FRAMING_CONFLICT`] field added after its
//! request line, which the proxy answers with 400. Anything it does not
//! understand (HTTP/2, upgrades, malformed input) it hands to hyper as is and
//! stops watching: hyper's own parser then decides.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Marks a request whose head had both `Content-Length` and
/// `Transfer-Encoding`. A client sending it itself only gets its own 400.
pub const FRAMING_CONFLICT: &str = "x-dashcache-framing-conflict";

/// Longest request head or chunk-size line followed; past it, hand over.
const MAX_LINE_BYTES: usize = 1 << 20;

#[derive(Debug)]
enum State {
    /// Collecting a request head up to its empty line.
    Head(Vec<u8>),
    /// A `Content-Length` body: bytes left.
    Fixed(u64),
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    /// The CRLF after a chunk's data: bytes left.
    ChunkEnd(u8),
    Trailers(Vec<u8>),
    /// Not watching any more: bytes go through untouched.
    Passthrough,
}

/// Follows request framing on the bytes a client sends (pure; no I/O).
#[derive(Debug)]
pub struct FramingScanner {
    state: State,
}

impl Default for FramingScanner {
    fn default() -> Self {
        Self {
            state: State::Head(Vec::new()),
        }
    }
}

enum Gathered {
    /// The terminator has not arrived yet.
    More(Vec<u8>),
    /// The line or head, terminator included.
    Done(Vec<u8>),
    /// Longer than anything worth following.
    Overflow(Vec<u8>),
}

/// Appends `input` to `buf` up to and including `terminator`, advancing
/// `input` past what was taken. With `empty_ok`, a leading CRLF alone
/// completes it (a chunked body without trailers).
fn gather(mut buf: Vec<u8>, input: &mut &[u8], terminator: &[u8], empty_ok: bool) -> Gathered {
    let start = buf.len().saturating_sub(terminator.len() - 1);
    buf.extend_from_slice(input);
    let end = if empty_ok && buf.starts_with(b"\r\n") {
        Some(2)
    } else {
        find(&buf[start..], terminator).map(|at| start + at + terminator.len())
    };
    match end {
        None => {
            *input = &[];
            if buf.len() > MAX_LINE_BYTES {
                Gathered::Overflow(buf)
            } else {
                Gathered::More(buf)
            }
        }
        Some(end) => {
            let rest = buf.len() - end;
            *input = &input[input.len() - rest..];
            buf.truncate(end);
            Gathered::Done(buf)
        }
    }
}

impl FramingScanner {
    /// Feeds bytes read from the client; appends to `out` what the HTTP
    /// parser should read. Bytes of an unfinished head are held back.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            self.state = match std::mem::replace(&mut self.state, State::Passthrough) {
                State::Passthrough => {
                    out.extend_from_slice(input);
                    return;
                }
                State::Fixed(left) => match take(&mut input, left, out) {
                    0 => State::Head(Vec::new()),
                    left => State::Fixed(left),
                },
                State::ChunkData(left) => match take(&mut input, left, out) {
                    0 => State::ChunkEnd(2),
                    left => State::ChunkData(left),
                },
                State::ChunkEnd(left) => match take(&mut input, u64::from(left), out) {
                    0 => State::ChunkSize(Vec::new()),
                    left => State::ChunkEnd(left as u8),
                },
                State::Head(buf) => match gather(buf, &mut input, b"\r\n\r\n", false) {
                    Gathered::More(buf) => State::Head(buf),
                    Gathered::Done(head) => after_head(head, out),
                    Gathered::Overflow(buf) => passthrough(buf, out),
                },
                State::ChunkSize(buf) => match gather(buf, &mut input, b"\r\n", false) {
                    Gathered::More(buf) => State::ChunkSize(buf),
                    Gathered::Done(line) => after_chunk_size(line, out),
                    Gathered::Overflow(buf) => passthrough(buf, out),
                },
                State::Trailers(buf) => match gather(buf, &mut input, b"\r\n\r\n", true) {
                    Gathered::More(buf) => State::Trailers(buf),
                    Gathered::Done(trailers) => {
                        out.extend_from_slice(&trailers);
                        State::Head(Vec::new())
                    }
                    Gathered::Overflow(buf) => passthrough(buf, out),
                },
            };
        }
    }

    /// Bytes held back when the client stops sending (end of stream), so the
    /// parser sees the partial message and reports it.
    pub fn take_held(&mut self) -> Vec<u8> {
        match &mut self.state {
            State::Head(buf) | State::ChunkSize(buf) | State::Trailers(buf) => std::mem::take(buf),
            _ => Vec::new(),
        }
    }
}

/// Moves up to `left` body bytes from `input` to `out`; returns what is left.
fn take(input: &mut &[u8], left: u64, out: &mut Vec<u8>) -> u64 {
    let n = left.min(input.len() as u64) as usize;
    out.extend_from_slice(&input[..n]);
    *input = &input[n..];
    left - n as u64
}

fn passthrough(held: Vec<u8>, out: &mut Vec<u8>) -> State {
    out.extend_from_slice(&held);
    State::Passthrough
}

fn after_head(head: Vec<u8>, out: &mut Vec<u8>) -> State {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = request.parse(&head) else {
        return passthrough(head, out);
    };
    let mut content_length = None;
    let mut transfer_encoding = false;
    let mut chunked_last = false;
    let mut upgrade = request.method == Some("CONNECT");
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            content_length = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            if content_length.is_none() {
                // Invalid: hyper refuses it with 400.
                return passthrough(head, out);
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            chunked_last = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.rsplit(',').next())
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if header.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    if transfer_encoding && content_length.is_some() {
        let line_end = find(&head, b"\r\n").map_or(head.len(), |at| at + 2);
        out.extend_from_slice(&head[..line_end]);
        out.extend_from_slice(FRAMING_CONFLICT.as_bytes());
        out.extend_from_slice(b": 1\r\n");
        out.extend_from_slice(&head[line_end..]);
        // hyper closes the connection after this request: stop watching.
        return State::Passthrough;
    }
    out.extend_from_slice(&head);
    match (transfer_encoding, chunked_last, content_length) {
        _ if upgrade => State::Passthrough,
        (true, false, _) => State::Passthrough,
        (true, true, _) => State::ChunkSize(Vec::new()),
        (false, _, Some(length)) if length > 0 => State::Fixed(length),
        _ => State::Head(Vec::new()),
    }
}

fn after_chunk_size(line: Vec<u8>, out: &mut Vec<u8>) -> State {
    let size = match httparse::parse_chunk_size(&line) {
        Ok(httparse::Status::Complete((_, size))) => size,
        _ => {
            out.extend_from_slice(&line);
            return State::Passthrough;
        }
    };
    out.extend_from_slice(&line);
    if size == 0 {
        State::Trailers(Vec::new())
    } else {
        State::ChunkData(size)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A client connection read through a [`FramingScanner`].
pub struct FramingGuard<IO> {
    inner: IO,
    scanner: FramingScanner,
    /// Scanned bytes not yet handed to the parser.
    pending: Vec<u8>,
    offset: usize,
    eof: bool,
}

impl<IO> FramingGuard<IO> {
    pub fn new(inner: IO) -> Self {
        Self {
            inner,
            scanner: FramingScanner::default(),
            pending: Vec::new(),
            offset: 0,
            eof: false,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FramingGuard<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.offset < this.pending.len() {
                let n = (this.pending.len() - this.offset).min(buf.remaining());
                buf.put_slice(&this.pending[this.offset..this.offset + n]);
                this.offset += n;
                if this.offset == this.pending.len() {
                    this.pending.clear();
                    this.offset = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            // Uninitialised: a zeroed array would cost a 16 KiB memset on
            // every read, the hit path's largest avoidable cost.
            let mut scratch = [MaybeUninit::<u8>::uninit(); 16 * 1024];
            let mut read = ReadBuf::uninit(&mut scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
                this.pending = this.scanner.take_held();
            } else {
                this.scanner.feed(read.filled(), &mut this.pending);
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FramingGuard<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns what the parser sees.
    fn scan(input: &[u8], step: usize) -> Vec<u8> {
        let mut scanner = FramingScanner::default();
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            scanner.feed(piece, &mut out);
        }
        out.extend(scanner.take_held());
        out
    }

    fn every_split(input: &[u8]) -> Vec<Vec<u8>> {
        (1..=input.len()).map(|step| scan(input, step)).collect()
    }

    #[test]
    fn ordinary_requests_pass_unchanged_however_they_are_split() {
        let input = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        for out in every_split(input) {
            assert_eq!(out, input);
        }
    }

    #[test]
    fn chunked_bodies_are_followed_to_the_next_request() {
        let input = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        for out in every_split(input) {
            let text = String::from_utf8(out).unwrap();
            assert!(text.starts_with("POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"));
            assert!(
                text.contains("POST /b HTTP/1.1\r\nx-dashcache-framing-conflict: 1\r\n"),
                "the second request is marked: {text:?}"
            );
        }
    }

    #[test]
    fn a_chunked_body_without_trailers_ends_at_its_empty_line() {
        let input = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /b HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n";
        for out in every_split(input) {
            assert!(String::from_utf8(out)
                .unwrap()
                .contains("GET /b HTTP/1.1\r\nx-dashcache-framing-conflict: 1\r\n"));
        }
    }

    #[test]
    fn content_length_with_transfer_encoding_is_marked() {
        let out = scan(
            b"POST /a HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            7,
        );
        assert!(String::from_utf8(out)
            .unwrap()
            .starts_with("POST /a HTTP/1.1\r\nx-dashcache-framing-conflict: 1\r\n"));
    }

    #[test]
    fn body_bytes_that_look_like_a_head_are_not_scanned() {
        let input = b"POST /a HTTP/1.1\r\nContent-Length: 66\r\n\r\nGET /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            input.len() - input.windows(4).position(|w| w == b"\r\n\r\n").unwrap() - 4,
            66
        );
        for out in every_split(input) {
            assert_eq!(out, input);
        }
    }

    #[test]
    fn http2_and_garbage_are_handed_over_untouched() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04";
        assert_eq!(scan(preface, 3), preface);
        assert_eq!(
            scan(b"\x16\x03\x01garbage\r\n\r\nmore", 5),
            b"\x16\x03\x01garbage\r\n\r\nmore"
        );
    }

    #[test]
    fn an_unfinished_head_is_released_at_end_of_stream() {
        assert_eq!(
            scan(b"GET / HTTP/1.1\r\nHost", 4),
            b"GET / HTTP/1.1\r\nHost"
        );
    }
}
