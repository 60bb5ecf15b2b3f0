//! The common case answered without the pipeline: a request whose answer
//! is fresh in memory.
//!
//! The pipeline (`dispatch` → `proxy` → `cached`) is a chain of async
//! steps whose future is KiBs; building it, moving it into place and
//! allocating its box cost a hit more than the lookup itself. So before
//! building it, [`Proxy::hit_at_once`] takes the same steps synchronously,
//! with the same helpers (`Proxy::keys`, `ClientFreshness`,
//! `Storage::lookup_now`), as far as they go without I/O. It answers only a
//! plain hit; at the first thing that needs more (a refusal, the admin API,
//! a shared route, a client that wants a fresh answer, Redis to ask,
//! anything but a fresh acceptable entry) it hands the request back
//! untouched and the pipeline takes it from the start. Nothing it does
//! before giving up has an effect: the volatile-field sampler sees the
//! request only once it is answered here.
//!
//! A request with a body (every POST) cannot be keyed before its body is
//! read, so [`Proxy::hit_after_body`] does the same in a small future that
//! reads the body first (within `max_body_bytes` and the body deadlines, as
//! the pipeline would). When that finds no hit, the request enters the
//! pipeline with its body already read (`request_body.rs`); when the body
//! cannot be read, it gets the pipeline's answer for that (413, 408, 400).

use std::sync::Arc;
use std::time::Instant;

use http::{request, Request};
use hyper::body::Incoming;

use super::{
    check_declared_length, hit, is_cached, read_declared_body, ClientFreshness, ClientInfo, Proxy,
    Served,
};
use crate::admin;
use crate::admission;
use crate::cache::{CacheKey, Entry, Lookup};
use crate::config::Config;
use crate::request_body::ClientBody;
use crate::respond::Ask;
use crate::routes::Route;

/// A fresh entry in memory for a request, and what answering it takes.
pub(super) struct Found {
    pub entry: Arc<Entry>,
    pub ask: Ask,
    /// The name the request is counted and logged under.
    pub route: Arc<str>,
    pub now: Instant,
}

/// What [`Proxy::hit_after_body`] made of a request.
pub(super) enum AfterBody {
    /// A fresh hit in memory, or the refusal of a body that could not be
    /// read (with the error for the access line).
    Answered(Served, Option<String>),
    /// For the pipeline, with its body as far as it was read.
    Pipeline(Request<ClientBody>),
}

impl Proxy {
    /// A fresh hit in memory for `request`, or the request back.
    // The request goes back by value on purpose: it is moved in and out,
    // where a box would cost an allocation per request.
    #[allow(clippy::result_large_err)]
    pub(super) fn hit_at_once<B: http_body::Body>(
        &self,
        request: Request<B>,
        client: ClientInfo,
    ) -> Result<Served, Request<B>> {
        let found = self.find_at_once(request, &[], client)?;
        Ok(hit(&found.entry, &found.ask, found.route, found.now))
    }

    /// The fresh entry in memory that answers `request`, whose body (read
    /// already, the express lane's) is `read_body` (seen by the
    /// volatile-field sampler), or the request back untouched.
    #[allow(clippy::result_large_err)]
    pub(super) fn find_at_once<B: http_body::Body>(
        &self,
        request: Request<B>,
        read_body: &[u8],
        client: ClientInfo,
    ) -> Result<Found, Request<B>> {
        if !http_body::Body::is_end_stream(request.body()) {
            return Err(request);
        }
        let (parts, body) = request.into_parts();
        let settings = self.live.peek();
        let config: &Config = &settings;
        let found = self
            .plain_hit_route(&parts, client, config)
            .and_then(|(route, freshness)| {
                let keys = self.keys(&parts, read_body, config, false, route);
                let now = Instant::now();
                let entry = self.fresh_in_memory(&keys.key, &freshness, now)?;
                Some((route, keys, entry, now))
            });
        let Some((route, keys, entry, now)) = found else {
            return Err(Request::from_parts(parts, body));
        };
        let route_name = self.route_name(route);
        self.observe(&route_name, route, &keys.method, &parts.uri, read_body);
        Ok(Found {
            entry,
            ask: keys.ask,
            route: route_name,
            now,
        })
    }

