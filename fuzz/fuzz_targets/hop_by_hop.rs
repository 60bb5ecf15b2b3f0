//! Header filtering of arbitrary field lines: never panics; hop-by-hop and
//! `Connection`-listed fields go, every other field stays with its values
//! in order; the upstream gets every earlier forwarding hop, then this one.
//!
//! Input: `name: value` lines (lines that are not a valid field are skipped).

#![no_main]

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use dashcache::headers::{is_hop_by_hop, prepare_upstream_request, remove_hop_by_hop};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Version};
use libfuzzer_sys::fuzz_target;

fn fields(input: &[u8]) -> Vec<(HeaderName, HeaderValue)> {
    input
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            let name = HeaderName::from_bytes(&line[..colon]).ok()?;
            let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).ok()?;
            Some((name, value))
        })
        .collect()
}

/// The names `Connection` lists, lowercased; elements that are not names
/// (obs-text, spaces inside) list nothing.
fn listed(fields: &[(HeaderName, HeaderValue)]) -> HashSet<HeaderName> {
    fields
        .iter()
        .filter(|(name, _)| name == "connection")
        .flat_map(|(_, value)| value.as_bytes().split(|&b| b == b','))
        .filter_map(|element| HeaderName::from_bytes(element.trim_ascii()).ok())
        .collect()
}

/// Every non-empty line of `name`, joined as one list.
fn chain(fields: &[(HeaderName, HeaderValue)], name: &str) -> Vec<u8> {
    let lines = fields.iter().filter(|(n, _)| n == name);
    let lines = lines
        .map(|(_, v)| v.as_bytes().trim_ascii())
        .filter(|v| !v.is_empty());
    lines.collect::<Vec<_>>().join(&b", "[..])
}

fuzz_target!(|input: &[u8]| {
    let fields = fields(input);
    let mut map = HeaderMap::new();
    for (name, value) in &fields {
        map.append(name.clone(), value.clone());
    }

    let mut filtered = map.clone();
    remove_hop_by_hop(&mut filtered);
    let listed = listed(&fields);
    for (name, _) in &fields {
        // The classic list itself is checked against RFC 9110 by tests/properties.rs.
        let gone = is_hop_by_hop(name) || listed.contains(name);
        let kept: Vec<_> = filtered.get_all(name).iter().collect();
        if gone {
            assert!(kept.is_empty(), "{name} was forwarded");
        } else {
            assert_eq!(
                kept,
                map.get_all(name).iter().collect::<Vec<_>>(),
                "{name} changed"
            );
        }
    }

    let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
    let mut upstream = map.clone();
    prepare_upstream_request(&mut upstream, client, "https", None, Version::HTTP_11);
    // Every earlier hop in order, then this one. A `Connection`-listed
    // `x-forwarded-for` or `via` is hop-by-hop, so its earlier hops go.
    for (name, hop) in [("x-forwarded-for", "192.0.2.7"), ("via", "1.1 dashcache")] {
        let mut expected = if listed.contains(&HeaderName::from_static(name)) {
            Vec::new()
        } else {
            chain(&fields, name)
        };
        if !expected.is_empty() {
            expected.extend_from_slice(b", ");
        }
        expected.extend_from_slice(hop.as_bytes());
        let values: Vec<_> = upstream
            .get_all(name)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(values, [expected.as_slice()], "{name}");
    }
});
