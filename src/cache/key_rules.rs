//! A route's key rules: what is not part of an answer's identity
//! (`key_ignore_fields`, `key_unordered`, `key_ignore_query`) and what is,
//! beyond method, target and body (`key_headers`).
//!
//! The rules are parsed once, when the configuration is loaded, into
//! [`KeyRules`]; `cache::key` applies them while it writes the canonical
//! body and query, and [`KeyRules::header_identity`] gives the bytes the
//! named headers add to the key. Every rule either merges requests the
//! operator declared alike or splits them further; with no rules the key is
//! exactly the one dashcache computed before rules existed.
//!
//! Field paths are dotted (`meta.sentAt`); a segment `*` matches any one
//! object member, and a `[]` suffix (`items[].id`, or `[]` alone for a body
//! that is an array) steps into every element of an array.

use std::fmt;

use http::header::HeaderName;
use http::HeaderMap;
use md5::{Digest, Md5};

/// One step of a [`FieldPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// The object member with this name.
    Member(String),
    /// Any one object member (`*`).
    AnyMember,
    /// Every element of an array (`[]`).
    Element,
}

impl Segment {
    /// True when this segment matches the object member `name`.
    pub fn matches_member(&self, name: &str) -> bool {
        match self {
            Self::Member(member) => member == name,
            Self::AnyMember => true,
            Self::Element => false,
        }
    }
}

/// A parsed field path such as `filters.locations` or `items[].id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    text: String,
    segments: Vec<Segment>,
}

impl FieldPath {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("a field path must not be empty".into());
        }
        let mut segments = Vec::new();
        for piece in text.split('.') {
            let mut name = piece;
            let mut elements = 0;
            while let Some(rest) = name.strip_suffix("[]") {
                name = rest;
                elements += 1;
            }
            match name {
                "" if elements == 0 => {
                    return Err(format!(
                        "field path {text:?} has an empty segment (two dots, or a dot at an end)"
                    ))
                }
                "" => {}
                "*" => segments.push(Segment::AnyMember),
                _ if name.contains(['*', '[', ']']) => {
                    return Err(format!(
                        "field path {text:?}: segment {piece:?} may use '*' only alone and '[]' only at its end"
                    ))
                }
                _ => segments.push(Segment::Member(name.to_owned())),
            }
            segments.extend(std::iter::repeat_n(Segment::Element, elements));
        }
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// A `key_ignore_query` entry: an exact parameter name, or a prefix
/// written with a trailing `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryName {
    Exact(String),
    Prefix(String),
}

impl QueryName {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("a query parameter name must not be empty".into());
        }
        match text.strip_suffix('*') {
            Some(prefix) if prefix.contains('*') => Err(format!(
                "query parameter {text:?} may hold '*' only at its end"
            )),
            Some(prefix) => Ok(Self::Prefix(prefix.to_owned())),
            None if text.contains('*') => Err(format!(
                "query parameter {text:?} may hold '*' only at its end"
            )),
            None => Ok(Self::Exact(text.to_owned())),
        }
    }

    /// True when the decoded parameter `name` is left out of the key.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::Exact(exact) => name == exact,
            Self::Prefix(prefix) => name.starts_with(prefix.as_str()),
        }
    }

    fn to_text(&self) -> String {
        match self {
            Self::Exact(exact) => exact.clone(),
            Self::Prefix(prefix) => format!("{prefix}*"),
        }
    }
}

/// Which setting an invalid entry came from; its `as_str()` is the
/// proxy.toml key, so errors name the field at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleField {
    IgnoreFields,
    Unordered,
    IgnoreQuery,
    Headers,
}

impl RuleField {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IgnoreFields => "key_ignore_fields",
            Self::Unordered => "key_unordered",
            Self::IgnoreQuery => "key_ignore_query",
            Self::Headers => "key_headers",
        }
    }
}

/// An invalid key rule: the setting and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", field.as_str())]
pub struct KeyRuleError {
    pub field: RuleField,
    pub reason: String,
}