    /// [`Proxy::hit_at_once`] for a request with a body: the body read
    /// first, then the same steps. A request without one, or that the
    /// pipeline must see for another reason, goes on untouched.
    pub(super) async fn hit_after_body(
        self: &Arc<Self>,
        request: Request<Incoming>,
        client: ClientInfo,
    ) -> AfterBody {
        let (parts, body) = request.into_parts();
        let body = ClientBody::Arriving(body);
        if http_body::Body::is_end_stream(&body) {
            return AfterBody::Pipeline(Request::from_parts(parts, body));
        }
        let config = self.config();
        let Some((route, freshness)) = self.plain_hit_route(&parts, client, &config) else {
            return AfterBody::Pipeline(Request::from_parts(parts, body));
        };
        let body = self.body_deadline(&parts, body, &config, client);
        // `plain_hit_route` checked its declared length.
        let body = match read_declared_body(body, config.max_body_bytes).await {
            Ok(body) => body,
            Err(err) => {
                let served = Served::rejected(&err, self.route_name(route));
                return AfterBody::Answered(served, Some(err.message()));
            }
        };
        let keys = self.keys(&parts, &body, &config, false, route);
        let now = Instant::now();
        let Some(entry) = self.fresh_in_memory(&keys.key, &freshness, now) else {
            return AfterBody::Pipeline(Request::from_parts(parts, ClientBody::read(body)));
        };
        let route_name = self.route_name(route);
        self.observe(&route_name, route, &keys.method, &parts.uri, &body);
        AfterBody::Answered(hit(&entry, &keys.ask, route_name, now), None)
    }

