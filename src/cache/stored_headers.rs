//! An answer's header fields as an entry keeps them.
//!
//! A `HeaderMap` is made for building and looking up: per field a bucket of
//! 104 bytes (name, value, hash, links), a quarter of its slots left empty
//! for inserts, an index, and about 100 bytes of its own inside the entry. A
//! stored answer is never edited, and a hit reads its fields in order, so an
//! entry keeps them as one boxed slice of (name, value) pairs, 72 bytes
//! each, in the order the map gave them. For the four to six fields of a
//! typical answer that is one block of 300–450 bytes where the map spent
//! 700–900 in two, and at a million entries, five to seven fewer cache
//! lines for a hit to bring in from memory. Looking a field up walks the
//! slice: the lookups (validators, a refill's merge) are off the common hit
//! path, over a handful of fields.

use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue};

/// Header fields in order, a name beside each value (a name repeats when
/// it has several values, next to each other, as a `HeaderMap` iterates).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StoredHeaders {
    fields: Box<[(HeaderName, HeaderValue)]>,
}

impl StoredHeaders {
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&HeaderName, &HeaderValue)> {
        self.fields.iter().map(|(name, value)| (name, value))
    }

    pub fn keys(&self) -> impl Iterator<Item = &HeaderName> {
        self.fields.iter().map(|(name, _)| name)
    }

    pub fn values(&self) -> impl Iterator<Item = &HeaderValue> {
        self.fields.iter().map(|(_, value)| value)
    }

    /// Fields, counting each value of a repeated name.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The first value of `name` (lowercase, as header names are kept).
    pub fn get(&self, name: impl AsRef<str>) -> Option<&HeaderValue> {
        self.get_all(name).next()
    }

    /// Every value of `name`, in order.
    pub fn get_all<N: AsRef<str>>(&self, name: N) -> impl Iterator<Item = &HeaderValue> {
        self.fields
            .iter()
            .filter(move |(field, _)| field.as_str() == name.as_ref())
            .map(|(_, value)| value)
    }

    pub fn contains_key(&self, name: impl AsRef<str>) -> bool {
        self.get(name).is_some()
    }

    /// The fields as a map, to edit them (a refill's merge).
    pub fn to_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.fields.len());
        for (name, value) in self.iter() {
            map.append(name.clone(), value.clone());
        }
        map
    }

    /// Bytes of the block that holds the pairs (the names' and values'
    /// own bytes are counted by whoever holds them).
    pub fn pairs_size(&self) -> u64 {
        std::mem::size_of_val(&*self.fields) as u64
    }
}

impl FromIterator<(HeaderName, HeaderValue)> for StoredHeaders {
    fn from_iter<I: IntoIterator<Item = (HeaderName, HeaderValue)>>(fields: I) -> Self {
        Self {
            fields: fields.into_iter().collect(),
        }
    }
}

impl From<&HeaderMap> for StoredHeaders {
    fn from(map: &HeaderMap) -> Self {
        map.iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()
    }
}

impl From<HeaderMap> for StoredHeaders {
    fn from(map: HeaderMap) -> Self {
        Self::from(&map)
    }
}

impl<'a> IntoIterator for &'a StoredHeaders {
    type Item = (&'a HeaderName, &'a HeaderValue);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (HeaderName, HeaderValue)>,
        fn(&'a (HeaderName, HeaderValue)) -> (&'a HeaderName, &'a HeaderValue),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.fields.iter().map(|(name, value)| (name, value))
    }
}

impl fmt::Debug for StoredHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::map_of as map;

    #[test]
    fn fields_keep_the_maps_order_and_every_value() {
        let original = map(&[
            ("content-type", "application/json"),
            ("vary", "accept"),
            ("x-origin-key", "k1"),
            ("vary", "x-tenant"),
        ]);
        let stored = StoredHeaders::from(&original);
        assert_eq!(stored.len(), 4);
        let in_order: Vec<_> = stored
            .iter()
            .map(|(name, value)| (name.as_str(), value.to_str().unwrap()))
            .collect();
        let from_map: Vec<_> = original
            .iter()
            .map(|(name, value)| (name.as_str(), value.to_str().unwrap()))
            .collect();
        assert_eq!(in_order, from_map);
        assert_eq!(stored.to_map(), original);
    }

    #[test]
    fn lookups_find_the_first_value_or_all_of_them() {
        let stored = StoredHeaders::from(map(&[
            ("etag", "\"v1\""),
            ("vary", "accept"),
            ("vary", "x-tenant"),
        ]));
        assert_eq!(stored.get(http::header::ETAG).unwrap(), "\"v1\"");
        assert_eq!(stored.get("vary").unwrap(), "accept");
        assert_eq!(stored.get_all("vary").count(), 2);
        assert!(stored.contains_key("etag"));
        assert!(!stored.contains_key("last-modified"));
        assert_eq!(stored.get_all("last-modified").count(), 0);
    }

    #[test]
    fn the_pairs_take_one_block_smaller_than_the_maps_buckets() {
        let stored = StoredHeaders::from(map(&[
            ("content-type", "application/json"),
            ("content-length", "100"),
            ("date", "Mon, 07 Dec 2026 12:00:00 GMT"),
            ("x-origin-key", "k1"),
        ]));
        let pair = std::mem::size_of::<(HeaderName, HeaderValue)>() as u64;
        assert_eq!(stored.pairs_size(), 4 * pair);
        assert!(pair <= 72, "{pair} bytes a field");
        assert!(StoredHeaders::default().pairs_size() == 0);
    }
}
