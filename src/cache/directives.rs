//! `Cache-Control` directives (RFC 9111 §5.2) and their targeted variants
//! such as `CDN-Cache-Control` (RFC 9213), parsed once per message (pure).
//!
//! Parsing follows RFC 9110 §5.6: directives are separated by commas outside
//! quoted strings, names are case-insensitive, a value is a token or a quoted
//! string, and no whitespace may surround `=` (`max-age =60` is not
//! `max-age`). When a directive appears twice, the first occurrence counts
//! (RFC 9111 §4.2.1). `delta-seconds` values are read from their leading
//! digits and capped at 2^31 (RFC 9111 §1.2.2); a value with no leading
//! digit is ignored.

use http::header::{HeaderName, CACHE_CONTROL};
use http::HeaderMap;

/// The largest delta-seconds value a cache must represent (RFC 9111 §1.2.2).
const MAX_DELTA: u64 = 1 << 31;

/// The directives of one `Cache-Control`-shaped field, request or response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    pub no_store: bool,
    /// `no-cache`; the field names it lists (empty when unqualified).
    pub no_cache: Option<Vec<HeaderName>>,
    /// `private`; the field names it lists (empty when unqualified).
    pub private: Option<Vec<HeaderName>>,
    pub public: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub stale_if_error: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
    /// Request `max-stale`: `Some(None)` accepts any staleness.
    pub max_stale: Option<Option<u64>>,
    /// Request `min-fresh`.
    pub min_fresh: Option<u64>,
    /// Request `only-if-cached`.
    pub only_if_cached: bool,
}

impl Directives {
    /// The directives of every `Cache-Control` line of `headers`.
    pub fn cache_control(headers: &HeaderMap) -> Self {
        Self::of_field(headers, &CACHE_CONTROL).unwrap_or_default()
    }

    /// The directives of every line of field `name`, or `None` when the
    /// field is absent or has no readable directive.
    pub fn of_field(headers: &HeaderMap, name: &HeaderName) -> Option<Self> {
        let mut directives = Self::default();
        let mut any = false;
        for line in headers.get_all(name) {
            let Ok(text) = line.to_str() else { continue };
            for (name, value) in split(text) {
                any = true;
                directives.apply(&name, value.as_deref());
            }
        }
        any.then_some(directives)
    }

    /// The directives of a targeted field such as `CDN-Cache-Control`
    /// (RFC 9213 §2.1), which is a Structured Field Dictionary (RFC 8941
    /// §3.2): `None` when the field is absent or is not a valid dictionary,
    /// or when a delta-seconds directive is not an Integer; the cache then
    /// ignores the whole field.
    pub fn of_targeted(headers: &HeaderMap, name: &HeaderName) -> Option<Self> {
        let mut lines = Vec::new();
        for line in headers.get_all(name) {
            lines.push(line.to_str().ok()?);
        }
        if lines.is_empty() {
            return None;
        }
        let members = sf_dictionary(&lines.join(","))?;
        let mut directives = Self::default();
        for (key, value) in members {
            let value = match (key.as_str(), value) {
                (
                    "max-age" | "s-maxage" | "stale-if-error" | "stale-while-revalidate",
                    SfValue::Integer(n),
                ) => Some(n.to_string()),
                ("max-age" | "s-maxage" | "stale-if-error" | "stale-while-revalidate", _) => {
                    return None
                }
                (_, SfValue::String(text)) => Some(text),
                (_, SfValue::Integer(n)) => Some(n.to_string()),
                (_, SfValue::True | SfValue::Other) => None,
            };
            directives.apply(&key, value.as_deref());
        }
        Some(directives)
    }

    /// Parses one field value (all of its directives).
    pub fn parse(text: &str) -> Self {
        let mut directives = Self::default();
        for (name, value) in split(text) {
            directives.apply(&name, value.as_deref());
        }
        directives
    }

