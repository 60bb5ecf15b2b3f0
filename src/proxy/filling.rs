//! Asking the upstream for a key: the leader's fill, and the background
//! fill behind a stale-while-revalidate answer. Both are the same detached
//! `fill::run`, joined through the key's flight, so a key never has two
//! upstream requests at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, Response};
use http_body_util::{Either, Full};
use tokio::sync::oneshot;
use tracing::info;

use super::{serves, ClientInfo, Keyed, Proxy, Served, Trace};
use crate::body::ProxyBody;
use crate::cache::flight::{FillGuard, Join};
use crate::cache::key_rules::KeyRules;
use crate::cache::replay::Replay;
use crate::cache::stale::{StaleReason, StaleWindows};
use crate::cache::{Entry, Lookup, RequestIdentity};
use crate::error::ProxyError;
use crate::fill::{self, FillPlan};
use crate::headers;
use crate::respond::{self, CacheStatus, CacheStatusField};
use crate::routes::Route;

impl Proxy {
    /// Starts the detached fill for `request` and answers from what it
    /// yields; `serve_stale` lets a failure fall back on a stale entry.
    pub(super) async fn lead(
        self: &Arc<Self>,
        guard: FillGuard,
        request: Keyed,
        route: Option<&Route>,
        route_name: &Arc<str>,
        client: ClientInfo,
        serve_stale: bool,
    ) -> (Response<ProxyBody>, CacheStatus) {
        let ask = request.ask.clone();
        let answer = self.start_fill(guard, request, route, route_name, client, serve_stale);
        match answer.await {
            Ok(answer) => fill::answer_leader(answer, &ask),
            Err(_) => (
                respond::error(&ProxyError::FillAbandoned),
                CacheStatus::Miss,
            ),
        }
    }

    /// Answers an entry inside its `stale-while-revalidate` window at once,
    /// and starts a background fill for it unless one is already running.
    pub(super) fn revalidate(
        self: &Arc<Self>,
        entry: &Entry,
        request: Keyed,
        route: Option<&Route>,
        route_name: Arc<str>,
        client: ClientInfo,
    ) -> Served {
        let now = Instant::now();
        let field = CacheStatusField::stale(entry, StaleReason::Revalidating, now);
        let response = respond::from_entry(entry, CacheStatus::Stale, field, &request.ask, now);
        if let Join::Leader(guard) = self.flights.join(request.key) {
            info!(route = &*route_name, key = %request.key.short(), "Cache STALE for {route_name} - revalidating in the background");
            // Nobody awaits the answer: the fill stores it for the next callers.
            drop(self.start_fill(guard, request, route, &route_name, client, true));
        }
        let trace = Trace {
            key: Some(entry.key),
            ..Trace::default()
        };
        Served::traced(response, CacheStatus::Stale, route_name, trace)
    }

    /// The TTL and stale windows a new entry of `route` gets (before the
    /// answer's own `Cache-Control` has its say).
    pub(crate) fn entry_policy(&self, route: Option<&Route>) -> (Duration, StaleWindows) {
        let cache = &self.config().cache;
        match route {
            Some(route) => (
                route.ttl.unwrap_or(cache.ttl),
                route.stale_windows(cache.stale),
            ),
            None => (cache.ttl, cache.stale),
        }
    }

    /// Spawns the detached fill for `request`; its answer for the leader
    /// arrives on the returned channel.
    fn start_fill(
        self: &Arc<Self>,
        guard: FillGuard,
        request: Keyed,
        route: Option<&Route>,
        route_name: &Arc<str>,
        client: ClientInfo,
        serve_stale: bool,
    ) -> oneshot::Receiver<fill::LeaderAnswer> {
        let shared = route.is_some_and(|r| r.shared);
        // A stored answer with a validator is revalidated rather than
        // fetched again (RFC 9111 §4.3.1). Only for GET (and HEAD, sent as
        // GET): a precondition on a POST read would be answered 412 by an
        // origin that honours it (RFC 9110 §13.1.2). Not on a solo fill
        // either, whose 304 could not vouch for the caller's credential.
        let revalidating = match self.lookup(&request.key, Instant::now()) {
            Lookup::Fresh(entry) | Lookup::Stale(entry)
                if serve_stale
                    && request.method == Method::GET
                    && serves(&entry, &request)
                    && headers::has_validator(&entry.headers) =>
            {
                Some(entry)
            }
            _ => None,
        };
        let Keyed {
            mut parts,
            body,
            method,
            base,
            credential,
            ..
        } = request;
        let (ttl, stale) = self.entry_policy(route);
        let plan = FillPlan {
            route: route_name.clone(),
            ttl,
            description: RequestIdentity::with_rules(
                &method,
                parts.uri.path(),
                parts.uri.query(),
                &body,
                route.map_or(KeyRules::none(), |r| &*r.key_rules),
            )
            .description_with(
                route_name,
                route.map_or(KeyRules::none(), |r| &*r.key_rules),
                &parts.headers,
            ),
            base,
            request_headers: parts.headers.clone(),
            vouch_for: credential.filter(|_| shared),
            stale,
            serve_stale,
            replay: Replay::of(
                &method,
                parts.uri.path_and_query().map_or("/", |pq| pq.as_str()),
                &body,
                &parts.headers,
                &self.config().cache.credential_headers,
            ),
            revalidating: revalidating.clone(),
        };
        headers::remove_conditionals(&mut parts.headers);
        if let Some(entry) = &revalidating {
            headers::add_validators(&mut parts.headers, &entry.headers);
        }
        let upstream_request =
            self.upstream_request(parts, Some(method), Either::Left(Full::new(body)), client);
        let (answer_tx, answer_rx) = oneshot::channel();
        tokio::spawn(fill::run(
            self.clone(),
            guard,
            upstream_request,
            plan,
            answer_tx,
        ));
        answer_rx
    }
}
