//! Freshness arithmetic (pure; RFC 9111 §4.2): lifetimes from `Expires`
//! and from the `Last-Modified` heuristic, and an answer's age on arrival
//! from `Age` and `Date`. `policy::assess` decides which of them applies.

use std::time::{Duration, SystemTime};

use http::header::{HeaderName, AGE, EXPIRES, LAST_MODIFIED};
use http::HeaderMap;

/// `Expires` − `Date` in seconds; an `Expires` that is not a valid date
/// means already expired (RFC 9111 §5.3).
pub fn expires_lifetime(headers: &HeaderMap, date: SystemTime) -> Option<u64> {
    let mut lines = headers.get_all(EXPIRES).iter();
    let first = lines.next()?;
    let expires = first
        .to_str()
        .ok()
        .and_then(|t| httpdate::parse_http_date(t.trim()).ok());
    Some(match expires {
        Some(expires) if lines.next().is_none() => {
            expires.duration_since(date).map_or(0, |d| d.as_secs())
        }
        _ => 0,
    })
}

/// 10 % of the time since `Last-Modified`, at most `cap` (RFC 9111 §4.2.2).
pub fn heuristic(headers: &HeaderMap, date: SystemTime, cap: Duration) -> Option<u64> {
    let modified = http_date(headers, &LAST_MODIFIED)?;
    let since = date.duration_since(modified).ok()?.as_secs();
    Some((since / 10).min(cap.as_secs()))
}

/// The larger of the `Age` the answer carried and its apparent age from
/// `Date` (RFC 9111 §4.2.3).
pub fn initial_age(headers: &HeaderMap, date: Option<SystemTime>, now: SystemTime) -> u64 {
    let apparent = date
        .and_then(|date| now.duration_since(date).ok())
        .map_or(0, |d| d.as_secs());
    age_value(headers).unwrap_or(0).max(apparent)
}

/// The `Age` field's value: the first member of a list, ignored unless it
/// is a non-negative integer (RFC 9111 §5.1), capped at 2^31.
pub fn age_value(headers: &HeaderMap) -> Option<u64> {
    let line = headers.get(AGE)?.to_str().ok()?;
    let first = line.split(',').next()?.trim();
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(first.parse::<u64>().unwrap_or(1 << 31).min(1 << 31))
}

pub fn http_date(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    let mut lines = headers.get_all(name).iter();
    let value = lines.next()?.to_str().ok()?;
    httpdate::parse_http_date(value.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::map_of as headers;

    fn at(text: &str) -> SystemTime {
        httpdate::parse_http_date(text).unwrap()
    }

    #[test]
    fn an_age_list_counts_its_first_member_and_odd_values_are_ignored() {
        assert_eq!(age_value(&headers(&[("age", "7200, 0")])), Some(7200));
        assert_eq!(age_value(&headers(&[("age", "1x")])), None);
        assert_eq!(age_value(&headers(&[("age", "-5")])), None);
        assert_eq!(
            age_value(&headers(&[("age", "99999999999999")])),
            Some(1 << 31)
        );
    }

    #[test]
    fn expires_counts_from_date_and_a_second_or_invalid_expires_is_zero() {
        let date = at("Sun, 06 Dec 2026 12:00:00 GMT");
        let one = headers(&[("expires", "Sun, 06 Dec 2026 12:10:00 GMT")]);
        assert_eq!(expires_lifetime(&one, date), Some(600));
        let twice = headers(&[
            ("expires", "Sun, 06 Dec 2026 12:10:00 GMT"),
            ("expires", "Sun, 06 Dec 2026 12:20:00 GMT"),
        ]);
        assert_eq!(expires_lifetime(&twice, date), Some(0));
        assert_eq!(
            expires_lifetime(&headers(&[("expires", "-1")]), date),
            Some(0)
        );
        assert_eq!(expires_lifetime(&HeaderMap::new(), date), None);
    }

    #[test]
    fn the_apparent_age_wins_when_the_date_is_older_than_age_says() {
        let now = at("Sun, 06 Dec 2026 12:00:00 GMT");
        let date = Some(at("Sun, 06 Dec 2026 11:59:00 GMT"));
        assert_eq!(initial_age(&headers(&[("age", "10")]), date, now), 60);
        assert_eq!(initial_age(&headers(&[("age", "100")]), date, now), 100);
        assert_eq!(initial_age(&HeaderMap::new(), None, now), 0);
    }

    #[test]
    fn the_heuristic_needs_last_modified_and_is_capped() {
        let date = at("Sun, 06 Dec 2026 12:00:00 GMT");
        let modified = headers(&[("last-modified", "Sun, 06 Dec 2026 02:00:00 GMT")]);
        assert_eq!(
            heuristic(&modified, date, Duration::from_secs(86_400)),
            Some(3600)
        );
        assert_eq!(
            heuristic(&modified, date, Duration::from_secs(60)),
            Some(60)
        );
        assert_eq!(
            heuristic(&HeaderMap::new(), date, Duration::from_secs(60)),
            None
        );
    }
}