    fn apply(&mut self, name: &str, value: Option<&str>) {
        let seconds = value.and_then(delta_seconds);
        let first = |slot: &mut Option<u64>| {
            if slot.is_none() {
                *slot = seconds;
            }
        };
        match name {
            "no-store" => self.no_store = true,
            "no-cache" => merge_fields(&mut self.no_cache, value),
            "private" => merge_fields(&mut self.private, value),
            "public" => self.public = true,
            "max-age" => first(&mut self.max_age),
            "s-maxage" => first(&mut self.s_maxage),
            "must-revalidate" => self.must_revalidate = true,
            "proxy-revalidate" => self.proxy_revalidate = true,
            "stale-if-error" => first(&mut self.stale_if_error),
            "stale-while-revalidate" => first(&mut self.stale_while_revalidate),
            "max-stale" if self.max_stale.is_none() && (value.is_none() || seconds.is_some()) => {
                self.max_stale = Some(seconds);
            }
            "min-fresh" => first(&mut self.min_fresh),
            "only-if-cached" => self.only_if_cached = true,
            _ => {}
        }
    }

    /// True when a stale copy must not be served without revalidation in a
    /// shared cache (RFC 9111 §5.2.2.2, §5.2.2.8, §5.2.2.10).
    pub fn forbids_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some()
    }
}

/// `no-cache="a, b"` adds `a` and `b`; a bare `no-cache` leaves the list
/// empty, which means the whole answer.
fn merge_fields(slot: &mut Option<Vec<HeaderName>>, value: Option<&str>) {
    match (value, slot.as_mut()) {
        (None, _) => *slot = Some(Vec::new()),
        // Already unqualified: that covers every field.
        (Some(_), Some(list)) if list.is_empty() => {}
        (Some(value), _) => slot.get_or_insert_with(Vec::new).extend(
            value
                .split(',')
                .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok()),
        ),
    }
}

/// Leading digits of a token, capped at 2^31; `None` without a digit.
fn delta_seconds(value: &str) -> Option<u64> {
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let number = value[..digits].parse::<u64>().unwrap_or(MAX_DELTA);
    Some(number.min(MAX_DELTA))
}

/// Splits a field value into lowercase directive names and their values
/// (quoted strings unquoted), honouring commas inside quotes.
fn split(text: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && (bytes[i] == b',' || bytes[i] == b' ' || bytes[i] == b'\t') {
            i += 1;
        }
        let start = i;
        while i < bytes.len() && !matches!(bytes[i], b'=' | b',' | b' ' | b'\t') {
            i += 1;
        }
        let name = text[start..i].to_ascii_lowercase();
        let mut value = None;
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
            if i < bytes.len() && bytes[i] == b'"' {
                i += 1;
                let mut unquoted = String::new();
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' && i + 1 < bytes.len() {
                        i += 1;
                    }
                    unquoted.push(bytes[i] as char);
                    i += 1;
                }
                i += 1;
                value = Some(unquoted);
            } else {
                let start = i;
                while i < bytes.len() && !matches!(bytes[i], b',' | b' ' | b'\t') {
                    i += 1;
                }
                value = Some(text[start..i].to_owned());
            }
        }
        // Anything else up to the next comma (`max-age =60`) spoils the directive.
        let mut spoiled = false;
        while i < bytes.len() && bytes[i] != b',' {
            if bytes[i] != b' ' && bytes[i] != b'\t' {
                spoiled = true;
            }
            i += 1;
        }
        if !name.is_empty() && !spoiled {
            out.push((name, value));
        }
    }
    out
}

/// A dictionary member's value, as far as cache directives care.
enum SfValue {
    /// A bare key (boolean true), or `?1`.
    True,
    Integer(i64),
    String(String),
    /// Any other valid item (token, decimal, byte sequence, `?0`, inner list).
    Other,
}

/// Parses an RFC 8941 §4.2.2 dictionary into keys and values (parameters
/// read and dropped); `None` when the text is not a valid dictionary.
fn sf_dictionary(text: &str) -> Option<Vec<(String, SfValue)>> {
    let bytes = text.as_bytes();
    let mut i = 0;
    let skip_ows = |i: &mut usize| {
        while *i < bytes.len() && (bytes[*i] == b' ' || bytes[*i] == b'\t') {
            *i += 1;
        }
    };
    let mut out = Vec::new();
    skip_ows(&mut i);
    if i == bytes.len() {
        return Some(out);
    }
    loop {
        let key = sf_key(bytes, &mut i)?;
        let value = if bytes.get(i) == Some(&b'=') {
            i += 1;
            if bytes.get(i) == Some(&b'(') {
                sf_inner_list(bytes, &mut i)?;
                SfValue::Other
            } else {
                sf_item(bytes, &mut i)?
            }
        } else {
            SfValue::True
        };
        sf_parameters(bytes, &mut i)?;
        out.push((key, value));
        skip_ows(&mut i);
        if i == bytes.len() {
            return Some(out);
        }
        if bytes[i] != b',' {
            return None;
        }
        i += 1;
        skip_ows(&mut i);
        if i == bytes.len() {
            return None;
        }
    }
}

