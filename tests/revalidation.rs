//! Stale-while-revalidate: inside the window an expired entry is answered at
//! once (`X-Cache: STALE`, `detail=revalidating`) while exactly one
//! background request refreshes it, however many callers ask meanwhile.

mod support;

use std::time::Duration;

use support::{spawn_proxy, Behaviour, Client, Gate, Origin};

const BODY: &str = r#"{"org":"Vale"}"#;

fn serial(reply: &support::Reply) -> u64 {
    reply.header("x-origin-serial").parse().expect("serial")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_inside_the_window_answers_at_once_while_one_fill_refreshes_it() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(
        &origin.url(),
        "[cache]\nttl = \"200ms\"\nstale_while_revalidate = \"1h\"\n",
    )
    .await;
    let client = Client::new();
    let first = client.post(&proxy.url("/api/metrics"), BODY).await;
    assert_eq!(first.x_cache(), "MISS");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The refresh is held at the origin until the test opens the gate, so
    // every answer below is given while it is still running.
    let gate = Gate::new();
    origin.on("/api/metrics", Behaviour::new().gate(&gate));
    let mut stale = Vec::new();
    for _ in 0..5 {
        stale.push(client.post(&proxy.url("/api/metrics"), BODY).await);
    }
    for reply in &stale {
        assert_eq!(reply.status, 200);
        assert_eq!(reply.x_cache(), "STALE");
        assert_eq!(serial(reply), serial(&first), "the old answer");
        let cache_status = reply.header("cache-status");
        assert!(
            cache_status.starts_with("dashcache; fwd=stale; ttl=-")
                && cache_status.ends_with("detail=revalidating"),
            "{cache_status}"
        );
    }
    origin.wait_for_total(2).await;
    assert_eq!(origin.count("/api/metrics"), 2, "one refresh for five hits");

    gate.open();
    support::eventually("the refresh to be stored", || {
        proxy.proxy.store.census(std::time::Instant::now()).fresh == 1
    })
    .await;
    let refreshed = client.post(&proxy.url("/api/metrics"), BODY).await;
    assert_eq!(refreshed.x_cache(), "HIT");
    assert_eq!(serial(&refreshed), 2, "the refreshed answer");
    let stats = proxy.stats().await;
    assert_eq!(stats["stale"], 5, "{stats}");
    assert_eq!(stats["upstream_requests"], 2, "{stats}");
}

#[tokio::test]
async fn a_route_opts_in_and_outside_the_window_callers_wait() {
    let origin = Origin::start().await;
    let proxy = spawn_proxy(
        &origin.url(),
        r#"
[cache]
ttl = "200ms"

[[route]]
name = "get_metrics"
path = "/api/metrics"
stale_while_revalidate = "1h"

[[route]]
name = "get_actions"
path = "/api/actions"
"#,
    )
    .await;
    let client = Client::new();
    client.post(&proxy.url("/api/metrics"), BODY).await;
    client.post(&proxy.url("/api/actions"), BODY).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let opted_in = client.post(&proxy.url("/api/metrics"), BODY).await;
    assert_eq!(opted_in.x_cache(), "STALE");
    let default = client.post(&proxy.url("/api/actions"), BODY).await;
    assert_eq!(default.x_cache(), "MISS", "the window is off by default");
    assert_eq!(serial(&default), 4, "asked the upstream and waited");
}
