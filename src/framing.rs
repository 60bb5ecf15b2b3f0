//! HTTP/1 request framing, followed on the bytes a client sends, so that a
//! request whose head carries both `Content-Length` and `Transfer-Encoding`
//! is refused, and so that the connection knows when it is waiting for a
//! request body (for `body_read_timeout`, see `client_io.rs`).
//!
//! RFC 9112 §6.3 calls a head with both fields a likely smuggling attempt.
//! hyper accepts it the way the RFC allows (chunked wins, `Content-Length`
//! is dropped, the connection closes after the answer) and does not report
//! the conflict, so [`FramingScanner`] judges every request head itself,
//! with httparse's own rules (the parser hyper uses: bare LF and mixed
//! CRLF/LF line endings are accepted, the head ends where httparse says
//! `Complete(len)`), then skips its `Content-Length` or chunked body.
//!
//! The scanner looks at the bytes where they already are (hyper's read
//! buffer) and copies nothing, except the start of a head that arrives split
//! over several reads, and that copy is bounded by `max_header_bytes`, as
//! hyper's own buffer is. Anything it does not follow (HTTP/2, malformed or
//! oversized input) makes it stop watching for good: hyper's parser then
//! decides, refuses what is malformed or too large, and closes.

/// Marks a request whose head had both `Content-Length` and
/// `Transfer-Encoding` (added by the server before the pipeline sees it). A
/// client sending it itself only gets its own 400.
pub const FRAMING_CONFLICT: http::HeaderName =
    http::HeaderName::from_static("x-dashcache-framing-conflict");

/// As many header fields as hyper parses by default; a head with more is
/// refused by hyper (431), so following it is pointless.
const MAX_HEADERS: usize = 100;

/// Longest chunk-size line followed (hyper refuses chunk extensions past
/// 16 KiB per body); past it, stop watching.
const MAX_CHUNK_LINE: usize = 16 * 1024;

#[derive(Debug)]
enum State {
    /// Between requests, or inside a head; holds the part of a head that
    /// arrived in earlier reads (empty when none).
    Head(Vec<u8>),
    /// A `Content-Length` body: bytes left.
    Fixed(u64),
    /// A chunk-size line; holds its start when split over reads.
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    /// The CRLF after a chunk's data: bytes left.
    ChunkEnd(u8),
    /// Trailer fields after the last chunk, up to their empty line.
    Trailers(Vec<u8>),
    /// Not watching any more: bytes go through untouched.
    Passthrough,
}

/// Where the scanner is, for the connection's deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for, or inside, a request head (`header_read_timeout`).
    Head,
    /// Inside a request body (`body_read_timeout`).
    Body,
    /// Not following the connection (HTTP/2, malformed input).
    Unknown,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Head => "head",
            Self::Body => "body",
            Self::Unknown => "unknown",
        }
    }
}

/// Follows request framing on the bytes a client sends (pure; no I/O).
#[derive(Debug)]
pub struct FramingScanner {
    state: State,
    max_head: usize,
    /// Request heads judged so far.
    heads: u64,
    /// 1-based number of the first head that had both framing fields.
    conflict: Option<u64>,
}

impl FramingScanner {
    /// A scanner for a new connection; `max_head` is `max_header_bytes`.
    pub fn new(max_head: usize) -> Self {
        Self {
            state: State::Head(Vec::new()),
            max_head,
            heads: 0,
            conflict: None,
        }
    }

    /// The 1-based number of the request whose head carried both
    /// `Content-Length` and `Transfer-Encoding`, once one did. hyper closes
    /// the connection after that request, so later ones do not matter.
    pub fn conflict(&self) -> Option<u64> {
        self.conflict
    }

    pub fn phase(&self) -> Phase {
        match self.state {
            State::Head(_) => Phase::Head,
            State::Fixed(_)
            | State::ChunkSize(_)
            | State::ChunkData(_)
            | State::ChunkEnd(_)
            | State::Trailers(_) => Phase::Body,
            State::Passthrough => Phase::Unknown,
        }
    }

    /// Request heads seen complete so far.
    pub fn heads(&self) -> u64 {
        self.heads
    }

    /// Between two requests with nothing of the next head seen yet.
    pub fn at_boundary(&self) -> bool {
        matches!(&self.state, State::Head(held) if held.is_empty())
    }