/// A route's key rules, validated. `KeyRules::default()` has none.
#[derive(Debug, Clone, Default)]
pub struct KeyRules {
    ignore_fields: Vec<FieldPath>,
    unordered: Vec<FieldPath>,
    ignore_query: Vec<QueryName>,
    headers: Vec<HeaderName>,
    /// md5 of the rules, all zero when there are none: `KeyMemo` mixes it
    /// into its raw digests so a reload that changes the rules cannot hand
    /// back a key computed under the old ones.
    fingerprint: [u8; 16],
}

impl KeyRules {
    /// No rules: the key of the default route and of routes without settings.
    pub fn none() -> &'static KeyRules {
        static NONE: KeyRules = KeyRules {
            ignore_fields: Vec::new(),
            unordered: Vec::new(),
            ignore_query: Vec::new(),
            headers: Vec::new(),
            fingerprint: [0; 16],
        };
        &NONE
    }

    /// Parses the four route settings, as written in proxy.toml.
    pub fn new(
        ignore_fields: &[String],
        unordered: &[String],
        ignore_query: &[String],
        headers: &[String],
    ) -> Result<Self, KeyRuleError> {
        let fail = |field| move |reason| KeyRuleError { field, reason };
        let ignore_fields = ignore_fields
            .iter()
            .map(|text| {
                let path = FieldPath::parse(text)?;
                if path.segments.last() == Some(&Segment::Element) {
                    return Err(format!(
                        "field path {text:?} ends in '[]'; to leave an array out, name the array itself"
                    ));
                }
                Ok(path)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail(RuleField::IgnoreFields))?;
        let unordered = unordered
            .iter()
            .map(|text| FieldPath::parse(text))
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail(RuleField::Unordered))?;
        let ignore_query = ignore_query
            .iter()
            .map(|text| QueryName::parse(text))
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail(RuleField::IgnoreQuery))?;
        let headers = headers
            .iter()
            .map(|text| {
                HeaderName::from_bytes(text.trim().as_bytes())
                    .map_err(|_| format!("{text:?} is not a valid header name"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail(RuleField::Headers))?;
        let mut rules = Self {
            ignore_fields,
            unordered,
            ignore_query,
            headers,
            fingerprint: [0; 16],
        };
        if !rules.is_empty() {
            let mut hasher = Md5::new();
            for (tag, list) in [
                ("ignore", rules.ignore_field_texts()),
                ("unordered", rules.unordered_texts()),
                ("query", rules.ignore_query_texts()),
                ("headers", rules.header_texts()),
            ] {
                hasher.update(tag);
                for item in list {
                    hasher.update((item.len() as u64).to_le_bytes());
                    hasher.update(item);
                }
            }
            rules.fingerprint = hasher.finalize().into();
        }
        Ok(rules)
    }

    pub fn is_empty(&self) -> bool {
        self.ignore_fields.is_empty()
            && self.unordered.is_empty()
            && self.ignore_query.is_empty()
            && self.headers.is_empty()
    }

    /// True when the rules change how a JSON body is keyed.
    pub fn shapes_body(&self) -> bool {
        !self.ignore_fields.is_empty() || !self.unordered.is_empty()
    }

    pub fn fingerprint(&self) -> [u8; 16] {
        self.fingerprint
    }

    pub fn ignore_fields(&self) -> &[FieldPath] {
        &self.ignore_fields
    }

    pub fn unordered(&self) -> &[FieldPath] {
        &self.unordered
    }

    /// True when the query parameter named `name` (decoded) is left out.
    pub fn ignores_query(&self, name: &str) -> bool {
        self.ignore_query.iter().any(|q| q.matches(name))
    }

    pub fn has_query_rules(&self) -> bool {
        !self.ignore_query.is_empty()
    }

    pub fn headers(&self) -> &[HeaderName] {
        &self.headers
    }

    /// What the `key_headers` add to a key: each name with its values in
    /// order, length-prefixed so that no two header sets give the same
    /// bytes (an absent header differs from an empty one). `None` without
    /// `key_headers`.
    pub fn header_identity(&self, request: &HeaderMap) -> Option<Vec<u8>> {
        if self.headers.is_empty() {
            return None;
        }
        let mut out = Vec::new();
        for name in &self.headers {
            let values = request.get_all(name);
            out.extend_from_slice(&(values.iter().count() as u32).to_le_bytes());
            for value in values {
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                out.extend_from_slice(value.as_bytes());
            }
        }
        Some(out)
    }

    /// `x-tenant=acme`, for descriptions (absent headers are left out).
    pub fn header_description(&self, request: &HeaderMap) -> String {
        let mut text = String::new();
        for name in &self.headers {
            for value in request.get_all(name) {
                if !text.is_empty() {
                    text.push(' ');
                }
                text.push_str(name.as_str());
                text.push('=');
                text.push_str(&String::from_utf8_lossy(value.as_bytes()));
            }
        }
        text
    }

    pub fn ignore_field_texts(&self) -> Vec<String> {
        self.ignore_fields.iter().map(|p| p.text.clone()).collect()
    }

    pub fn unordered_texts(&self) -> Vec<String> {
        self.unordered.iter().map(|p| p.text.clone()).collect()
    }

    pub fn ignore_query_texts(&self) -> Vec<String> {
        self.ignore_query.iter().map(QueryName::to_text).collect()
    }

    pub fn header_texts(&self) -> Vec<String> {
        self.headers.iter().map(|h| h.as_str().to_owned()).collect()
    }
}

impl fmt::Display for KeyRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ignore_fields={:?} unordered={:?} ignore_query={:?} headers={:?}",
            self.ignore_field_texts(),
            self.unordered_texts(),
            self.ignore_query_texts(),
            self.header_texts()
        )
    }
}

