//! The status page at `GET /api/cache/`: one self-contained HTML document
//! (inline CSS and JS, no CDN) embedded in the binary. It polls `stats`
//! every 2 s (and `keys` for the hottest entries), computes requests per
//! second from successive polls, and drives `clear` / `invalidate` /
//! `refresh` with the bearer token typed into it, showing refresh progress
//! from `stats`. Every 10 s it reads `history` and draws it as inline SVG
//! plots (its own code, no chart library) with event markers, tooltips and
//! per-route sparklines. It holds no state the API does not.

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::Response;

use crate::body::{self, ProxyBody};

const PAGE: &str = include_str!("status_page.html");

pub fn page() -> Response<ProxyBody> {
    let mut response = Response::new(body::full(PAGE));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Everything the page needs is inline or same-origin (the empty data:
    // icon keeps browsers from asking the upstream for /favicon.ico), and
    // only same-origin pages may frame it (its buttons clear the cache).
    headers.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'; frame-ancestors 'self'",
        ),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        assert!(!PAGE.contains("http://") && !PAGE.contains("https://"));
        assert!(!PAGE.contains("<script src"));
        let links: Vec<&str> = PAGE
            .match_indices("<link")
            .map(|(i, _)| &PAGE[i..])
            .collect();
        assert!(
            links
                .iter()
                .all(|l| l.starts_with(r#"<link rel="icon" href="data:,">"#)),
            "only the empty inline icon"
        );
    }
}