    /// Counts a request followed elsewhere, from a boundary to the next: a
    /// head without `Transfer-Encoding`, with its `Content-Length` body if
    /// any, and nothing after it (the express lane's, which parses its
    /// heads itself by the same httparse rules and stricter framing ones).
    /// [`FramingScanner::observe`] on those bytes would judge it so too.
    pub fn count_plain_request(&mut self) {
        debug_assert!(self.at_boundary(), "counted from a boundary only");
        self.heads += 1;
    }

    /// Observes bytes read from the client, in order. Returns how many of
    /// them were request body bytes (for the body's minimum rate).
    pub fn observe(&mut self, mut input: &[u8]) -> u64 {
        let mut body = 0u64;
        while !input.is_empty() {
            self.state = match std::mem::replace(&mut self.state, State::Passthrough) {
                State::Passthrough => return body,
                State::Fixed(left) => {
                    let (taken, left) = skip(&mut input, left);
                    body += taken;
                    match left {
                        0 => State::Head(Vec::new()),
                        left => State::Fixed(left),
                    }
                }
                State::ChunkData(left) => {
                    let (taken, left) = skip(&mut input, left);
                    body += taken;
                    match left {
                        0 => State::ChunkEnd(2),
                        left => State::ChunkData(left),
                    }
                }
                State::ChunkEnd(left) => match skip(&mut input, u64::from(left)).1 {
                    0 => State::ChunkSize(Vec::new()),
                    left => State::ChunkEnd(left as u8),
                },
                State::Head(held) => self.head(held, &mut input),
                State::ChunkSize(held) => chunk_size(held, &mut input),
                State::Trailers(held) => self.trailers(held, &mut input),
            };
        }
        body
    }

    /// Judges a request head once httparse says it is complete.
    fn head(&mut self, held: Vec<u8>, input: &mut &[u8]) -> State {
        if held.is_empty() {
            // The common case: the whole head in one read, judged in place.
            if !may_end_head(&[], input) {
                return self.hold_head(held, input);
            }
            return match parse_head(input) {
                Parsed::Complete(len, framing) => {
                    *input = &input[len..];
                    self.judged(framing)
                }
                Parsed::Partial => self.hold_head(held, input),
                Parsed::Invalid => State::Passthrough,
            };
        }
        let tail = &held[held.len().saturating_sub(2)..];
        if !may_end_head(tail, input) {
            return self.hold_head(held, input);
        }
        let mut joined = held;
        let before = joined.len();
        let room = (self.max_head + 1).saturating_sub(before);
        joined.extend_from_slice(&input[..input.len().min(room)]);
        match parse_head(&joined) {
            Parsed::Complete(len, framing) => {
                *input = &input[len.saturating_sub(before)..];
                self.judged(framing)
            }
            Parsed::Partial => {
                joined.truncate(before);
                self.hold_head(joined, input)
            }
            Parsed::Invalid => State::Passthrough,
        }
    }

    /// Keeps the start of an unfinished head, within `max_header_bytes`.
    fn hold_head(&self, mut held: Vec<u8>, input: &mut &[u8]) -> State {
        if held.len() + input.len() > self.max_head {
            // hyper answers 431 and closes: nothing more to follow.
            return State::Passthrough;
        }
        held.extend_from_slice(input);
        *input = &[];
        State::Head(held)
    }

    fn judged(&mut self, framing: Framing) -> State {
        self.heads += 1;
        match framing {
            Framing::Conflict => {
                self.conflict.get_or_insert(self.heads);
                // hyper closes the connection after this request.
                State::Passthrough
            }
            Framing::Opaque => State::Passthrough,
            Framing::Chunked => State::ChunkSize(Vec::new()),
            Framing::Length(0) => State::Head(Vec::new()),
            Framing::Length(length) => State::Fixed(length),
        }
    }

    fn trailers(&self, mut held: Vec<u8>, input: &mut &[u8]) -> State {
        // hyper requires CRLF line endings in trailers: an empty line ends them.
        let before = held.len();
        let room = (self.max_head + 1).saturating_sub(before);
        held.extend_from_slice(&input[..input.len().min(room)]);
        let end = if held.starts_with(b"\r\n") {
            Some(2)
        } else {
            let from = before.saturating_sub(3);
            memchr::memmem::find(&held[from..], b"\r\n\r\n").map(|at| from + at + 4)
        };
        match end {
            Some(end) => {
                *input = &input[end - before..];
                State::Head(Vec::new())
            }
            None if held.len() > self.max_head => State::Passthrough,
            None => {
                *input = &[];
                State::Trailers(held)
            }
        }
    }
}