    /// The route of a request that only its key and the store stand
    /// between and a plain hit, with the client's freshness terms; `None`
    /// when the pipeline must see it (refused, admin API, not cached, a
    /// shared route, a declared body too large, a client that wants a
    /// fresh answer).
    fn plain_hit_route<'c>(
        &self,
        head: &request::Parts,
        client: ClientInfo,
        config: &'c Config,
    ) -> Option<(Option<&'c Route>, ClientFreshness)> {
        let path = head.uri.path();
        if admission::head_refusal(head).is_some()
            || !client.surface.answers(path)
            || admin::is_admin_path(path)
        {
            return None;
        }
        let route = config.routes.lookup(&head.method, path);
        // A shared route checks the caller's credential first: the pipeline's.
        let cacheable = is_cached(config, &head.method, route) && route.is_none_or(|r| !r.shared);
        if !cacheable || check_declared_length(&head.headers, config.max_body_bytes).is_err() {
            return None;
        }
        let freshness = ClientFreshness::of(config, &head.headers);
        (!freshness.wants_fresh).then_some((route, freshness))
    }

    /// The entry under `key` when memory alone can tell it is fresh, not
    /// invalidated, and acceptable to the client.
    fn fresh_in_memory(
        &self,
        key: &CacheKey,
        freshness: &ClientFreshness,
        now: Instant,
    ) -> Option<Arc<Entry>> {
        match self.store.lookup_now(key, now) {
            Some(Lookup::Fresh(entry))
                if !self.invalidated(&entry) && freshness.accepts(&entry, now) =>
            {
                Some(entry)
            }
            _ => None,
        }
    }

    /// The name a route's requests are counted and logged under.
    pub(super) fn route_name(&self, route: Option<&Route>) -> Arc<str> {
        route.map_or_else(|| self.default_route.clone(), |r| r.name.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use http::{Method, StatusCode};
    use http_body_util::{Empty, Full};

    use super::*;
    use crate::cache::Entry;
    use crate::cache::StoredHeaders;
    use crate::respond::CacheStatus;
    use crate::server::Surface;

    const CLIENT: ClientInfo = ClientInfo {
        addr: std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1),
        scheme: "http",
        surface: Surface::Combined,
    };

    fn proxy(toml: &str) -> Proxy {
        let file = crate::config::FileConfig::parse(toml, std::path::Path::new("test.toml"))
            .expect("test config parses");
        let cli = crate::Cli {
            upstream: Some("http://127.0.0.1:9".to_owned()),
            ..Default::default()
        };
        Proxy::new(Config::resolve(&cli, file, None).expect("valid")).expect("proxy")
    }

    fn request<B>(method: Method, path: &str, body: B) -> Request<B> {
        Request::builder()
            .method(method)
            .uri(path)
            .header("host", "proxy")
            .body(body)
            .unwrap()
    }

    /// Stores a fresh answer under the key `request` maps to.
    async fn store_for<B>(proxy: &Proxy, request: &Request<B>, body: &'static str) {
        let settings = proxy.live.peek();
        let route = settings
            .routes
            .lookup(request.method(), request.uri().path());
        let (parts, ()) = Request::builder()
            .method(request.method())
            .uri(request.uri())
            .body(())
            .unwrap()
            .into_parts();
        let mut parts = parts;
        parts.headers = request.headers().clone();
        let keys = proxy.keys(&parts, &[], &settings, false, route);
        let entry = Entry::for_test(
            keys.key,
            StatusCode::OK,
            StoredHeaders::default(),
            Bytes::from_static(body.as_bytes()),
            Instant::now(),
        );
        let generation = proxy.store.generation();
        proxy
            .store
            .insert(Arc::new(entry), generation)
            .await
            .expect("stored");
    }

    #[tokio::test]
    async fn a_fresh_hit_in_memory_is_answered_at_once() {
        let proxy = proxy("");
        let get = request(Method::GET, "/api/metrics?org=1", Empty::<Bytes>::new());
        store_for(&proxy, &get, "{\"n\":1}").await;
        let Ok(served) = proxy.hit_at_once(get, CLIENT) else {
            panic!("a hit");
        };
        assert_eq!(served.cache, CacheStatus::Hit);
        assert_eq!(served.trace.saved, Some(Duration::from_millis(2500)));
        assert_eq!(served.response.headers()["x-cache"], "HIT");
        // HEAD is answered from the GET entry, without its body.
        let head = request(Method::HEAD, "/api/metrics?org=1", Empty::<Bytes>::new());
        let Ok(served) = proxy.hit_at_once(head, CLIENT) else {
            panic!("a hit");
        };
        assert!(http_body::Body::is_end_stream(served.response.body()));
    }

    #[tokio::test]
    async fn anything_but_a_plain_fresh_hit_goes_back_to_the_pipeline_untouched() {
        let proxy = proxy("[cache]\nhonor_client_no_cache = true\n");
        let stored = request(Method::GET, "/api/metrics?org=1", Empty::<Bytes>::new());
        store_for(&proxy, &stored, "{}").await;
        assert!(
            proxy.hit_at_once(stored, CLIENT).is_ok(),
            "the stored one hits"
        );

        let mut no_cache = request(Method::GET, "/api/metrics?org=1", Empty::<Bytes>::new());
        no_cache
            .headers_mut()
            .insert("cache-control", http::HeaderValue::from_static("no-cache"));
        let mut bad_host = request(Method::GET, "/api/metrics?org=1", Empty::<Bytes>::new());
        bad_host
            .headers_mut()
            .append("host", http::HeaderValue::from_static("other"));
        let declined = [
            (
                "not stored",
                request(Method::GET, "/api/metrics?org=2", Empty::new()),
            ),
            (
                "admin API",
                request(Method::GET, "/api/cache/stats", Empty::new()),
            ),
            ("client no-cache", no_cache),
            ("refused (two Host fields)", bad_host),
            (
                "not cacheable",
                request(Method::DELETE, "/api/metrics?org=1", Empty::new()),
            ),
        ];
        for (case, request) in declined {
            let before = (
                request.method().clone(),
                request.uri().clone(),
                request.headers().clone(),
            );
            let back = proxy.hit_at_once(request, CLIENT).err().expect(case);
            assert_eq!(
                (
                    back.method().clone(),
                    back.uri().clone(),
                    back.headers().clone()
                ),
                before,
                "{case}: handed back as it came"
            );
        }
        // A body to read: the pipeline reads it first.
        let post = request(
            Method::POST,
            "/api/metrics?org=1",
            Full::new(Bytes::from_static(b"{}")),
        );
        assert!(proxy.hit_at_once(post, CLIENT).is_err());
    }
}
