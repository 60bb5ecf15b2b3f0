//! An answer's head in HTTP/1.1 wire form, written as hyper's HTTP/1 server
//! writes it, for the answers the express lane sends itself (`express.rs`).
//!
//! hyper writes the status line (`HTTP/1.1 200 OK`, or the code and its
//! canonical reason, `<none>` for an unknown one), then every field in the
//! map's order with its lower-case name, then adds `content-length` and
//! `date` when the answer has none. Its rules for the length, which
//! [`HeadWriter`] follows:
//! - an answer with a body (one not already at its end) keeps the first
//!   value of a stated `content-length` in place, or gets the body's length
//!   after the fields;
//! - an answer without one keeps a stated length only for `HEAD`, drops it
//!   otherwise, and gets `content-length: 0` except for `HEAD`;
//! - 204, 304 and 1xx answers get no length added, and no body sent.
//!
//! Hop-by-hop fields (`Connection`, `Transfer-Encoding`, `Trailer`), which
//! hyper treats apart, are never in an answer from the store (`headers.rs`
//! removes them before an answer is stored).

use std::time::SystemTime;

use http::header::{CONTENT_LENGTH, DATE};
use http::{HeaderName, HeaderValue, StatusCode};

/// Writes one answer head into a buffer, field by field.
pub struct HeadWriter<'o> {
    out: &'o mut Vec<u8>,
    head_only: bool,
    body_len: usize,
    no_length: bool,
    wrote_len: bool,
    wrote_date: bool,
    /// The last field written was a `content-length`.
    in_length: bool,
}

impl<'o> HeadWriter<'o> {
    /// Writes the status line of an answer to a `HEAD` request (`head_only`)
    /// or another one, whose body is `body_len` bytes.
    pub fn start(
        out: &'o mut Vec<u8>,
        status: StatusCode,
        head_only: bool,
        body_len: usize,
    ) -> Self {
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
        let no_length = status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        Self {
            out,
            head_only,
            body_len,
            no_length,
            wrote_len: false,
            wrote_date: false,
            in_length: false,
        }
    }

    /// Writes one field (one value of a name), in the answer map's order.
    pub fn field(&mut self, name: &HeaderName, value: &HeaderValue) {
        let repeated_length = self.in_length;
        self.in_length = false;
        if name == CONTENT_LENGTH {
            if self.body_len > 0 {
                // hyper trusts the body's length and writes the first value.
                self.wrote_len = true;
                self.in_length = true;
                if repeated_length {
                    return;
                }
            } else if self.head_only {
                self.wrote_len = true;
            } else {
                return;
            }
        } else if name == DATE {
            self.wrote_date = true;
        }
        self.out.extend_from_slice(name.as_str().as_bytes());
        self.out.extend_from_slice(b": ");
        self.out.extend_from_slice(value.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Adds the length and date the answer lacks and ends the head; returns
    /// whether its body is to be sent.
    pub fn finish(self) -> bool {
        let has_body = self.body_len > 0;
        if !self.wrote_len && !self.no_length && (has_body || !self.head_only) {
            self.out.extend_from_slice(b"content-length: ");
            let mut digits = itoa::Buffer::new();
            self.out
                .extend_from_slice(digits.format(self.body_len).as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
        if !self.wrote_date {
            self.out.extend_from_slice(b"date: ");
            http_date(self.out);
            self.out.extend_from_slice(b"\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
        has_body && !self.head_only && !self.no_length
    }
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

#[cfg(test)]
pub(crate) mod tests {
    use http::Response;

    use super::*;

    /// Writes `parts`' head, as hyper would for an answer whose body is
    /// `body_len` bytes, to a `HEAD` request when `head_only`; returns whether
    /// the body is to be sent.
    pub(crate) fn encode_head(
        parts: &http::response::Parts,
        head_only: bool,
        body_len: usize,
        out: &mut Vec<u8>,
    ) -> bool {
        let mut head = HeadWriter::start(out, parts.status, head_only, body_len);
        for (name, value) in &parts.headers {
            head.field(name, value);
        }
        head.finish()
    }

    fn head_of(response: Response<()>, head_only: bool, body_len: usize) -> (String, bool) {
        let (parts, ()) = response.into_parts();
        let mut out = Vec::new();
        let send = encode_head(&parts, head_only, body_len, &mut out);
        (String::from_utf8(out).unwrap(), send)
    }

    fn dated(status: u16, fields: &[(&str, &str)]) -> Response<()> {
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
    }

    const DATED: &str = "date: Mon, 07 Dec 2026 12:00:00 GMT\r\n";

    #[test]
    fn a_body_without_a_stated_length_gets_it_after_the_fields() {
        let (head, send) = head_of(dated(200, &[("x-a", "1")]), false, 5);
        assert_eq!(
            head,
            format!("HTTP/1.1 200 OK\r\nx-a: 1\r\n{DATED}content-length: 5\r\n\r\n")
        );
        assert!(send);
    }

    #[test]
    fn a_stated_length_is_kept_in_place_once() {
        let lengths = [("content-length", "5"), ("content-length", "5")];
        let (head, _) = head_of(dated(200, &lengths), false, 5);
        assert_eq!(
            head,
            format!("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n{DATED}\r\n")
        );
    }

    #[test]
    fn head_keeps_a_stated_length_adds_none_and_sends_no_body() {
        let (head, send) = head_of(dated(200, &[("content-length", "5")]), true, 0);
        assert_eq!(
            head,
            format!("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n{DATED}\r\n")
        );
        assert!(!send);
        let (head, _) = head_of(dated(200, &[]), true, 0);
        assert_eq!(head, format!("HTTP/1.1 200 OK\r\n{DATED}\r\n"));
    }

    #[test]
    fn an_empty_body_drops_a_stated_length_and_says_zero() {
        let (head, send) = head_of(dated(404, &[("content-length", "9")]), false, 0);
        assert_eq!(
            head,
            format!("HTTP/1.1 404 Not Found\r\n{DATED}content-length: 0\r\n\r\n")
        );
        assert!(!send);
    }

    #[test]
    fn not_modified_and_no_content_get_no_length_nor_body() {
        let (head, send) = head_of(dated(304, &[]), false, 0);
        assert_eq!(head, format!("HTTP/1.1 304 Not Modified\r\n{DATED}\r\n"));
        assert!(!send);
        let (head, send) = head_of(dated(204, &[]), false, 3);
        assert_eq!(head, format!("HTTP/1.1 204 No Content\r\n{DATED}\r\n"));
        assert!(!send);
    }

    #[test]
    fn an_unknown_status_has_hypers_placeholder_reason() {
        let (head, _) = head_of(dated(599, &[]), false, 0);
        assert!(head.starts_with("HTTP/1.1 599 <none>\r\n"), "{head}");
    }

    #[test]
    fn an_answer_without_a_date_gets_the_current_one() {
        let (head, _) = head_of(Response::new(()), false, 1);
        let date = head
            .lines()
            .find_map(|line| line.strip_prefix("date: "))
            .expect("a date");
        let date = httpdate::parse_http_date(date).expect("an HTTP date");
        let skew = SystemTime::now().duration_since(date).unwrap_or_default();
        assert!(skew.as_secs() <= 2, "{skew:?}");
    }
}