/// What a complete head says about the body that follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    /// Both `Content-Length` and `Transfer-Encoding`.
    Conflict,
    /// A non-chunked transfer coding or an invalid length: hyper refuses
    /// the request and closes the connection.
    Opaque,
}

enum Parsed {
    Complete(usize, Framing),
    Partial,
    Invalid,
}

fn parse_head(bytes: &[u8]) -> Parsed {
    let mut headers = [std::mem::MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        bytes,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(len)) => Parsed::Complete(len, framing(&request)),
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Invalid,
    }
}

fn framing(request: &httparse::Request<'_, '_>) -> Framing {
    let mut length = None;
    let mut has_length = false;
    let mut transfer_encoding = false;
    let mut chunked_last = false;
    // `Upgrade` and CONNECT are framed like any request: dashcache serves
    // no upgrades, so hyper keeps reading requests after them (and ends
    // the connection if an answer is 101). Not following them would let a
    // client switch this watch off for the requests after.
    let mut opaque = false;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            has_length = true;
            length = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            if length.is_none() {
                // hyper refuses an invalid length with 400 (unless a
                // Transfer-Encoding makes it a conflict, checked below).
                opaque = true;
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            chunked_last = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.rsplit(',').next())
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        }
    }
    match (transfer_encoding, has_length) {
        (true, true) => Framing::Conflict,
        _ if opaque => Framing::Opaque,
        (true, false) if chunked_last => Framing::Chunked,
        (true, false) => Framing::Opaque,
        (false, _) => Framing::Length(length.unwrap_or(0)),
    }
}

/// A head can only end on an empty line: a `\n` followed by `\n` or `\r\n`.
/// Parsing only then keeps a head sent a byte at a time from being parsed
/// once per byte. `tail` is the end of what arrived before `input`.
fn may_end_head(tail: &[u8], input: &[u8]) -> bool {
    // The common read: a whole head, ending where the read ends.
    if input.ends_with(b"\n\r\n") || input.ends_with(b"\n\n") {
        return true;
    }
    let joint = tail.len() + input.len().min(2);
    let mut edge = [0u8; 4];
    edge[..tail.len()].copy_from_slice(tail);
    edge[tail.len()..joint].copy_from_slice(&input[..input.len().min(2)]);
    has_empty_line(&edge[..joint]) || has_empty_line(input)
}

/// True when `bytes` holds `\n\n` or `\n\r\n`.
fn has_empty_line(bytes: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', bytes)
        .any(|at| matches!(&bytes[at + 1..], [b'\n', ..] | [b'\r', b'\n', ..]))
}

fn chunk_size(mut held: Vec<u8>, input: &mut &[u8]) -> State {
    let before = held.len();
    let line_end = memchr::memchr(b'\n', input);
    let take = line_end.map_or(input.len(), |at| at + 1);
    if before + take > MAX_CHUNK_LINE {
        return State::Passthrough;
    }
    let line: &[u8] = if before == 0 && line_end.is_some() {
        &input[..take]
    } else {
        held.extend_from_slice(&input[..take]);
        &held
    };
    if line_end.is_none() {
        *input = &[];
        return State::ChunkSize(held);
    }
    let size = match httparse::parse_chunk_size(line) {
        Ok(httparse::Status::Complete((_, size))) => size,
        _ => return State::Passthrough,
    };
    *input = &input[take..];
    if size == 0 {
        State::Trailers(Vec::new())
    } else {
        State::ChunkData(size)
    }
}

