//! Bounds: the store never holds more than `maxsize` entries or `max_bytes`
//! bytes, and answers above `max_object_bytes` stream through complete but
//! unstored.

mod support;

use support::{spawn_proxy, Behaviour, Client, Origin, RawOrigin, Step};
use tokio::task::JoinSet;

#[tokio::test]
async fn the_entry_count_never_passes_maxsize() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), "[cache]\nmaxsize = 50\n").await;
    let client = Client::new();

    for batch in 0..25 {
        let mut requests = JoinSet::new();
        for i in 0..20 {
            let client = client.clone();
            let url = proxy.url(&format!("/api/metrics?n={}", batch * 20 + i));
            requests.spawn(async move { client.get(&url).await });
        }
        while let Some(reply) = requests.join_next().await {
            assert_eq!(reply.unwrap().x_cache(), "MISS");
        }
        let len = proxy.proxy.store.len();
        assert!(len <= 50, "store holds {len} entries after batch {batch}");
        let stats = proxy.stats().await;
        assert!(stats["size"].as_u64().unwrap() <= 50, "{stats}");
    }
    assert_eq!(origin.total(), 500);
    let stats = proxy.stats().await;
    assert_eq!(stats["maxsize"], 50);
    assert!(stats["evictions"].as_u64().unwrap() > 0, "{stats}");
    assert!(
        stats["size"].as_u64().unwrap() > 0,
        "the store still caches: {stats}"
    );
}

#[tokio::test]
async fn the_bytes_never_pass_max_bytes() {
    let origin = Origin::start().await;
    origin.on("/api/report", Behaviour::new().body(vec![b'r'; 8 * 1024]));
    let proxy = spawn_proxy(
        &origin.url(),
        "[cache]\nmax_bytes = \"64KiB\"\nmax_object_bytes = \"16KiB\"\n",
    )
    .await;
    let client = Client::new();

    for i in 0..40 {
        let reply = client
            .get(&proxy.url(&format!("/api/report?page={i}")))
            .await;
        assert_eq!(reply.body.len(), 8 * 1024);
        let stats = proxy.stats().await;
        let bytes = stats["bytes"].as_u64().unwrap();
        assert_eq!(stats["max_bytes"], 64 * 1024);
        assert!(
            bytes <= 64 * 1024,
            "store holds {bytes} bytes after {i} answers: {stats}"
        );
        assert!(proxy.proxy.store.bytes() <= 64 * 1024);
    }
    let stats = proxy.stats().await;
    assert!(
        stats["size"].as_u64().unwrap() >= 1,
        "8 KiB answers are still cached: {stats}"
    );
    assert!(stats["evictions"].as_u64().unwrap() > 0, "{stats}");
}

#[tokio::test]
async fn an_answer_above_max_object_bytes_is_delivered_whole_but_not_stored() {
    let origin = Origin::start().await;
    let big: Vec<u8> = (0..100 * 1024).map(|i| (i % 251) as u8).collect();
    origin.on("/api/export", Behaviour::new().body(big.clone()));
    let proxy = spawn_proxy(&origin.url(), "[cache]\nmax_object_bytes = \"16KiB\"\n").await;
    let client = Client::new();

    for round in 1..=2 {
        let reply = client.get(&proxy.url("/api/export")).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.x_cache(), "MISS");
        assert_eq!(reply.body.len(), big.len());
        assert!(
            reply.body.as_ref() == big.as_slice(),
            "the body is the origin's, byte for byte"
        );
        assert_eq!(
            origin.count("/api/export"),
            round,
            "a large answer is never stored"
        );
    }
    assert_eq!(proxy.proxy.store.len(), 0);
}

#[tokio::test]
async fn a_chunked_answer_above_max_object_bytes_is_delivered_whole_but_not_stored() {
    let mut answer =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    let mut expected = Vec::new();
    for i in 0..25u8 {
        let chunk = vec![b'a' + i; 4096];
        answer.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        answer.extend_from_slice(&chunk);
        answer.extend_from_slice(b"\r\n");
        expected.extend_from_slice(&chunk);
    }
    answer.extend_from_slice(b"0\r\n\r\n");
    let origin = RawOrigin::start(vec![Step::Write(answer)]).await;
    let proxy = spawn_proxy(&origin.url(), "[cache]\nmax_object_bytes = \"16KiB\"\n").await;
    let client = Client::new();

    for round in 1..=2 {
        let reply = client.get(&proxy.url("/api/export")).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body.len(), expected.len(), "round {round}");
        assert!(
            reply.body.as_ref() == expected.as_slice(),
            "the body is the origin's, in order"
        );
        assert_eq!(origin.served(), round, "a large answer is never stored");
    }
    assert_eq!(proxy.proxy.store.len(), 0);
}
