//! Protocol hygiene: conflicting framing never desynchronises the proxy and
//! the upstream, invalid framing never reaches the upstream, hop-by-hop
//! fields are neither forwarded nor stored, and HEAD answers carry no body.

mod support;

use support::{raw_request, spawn_proxy, Client, Origin};

#[tokio::test]
async fn conflicting_content_lengths_are_refused_before_the_upstream() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), "").await;
    let reply = raw_request(
        proxy.addr,
        b"POST /api/metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert_eq!(reply.status, 400);
    assert_eq!(origin.total(), 0);
}

#[tokio::test]
async fn an_invalid_content_length_is_refused_before_the_upstream() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), "").await;
    let reply = raw_request(
        proxy.addr,
        b"POST /api/metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5x\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert_eq!(reply.status, 400);
    assert_eq!(origin.total(), 0);
}

#[tokio::test]
async fn content_length_with_transfer_encoding_cannot_smuggle_a_second_request() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), "").await;
    // The classic CL.TE attack: Content-Length covers the smuggled request,
    // chunked framing ends before it.
    let smuggled = "GET /api/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let request = format!(
        "POST /api/metrics HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
        5 + smuggled.len()
    );
    let reply = raw_request(proxy.addr, request.as_bytes()).await;
    assert!(reply.status < 500, "status {}", reply.status);
    assert_eq!(
        origin.count("/api/smuggled"),
        0,
        "the trailing bytes never became a request upstream"
    );
    assert!(origin.total() <= 1);
    if let Some(seen) = origin.last() {
        assert!(
            seen.body.is_empty(),
            "the upstream saw the chunked body, re-framed"
        );
        assert!(
            !seen.headers.contains_key("transfer-encoding")
                || !seen.headers.contains_key("content-length")
        );
    }
}

#[tokio::test]
async fn hop_by_hop_fields_are_never_stored() {
    let origin = Origin::start().await;
    origin.on(
        "/api/filter-options",
        support::Behaviour::new()
            .header("connection", "x-per-hop")
            .header("x-per-hop", "1")
            .header("keep-alive", "timeout=5"),
    );
    let proxy = spawn_proxy(&origin.url(), "").await;
    let client = Client::new();
    let url = proxy.url("/api/filter-options");
    let first = client.get(&url).await;
    let second = client.get(&url).await;
    assert_eq!(second.x_cache(), "HIT");
    for reply in [&first, &second] {
        assert!(!reply.headers.contains_key("x-per-hop"));
        assert!(!reply.headers.contains_key("keep-alive"));
    }
}

#[tokio::test]
async fn head_answers_never_carry_a_body() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), "").await;
    for _ in 0..2 {
        let reply = raw_request(
            proxy.addr,
            b"HEAD /api/filter-options HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(reply.status, 200);
        assert!(
            reply.body.is_empty(),
            "HEAD answered with {} body bytes",
            reply.body.len()
        );
    }
    assert_eq!(
        origin.count("/api/filter-options"),
        1,
        "the second HEAD is a hit"
    );
}
