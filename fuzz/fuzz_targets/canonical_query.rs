//! Canonical query of arbitrary text: never panics; idempotent; reads the
//! same to a backend as the query sent; insensitive to the order of
//! differently named parameters.

#![no_main]

use std::borrow::Cow;
use std::collections::BTreeMap;

use dashcache::cache::key::canonical_query;
use libfuzzer_sys::fuzz_target;

/// Each decoded name's values in order, as Starlette reads a query.
fn backend_reading(query: &str) -> BTreeMap<Cow<'_, str>, Vec<Cow<'_, str>>> {
    let mut reading: BTreeMap<_, Vec<_>> = BTreeMap::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        reading.entry(name).or_default().push(value);
    }
    reading
}

fn decoded_name(segment: &str) -> String {
    let name = segment.split('=').next().unwrap_or_default();
    form_urlencoded::parse(name.as_bytes())
        .next()
        .map(|(name, _)| name.into_owned())
        .unwrap_or_default()
}

fuzz_target!(|query: &str| {
    let canonical = canonical_query(query);
    assert_eq!(canonical_query(&canonical), canonical, "not idempotent");
    assert_eq!(backend_reading(&canonical), backend_reading(query));

    // Names in reverse order, each name's segments kept in theirs.
    let mut segments: Vec<&str> = query.split('&').collect();
    segments.sort_by_key(|segment| std::cmp::Reverse(decoded_name(segment)));
    assert_eq!(canonical_query(&segments.join("&")), canonical);
});
