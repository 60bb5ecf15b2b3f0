//! Route table: which dashboard function a request belongs to, and its policy.
//!
//! Routes come from `[[route]]` entries in proxy.toml and are tried in file
//! order; the first whose path and method match wins. A route gives the
//! request its name (the seed's function names, `get_metrics`, …), which
//! appears in logs and in the entry description that `invalidate` matches,
//! and may override the TTL or turn caching off. Unmatched requests use the
//! default policy under the name [`DEFAULT_ROUTE`].

use std::sync::Arc;
use std::time::Duration;

use http::Method;

use crate::cache::key_rules::KeyRules;
use crate::cache::stale::StaleWindows;
use crate::config::{FileDuration, FileRoute};

/// Name given to requests that match no route.
pub const DEFAULT_ROUTE: &str = "default";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    /// The path must equal this string.
    Exact(String),
    /// The path must start with this string (written `prefix*`).
    Prefix(String),
}

impl PathPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!("path {text:?} must start with '/'"));
        }
        match text.strip_suffix('*') {
            Some(prefix) if prefix.contains('*') => {
                Err(format!("path {text:?} may hold '*' only at its end"))
            }
            Some(prefix) => Ok(Self::Prefix(prefix.to_owned())),
            None if text.contains('*') => {
                Err(format!("path {text:?} may hold '*' only at its end"))
            }
            None => Ok(Self::Exact(text.to_owned())),
        }
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(exact) => path == exact,
            Self::Prefix(prefix) => path.starts_with(prefix.as_str()),
        }
    }

    fn to_text(&self) -> String {
        match self {
            Self::Exact(exact) => exact.clone(),
            Self::Prefix(prefix) => format!("{prefix}*"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: Arc<str>,
    pub path: PathPattern,
    /// `None` matches every method.
    pub methods: Option<Vec<Method>>,
    /// Overrides the default TTL for this route's entries.
    pub ttl: Option<Duration>,
    /// `false` sends every request of this route straight upstream.
    pub cache: bool,
    /// One entry for every caller (credentials checked, not keyed); see
    /// `cache::credentials`.
    pub shared: bool,
    /// Overrides `[cache] stale_if_error` for this route's entries.
    pub stale_if_error: Option<Duration>,
    /// Overrides `[cache] stale_while_revalidate` for this route's entries.
    pub stale_while_revalidate: Option<Duration>,
    /// What the key leaves out or adds (`key_ignore_fields`, `key_unordered`,
    /// `key_ignore_query`, `key_headers`); shared, so a request borrows it.
    pub key_rules: Arc<KeyRules>,
}

impl Route {
    pub fn from_file(raw: &FileRoute) -> Result<Self, String> {
        if raw.name.trim().is_empty() {
            return Err("name must not be empty".into());
        }
        let methods = raw
            .methods
            .as_ref()
            .map(|list| {
                if list.is_empty() {
                    return Err("methods must list at least one method (or be left out)".to_owned());
                }
                list.iter()
                    .map(|m| {
                        Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                            .map_err(|_| format!("method {m:?} is not an HTTP method"))
                    })
                    .collect()
            })
            .transpose()?;
        if raw.ttl.is_some_and(|t| t.0.is_zero()) {
            return Err(
                "ttl must be greater than zero (use cache = false to turn caching off)".into(),
            );
        }
        let list = |field: &Option<Vec<String>>| field.clone().unwrap_or_default();
        let key_rules = KeyRules::new(
            &list(&raw.key_ignore_fields),
            &list(&raw.key_unordered),
            &list(&raw.key_ignore_query),
            &list(&raw.key_headers),
        )
        .map_err(|err| format!("route {:?}: {err}", raw.name))?;
        Ok(Self {
            name: raw.name.as_str().into(),
            path: PathPattern::parse(&raw.path)?,
            methods,
            ttl: raw.ttl.map(|t| t.0),
            cache: raw.cache.unwrap_or(true),
            shared: raw.shared.unwrap_or(false),
            stale_if_error: raw.stale_if_error.map(|d| d.0),
            stale_while_revalidate: raw.stale_while_revalidate.map(|d| d.0),
            key_rules: Arc::new(key_rules),
        })
    }

    pub fn to_file(&self) -> FileRoute {
        FileRoute {
            name: self.name.to_string(),
            path: self.path.to_text(),
            methods: self
                .methods
                .as_ref()
                .map(|m| m.iter().map(|m| m.as_str().to_owned()).collect()),
            ttl: self.ttl.map(FileDuration),
            cache: (!self.cache).then_some(false),
            shared: self.shared.then_some(true),
            stale_if_error: self.stale_if_error.map(FileDuration),
            stale_while_revalidate: self.stale_while_revalidate.map(FileDuration),
            key_ignore_fields: listed(self.key_rules.ignore_field_texts()),
            key_unordered: listed(self.key_rules.unordered_texts()),
            key_ignore_query: listed(self.key_rules.ignore_query_texts()),
            key_headers: listed(self.key_rules.header_texts()),
        }
    }

    /// This route's stale windows: its own, else `defaults`.
    pub fn stale_windows(&self, defaults: StaleWindows) -> StaleWindows {
        StaleWindows {
            if_error: self.stale_if_error.unwrap_or(defaults.if_error),
            while_revalidate: self
                .stale_while_revalidate
                .unwrap_or(defaults.while_revalidate),
            ..defaults
        }
    }

    /// HEAD is answered from GET entries, so a GET route also matches HEAD.
    fn allows(&self, method: &Method) -> bool {
        match &self.methods {
            None => true,
            Some(list) => {
                list.contains(method) || (method == Method::HEAD && list.contains(&Method::GET))
            }
        }
    }
}

/// A list for proxy.toml: left out when empty.
fn listed(items: Vec<String>) -> Option<Vec<String>> {
    (!items.is_empty()).then_some(items)
}

/// The routes in file order; cheap to clone (shared slice).
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Arc<[Route]>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        Self {
            routes: routes.into(),
        }
    }

    /// The first route matching `method` and `path`.
    pub fn lookup(&self, method: &Method, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.allows(method) && r.path.matches(path))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, path: &str, methods: &[&str]) -> Route {
        Route::from_file(&FileRoute {
            name: name.into(),
            path: path.into(),
            methods: (!methods.is_empty()).then(|| methods.iter().map(|m| m.to_string()).collect()),
            ..FileRoute::default()
        })
        .unwrap()
    }

    #[test]
    fn exact_paths_match_only_themselves() {
        let p = PathPattern::parse("/api/metrics").unwrap();
        assert!(p.matches("/api/metrics"));
        assert!(!p.matches("/api/metrics/x"));
        assert!(!p.matches("/api/metric"));
    }

    #[test]
    fn star_suffix_matches_a_prefix() {
        let p = PathPattern::parse("/api/reports/*").unwrap();
        assert!(p.matches("/api/reports/daily"));
        assert!(!p.matches("/api/report"));
    }

    #[test]
    fn stars_elsewhere_and_relative_paths_are_rejected() {
        assert!(PathPattern::parse("/api/*/x").is_err());
        assert!(PathPattern::parse("api/x").is_err());
    }

    #[test]
    fn the_first_matching_route_wins() {
        let table = RouteTable::new(vec![
            route("get_metrics", "/api/metrics", &["POST"]),
            route("catch_all", "/api/*", &[]),
        ]);
        assert_eq!(
            &*table.lookup(&Method::POST, "/api/metrics").unwrap().name,
            "get_metrics"
        );
        assert_eq!(
            &*table.lookup(&Method::GET, "/api/metrics").unwrap().name,
            "catch_all"
        );
        assert!(table.lookup(&Method::GET, "/health").is_none());
    }

    #[test]
    fn a_get_route_also_answers_head() {
        let table = RouteTable::new(vec![route(
            "get_filter_options",
            "/api/filter-options",
            &["GET"],
        )]);
        assert!(table.lookup(&Method::HEAD, "/api/filter-options").is_some());
        assert!(table.lookup(&Method::POST, "/api/filter-options").is_none());
    }

    #[test]
    fn key_rules_are_read_printed_back_and_refused_with_route_and_field() {
        let raw = FileRoute {
            name: "get_metrics".into(),
            path: "/api/metrics".into(),
            key_ignore_fields: Some(vec!["requestId".into(), "meta.sentAt".into()]),
            key_unordered: Some(vec!["orgs".into()]),
            key_ignore_query: Some(vec!["utm_*".into()]),
            key_headers: Some(vec!["X-Tenant".into()]),
            ..FileRoute::default()
        };
        let route = Route::from_file(&raw).unwrap();
        let printed = route.to_file();
        assert_eq!(printed.key_ignore_fields, raw.key_ignore_fields);
        assert_eq!(printed.key_unordered, raw.key_unordered);
        assert_eq!(printed.key_ignore_query, raw.key_ignore_query);
        assert_eq!(printed.key_headers, Some(vec!["x-tenant".into()]));
        let bad = FileRoute {
            key_unordered: Some(vec!["filters..orgs".into()]),
            ..raw
        };
        let err = Route::from_file(&bad).unwrap_err();
        assert!(err.contains("\"get_metrics\""), "{err}");
        assert!(err.contains("key_unordered"), "{err}");
        assert!(err.contains("filters..orgs"), "{err}");
    }

    #[test]
    fn a_route_without_key_settings_prints_none() {
        let printed = route("x", "/x", &[]).to_file();
        assert_eq!(printed.key_ignore_fields, None);
        assert_eq!(printed.key_headers, None);
        assert!(route("x", "/x", &[]).key_rules.is_empty());
    }

    #[test]
    fn methods_are_case_insensitive_and_validated() {
        assert!(Route::from_file(&FileRoute {
            name: "x".into(),
            path: "/x".into(),
            methods: Some(vec!["post".into()]),
            ..FileRoute::default()
        })
        .is_ok());
        assert!(Route::from_file(&FileRoute {
            name: "x".into(),
            path: "/x".into(),
            methods: Some(vec!["PO ST".into()]),
            ..FileRoute::default()
        })
        .is_err());
    }
}