fn sf_key(bytes: &[u8], i: &mut usize) -> Option<String> {
    let start = *i;
    match bytes.get(*i) {
        Some(b) if b.is_ascii_lowercase() || *b == b'*' => *i += 1,
        _ => return None,
    }
    while let Some(&b) = bytes.get(*i) {
        if b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.' | b'*') {
            *i += 1;
        } else {
            break;
        }
    }
    Some(String::from_utf8_lossy(&bytes[start..*i]).into_owned())
}

fn sf_item(bytes: &[u8], i: &mut usize) -> Option<SfValue> {
    match *bytes.get(*i)? {
        b'-' | b'0'..=b'9' => {
            let start = *i;
            *i += 1;
            let mut decimal = false;
            while let Some(&b) = bytes.get(*i) {
                if b.is_ascii_digit() || (b == b'.' && !decimal) {
                    decimal |= b == b'.';
                    *i += 1;
                } else {
                    break;
                }
            }
            let text = std::str::from_utf8(&bytes[start..*i]).ok()?;
            if decimal {
                let (whole, fraction) = text.split_once('.')?;
                let digits = whole.trim_start_matches('-').len();
                ((1..=12).contains(&digits) && (1..=3).contains(&fraction.len()))
                    .then_some(SfValue::Other)
            } else {
                let digits = text.trim_start_matches('-').len();
                if digits == 0 || digits > 15 {
                    return None;
                }
                text.parse().ok().map(SfValue::Integer)
            }
        }
        b'"' => {
            *i += 1;
            let mut text = String::new();
            loop {
                match *bytes.get(*i)? {
                    b'\\' => {
                        let next = *bytes.get(*i + 1)?;
                        if next != b'"' && next != b'\\' {
                            return None;
                        }
                        text.push(next as char);
                        *i += 2;
                    }
                    b'"' => {
                        *i += 1;
                        return Some(SfValue::String(text));
                    }
                    b @ 0x20..=0x7e => {
                        text.push(b as char);
                        *i += 1;
                    }
                    _ => return None,
                }
            }
        }
        b'?' => match bytes.get(*i + 1)? {
            b'1' => {
                *i += 2;
                Some(SfValue::True)
            }
            b'0' => {
                *i += 2;
                Some(SfValue::Other)
            }
            _ => None,
        },
        b':' => {
            *i += 1;
            while *bytes.get(*i)? != b':' {
                let b = bytes[*i];
                if !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')) {
                    return None;
                }
                *i += 1;
            }
            *i += 1;
            Some(SfValue::Other)
        }
        b if b.is_ascii_alphabetic() || b == b'*' => {
            *i += 1;
            while let Some(&b) = bytes.get(*i) {
                if b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b) {
                    *i += 1;
                } else {
                    break;
                }
            }
            Some(SfValue::Other)
        }
        _ => None,
    }
}

fn sf_inner_list(bytes: &[u8], i: &mut usize) -> Option<()> {
    *i += 1;
    loop {
        while bytes.get(*i) == Some(&b' ') {
            *i += 1;
        }
        if *bytes.get(*i)? == b')' {
            *i += 1;
            return sf_parameters(bytes, i);
        }
        sf_item(bytes, i)?;
        sf_parameters(bytes, i)?;
        match *bytes.get(*i)? {
            b' ' | b')' => {}
            _ => return None,
        }
    }
}