/// Skips up to `left` bytes of `input`; returns (skipped, still left).
fn skip(input: &mut &[u8], left: u64) -> (u64, u64) {
    let n = left.min(input.len() as u64);
    *input = &input[n as usize..];
    (n, left - n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes.
    fn scan(input: &[u8], step: usize) -> FramingScanner {
        let mut scanner = FramingScanner::new(64 * 1024);
        for piece in input.chunks(step) {
            scanner.observe(piece);
        }
        scanner
    }

    fn every_split(input: &[u8]) -> impl Iterator<Item = FramingScanner> + '_ {
        (1..=input.len()).map(|step| scan(input, step))
    }

    #[test]
    fn ordinary_requests_are_followed_however_they_are_split() {
        let input = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        for scanner in every_split(input) {
            assert_eq!(scanner.heads, 2);
            assert_eq!(scanner.phase(), Phase::Head);
            assert_eq!(scanner.conflict(), None);
        }
    }

    #[test]
    fn bare_lf_and_mixed_line_endings_end_a_head_where_httparse_says() {
        for input in [
            &b"GET /a HTTP/1.1\nHost: x\n\nPOST /b HTTP/1.1\nContent-Length: 1\nTransfer-Encoding: chunked\n\n"[..],
            b"GET /a HTTP/1.1\r\nHost: x\n\r\nPOST /b HTTP/1.1\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\n",
        ] {
            for scanner in every_split(input) {
                assert_eq!(scanner.heads, 2, "{:?}", String::from_utf8_lossy(input));
                assert_eq!(scanner.conflict(), Some(2));
            }
        }
    }

    #[test]
    fn chunked_bodies_are_followed_to_the_next_request() {
        let input = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        for scanner in every_split(input) {
            assert_eq!(scanner.heads, 2);
            assert_eq!(scanner.conflict(), Some(2), "the second request is marked");
        }
    }

    #[test]
    fn a_chunked_body_without_trailers_ends_at_its_empty_line() {
        let input = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /b HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n";
        for scanner in every_split(input) {
            assert_eq!(scanner.conflict(), Some(2));
        }
    }

    #[test]
    fn content_length_with_transfer_encoding_is_a_conflict_even_when_the_length_is_invalid() {
        let scanner = scan(
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4x\r\n\r\n0\r\n\r\n",
            7,
        );
        assert_eq!(scanner.conflict(), Some(1));
        assert_eq!(scanner.phase(), Phase::Unknown, "nothing more is followed");
    }

    #[test]
    fn body_bytes_that_look_like_a_head_are_not_judged() {
        let input = b"POST /a HTTP/1.1\r\nContent-Length: 66\r\n\r\nGET /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        for scanner in every_split(input) {
            assert_eq!(scanner.heads, 1);
            assert_eq!(scanner.conflict(), None);
            assert_eq!(scanner.phase(), Phase::Head);
        }
    }

    #[test]
    fn the_phase_is_body_until_the_declared_length_has_arrived() {
        let mut scanner = FramingScanner::new(1024);
        assert_eq!(scanner.phase(), Phase::Head);
        assert_eq!(
            scanner.observe(b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nab"),
            2
        );
        assert_eq!(scanner.phase(), Phase::Body);
        assert_eq!(scanner.observe(b"cGET"), 1);
        assert_eq!(scanner.phase(), Phase::Head);
    }

    #[test]
    fn an_upgrade_request_does_not_switch_the_watch_off() {
        let input = b"GET /a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        for scanner in every_split(input) {
            assert_eq!(scanner.conflict(), Some(2));
        }
        let mut scanner = FramingScanner::new(1024);
        scanner.observe(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(scanner.phase(), Phase::Body);
    }

    #[test]
    fn http2_and_garbage_are_not_followed() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04";
        assert_eq!(scan(preface, 3).phase(), Phase::Unknown);
        assert_eq!(
            scan(b"\x16\x03\x01garbage\r\n\r\nmore", 5).phase(),
            Phase::Unknown
        );
    }

    #[test]
    fn a_head_over_max_header_bytes_stops_the_watch_without_holding_it() {
        let mut scanner = FramingScanner::new(1024);
        scanner.observe(b"GET / HTTP/1.1\r\nx-padding: ");
        scanner.observe(&[b'a'; 2000]);
        assert_eq!(scanner.phase(), Phase::Unknown);
        assert!(matches!(scanner.state, State::Passthrough));
    }

    #[test]
    fn a_head_at_max_header_bytes_is_still_judged() {
        let head = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut scanner = FramingScanner::new(head.len());
        for byte in head {
            scanner.observe(std::slice::from_ref(byte));
        }
        assert_eq!(scanner.conflict(), Some(1));
    }

    #[test]
    fn a_head_sent_a_byte_at_a_time_is_parsed_only_at_empty_lines() {
        assert!(!may_end_head(b"", b"GET / HTTP/1.1\r\n"));
        assert!(may_end_head(b"\r\n", b"\r\n"));
        assert!(may_end_head(b"x\n", b"\n"));
        assert!(may_end_head(b"\n\r", b"\n"));
        assert!(may_end_head(b"", b"a\n\nb"));
        assert!(!may_end_head(b"\r\n", b"H"));
    }
}
