//! Route patterns and request paths of arbitrary text: parsing never
//! panics, a pattern matches exactly as documented, and the table picks the
//! route a linear scan picks first.
//!
//! Input: lines; the first is a request target, each other one a route's
//! path pattern.

#![no_main]

use dashcache::config::FileRoute;
use dashcache::routes::{PathPattern, Route, RouteTable};
use http::uri::PathAndQuery;
use http::Method;
use libfuzzer_sys::fuzz_target;

/// A route's methods, picked by the length of its line.
const METHODS: [Option<&[&str]>; 4] = [
    None,
    Some(&["GET"]),
    Some(&["post"]),
    Some(&["GET", "POST"]),
];

fn matches_as_documented(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => path == pattern,
    }
}

fuzz_target!(|input: &str| {
    let mut lines = input.split('\n');
    let target = lines.next().unwrap_or_default();
    let Ok(target) = target.parse::<PathAndQuery>() else {
        return;
    };
    let path = target.path();

    let mut routes = Vec::new();
    let mut scan = Vec::new();
    for (i, pattern) in lines.enumerate() {
        let valid = pattern.starts_with('/')
            && pattern
                .find('*')
                .is_none_or(|star| star == pattern.len() - 1);
        let parsed = PathPattern::parse(pattern);
        assert_eq!(parsed.is_ok(), valid, "{pattern:?}");
        let Ok(parsed) = parsed else {
            continue;
        };
        assert_eq!(parsed.matches(path), matches_as_documented(pattern, path));
        let methods = METHODS[pattern.len() % METHODS.len()];
        let raw: FileRoute = serde_json::from_value(serde_json::json!({
            "name": format!("r{i}"),
            "path": pattern,
            "methods": methods,
        }))
        .expect("a FileRoute");
        routes.push(Route::from_file(&raw).expect("a valid route"));
        scan.push((format!("r{i}"), pattern, methods));
    }

    let table = RouteTable::new(routes);
    for method in [Method::GET, Method::HEAD, Method::POST, Method::DELETE] {
        let expected = scan.iter().find(|(_, pattern, methods)| {
            let method_ok = methods.is_none_or(|list| {
                list.iter().any(|m| {
                    let m = m.to_ascii_uppercase();
                    m == method.as_str() || (method == Method::HEAD && m == "GET")
                })
            });
            method_ok && matches_as_documented(pattern, path)
        });
        let found = table
            .lookup(&method, path)
            .map(|route| route.name.to_string());
        assert_eq!(
            found,
            expected.map(|(name, _, _)| name.clone()),
            "{method} {path}"
        );
    }
});