/// Where a body walk stands against the rules: for each rule still
/// matching, how many of its segments are matched. Empty when no rule can
/// match below this point, so a walk without rules allocates nothing.
#[derive(Debug, Default)]
pub struct Cursor {
    /// (rule index, segments matched); ignore rules first, then unordered.
    states: Vec<(u16, u16)>,
}

/// What the rules say about one value reached by a walk.
#[derive(Debug, Default)]
pub struct Step {
    /// An ignore rule ends here: leave the value out.
    pub ignored: bool,
    /// An unordered rule ends here: sort this array's elements.
    pub unordered: bool,
    /// The rules still matching below this value.
    pub below: Cursor,
}

impl Cursor {
    /// The cursor at a body's root.
    pub fn root(rules: &KeyRules) -> Self {
        let count = rules.ignore_fields.len() + rules.unordered.len();
        Self {
            states: (0..count as u16).map(|rule| (rule, 0)).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// The rules' verdict on the object member `name`.
    pub fn member(&self, rules: &KeyRules, name: &str) -> Step {
        self.step(rules, |segment| segment.matches_member(name))
    }

    /// The rules' verdict on each element of an array.
    pub fn element(&self, rules: &KeyRules) -> Step {
        self.step(rules, |segment| *segment == Segment::Element)
    }

    fn step(&self, rules: &KeyRules, matches: impl Fn(&Segment) -> bool) -> Step {
        let mut step = Step::default();
        let ignores = rules.ignore_fields.len();
        for &(rule, matched) in &self.states {
            let index = rule as usize;
            let path = if index < ignores {
                &rules.ignore_fields[index]
            } else {
                &rules.unordered[index - ignores]
            };
            let Some(segment) = path.segments.get(matched as usize) else {
                continue;
            };
            if !matches(segment) {
                continue;
            }
            if matched as usize + 1 == path.segments.len() {
                if index < ignores {
                    step.ignored = true;
                } else {
                    step.unordered = true;
                }
            } else {
                step.below.states.push((rule, matched + 1));
            }
        }
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn rules(ignore: &[&str], unordered: &[&str], query: &[&str], headers: &[&str]) -> KeyRules {
        let own = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        KeyRules::new(&own(ignore), &own(unordered), &own(query), &own(headers)).unwrap()
    }

    #[test]
    fn dotted_paths_parse_into_members_wildcards_and_elements() {
        let path = FieldPath::parse("filters.*.items[].id").unwrap();
        assert_eq!(
            path.segments(),
            [
                Segment::Member("filters".into()),
                Segment::AnyMember,
                Segment::Member("items".into()),
                Segment::Element,
                Segment::Member("id".into()),
            ]
        );
        assert_eq!(
            FieldPath::parse("[].requestId").unwrap().segments(),
            [Segment::Element, Segment::Member("requestId".into())]
        );
        assert_eq!(
            FieldPath::parse("matrix[][]").unwrap().segments(),
            [
                Segment::Member("matrix".into()),
                Segment::Element,
                Segment::Element
            ]
        );
    }

    #[test]
    fn malformed_paths_are_refused_with_the_path_in_the_message() {
        for bad in [
            "", "a..b", ".a", "a.", "client*", "a*b", "a[0]", "a]", "[x]",
        ] {
            let err = FieldPath::parse(bad).unwrap_err();
            assert!(
                err.contains("field path") || err.contains("empty"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn an_ignored_path_may_not_end_in_every_element() {
        let err = KeyRules::new(&["tags[]".into()], &[], &[], &[]).unwrap_err();
        assert_eq!(err.field, RuleField::IgnoreFields);
        assert!(err.to_string().starts_with("key_ignore_fields: "), "{err}");
        assert!(KeyRules::new(&[], &["matrix[]".into()], &[], &[]).is_ok());
    }

    #[test]
    fn query_globs_are_exact_names_or_trailing_prefixes() {
        let r = rules(&[], &[], &["utm_*", "_"], &[]);
        assert!(r.ignores_query("utm_source"));
        assert!(r.ignores_query("utm_"));
        assert!(r.ignores_query("_"));
        assert!(!r.ignores_query("__"));
        assert!(!r.ignores_query("org"));
        assert!(!r.ignores_query("xutm_source"));
        let err = KeyRules::new(&[], &[], &["u*m".into()], &[]).unwrap_err();
        assert_eq!(err.field, RuleField::IgnoreQuery);
        assert!(KeyRules::new(&[], &[], &["".into()], &[]).is_err());
    }

    #[test]
    fn header_names_are_case_insensitive_and_validated() {
        let r = rules(&[], &[], &[], &["X-Tenant"]);
        let mut headers = HeaderMap::new();
        headers.insert("x-tenant", HeaderValue::from_static("acme"));
        let mut upper = HeaderMap::new();
        upper.insert("X-TENANT", HeaderValue::from_static("acme"));
        assert_eq!(r.header_identity(&headers), r.header_identity(&upper));
        assert_eq!(r.header_description(&headers), "x-tenant=acme");
        let err = KeyRules::new(&[], &[], &[], &["bad header".into()]).unwrap_err();
        assert_eq!(err.field, RuleField::Headers);
    }

    #[test]
    fn an_absent_header_and_an_empty_one_are_told_apart() {
        let r = rules(&[], &[], &[], &["x-tenant"]);
        let mut empty = HeaderMap::new();
        empty.insert("x-tenant", HeaderValue::from_static(""));
        assert_ne!(
            r.header_identity(&HeaderMap::new()),
            r.header_identity(&empty)
        );
        assert_eq!(rules(&[], &[], &[], &[]).header_identity(&empty), None);
    }

    #[test]
    fn no_rules_have_a_zero_fingerprint_and_different_rules_differ() {
        assert_eq!(KeyRules::default().fingerprint(), [0; 16]);
        assert!(KeyRules::default().is_empty());
        let a = rules(&["a"], &[], &[], &[]);
        let b = rules(&[], &["a"], &[], &[]);
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), [0; 16]);
    }

    #[test]
    fn the_cursor_reports_ignored_and_unordered_values_where_paths_end() {
        let r = rules(
            &["meta.sentAt", "client.*"],
            &["orgs", "items[].tags"],
            &[],
            &[],
        );
        let root = Cursor::root(&r);
        assert!(!root.member(&r, "org").ignored);
        let meta = root.member(&r, "meta");
        assert!(!meta.ignored && !meta.below.is_empty());
        assert!(meta.below.member(&r, "sentAt").ignored);
        assert!(!meta.below.member(&r, "other").ignored);
        assert!(
            root.member(&r, "client")
                .below
                .member(&r, "anything")
                .ignored
        );
        assert!(root.member(&r, "orgs").unordered);
        let items = root.member(&r, "items").below.element(&r);
        assert!(items.below.member(&r, "tags").unordered);
        assert!(root.member(&r, "unrelated").below.is_empty());
    }
}