fn sf_parameters(bytes: &[u8], i: &mut usize) -> Option<()> {
    while bytes.get(*i) == Some(&b';') {
        *i += 1;
        while bytes.get(*i) == Some(&b' ') {
            *i += 1;
        }
        sf_key(bytes, i)?;
        if bytes.get(*i) == Some(&b'=') {
            *i += 1;
            sf_item(bytes, i)?;
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn directives_are_case_insensitive_and_first_occurrence_wins() {
        let d = Directives::parse("Max-Age=1800, max-age=1, S-MAXAGE=5");
        assert_eq!(d.max_age, Some(1800));
        assert_eq!(d.s_maxage, Some(5));
    }

    #[test]
    fn quoted_strings_hide_their_commas_and_directives() {
        let d = Directives::parse("extension=\"max-age=3600, public\", max-age=1");
        assert_eq!(d.max_age, Some(1));
        assert!(!d.public);
        assert_eq!(Directives::parse("max-age=\"60\"").max_age, Some(60));
    }

    #[test]
    fn whitespace_around_equals_spoils_the_directive() {
        assert_eq!(Directives::parse("max-age =60").max_age, None);
        assert_eq!(Directives::parse("max-age= 60").max_age, None);
    }

    #[test]
    fn delta_seconds_use_leading_digits_and_are_capped() {
        assert_eq!(Directives::parse("max-age=3600.5").max_age, Some(3600));
        assert_eq!(Directives::parse("max-age=a3600").max_age, None);
        assert_eq!(Directives::parse("max-age='3600'").max_age, None);
        assert_eq!(
            Directives::parse("max-age=99999999999999999999").max_age,
            Some(MAX_DELTA)
        );
    }

    #[test]
    fn no_cache_and_private_keep_their_field_lists() {
        let d = Directives::parse("no-cache=\"Set-Cookie, X-Foo\", private=x-bar");
        assert_eq!(
            d.no_cache.unwrap(),
            ["set-cookie", "x-foo"].map(HeaderName::from_static)
        );
        assert_eq!(d.private.unwrap(), [HeaderName::from_static("x-bar")]);
        assert_eq!(
            Directives::parse("no-cache=\"a\", no-cache").no_cache,
            Some(vec![])
        );
    }

    #[test]
    fn every_line_of_the_field_counts() {
        let mut headers = HeaderMap::new();
        headers.append(CACHE_CONTROL, HeaderValue::from_static("public"));
        headers.append(CACHE_CONTROL, HeaderValue::from_static("max-age=9"));
        let d = Directives::cache_control(&headers);
        assert!(d.public);
        assert_eq!(d.max_age, Some(9));
        assert!(
            Directives::of_field(&headers, &HeaderName::from_static("cdn-cache-control")).is_none()
        );
    }

    #[test]
    fn a_targeted_field_must_be_a_valid_structured_dictionary() {
        let cdn = HeaderName::from_static("cdn-cache-control");
        let of = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(&cdn, HeaderValue::from_static(value));
            Directives::of_targeted(&headers, &cdn)
        };
        assert_eq!(
            of("max-age=600, stale-if-error=60").unwrap().max_age,
            Some(600)
        );
        assert_eq!(of("private, foo=bar;p=1").unwrap().private, Some(vec![]));
        assert!(of("max-age=10000, &&&&&").is_none(), "not a dictionary");
        assert!(
            of("max-age=\"10000\"").is_none(),
            "max-age must be an Integer"
        );
        assert!(of("MaX-aGe=60").is_none(), "keys are lowercase");
        assert!(of("max-age =100").is_none());
        assert!(Directives::of_targeted(&HeaderMap::new(), &cdn).is_none());
    }

    #[test]
    fn request_directives_are_read() {
        let d = Directives::parse("max-stale, min-fresh=5, only-if-cached");
        assert_eq!(d.max_stale, Some(None));
        assert_eq!(d.min_fresh, Some(5));
        assert!(d.only_if_cached);
        assert_eq!(Directives::parse("max-stale=30").max_stale, Some(Some(30)));
    }

    #[test]
    fn s_maxage_and_must_revalidate_forbid_stale() {
        assert!(Directives::parse("s-maxage=1").forbids_stale());
        assert!(Directives::parse("proxy-revalidate").forbids_stale());
        assert!(!Directives::parse("max-age=1").forbids_stale());
    }
}
