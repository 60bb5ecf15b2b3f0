//! One `'static` copy of each header name the stored answers carry.
//!
//! A name outside http's list of standard ones (`x-origin-key`,
//! `x-powered-by`) is a buffer of its own with a reference count, in every
//! entry: about 50 bytes, and two cold cache lines for a hit on that entry
//! to clone and read at a million entries. Sharing one counted copy would
//! make that count one line that every hit on every worker writes. A
//! `'static` name has no count at all: cloning it copies a pointer. So the
//! names of stored answers are kept here, leaked once for the life of the
//! process, and an entry holds `HeaderName::from_static` of them.
//!
//! The table is bounded ([`MAX_NAMES`] names of at most [`MAX_NAME_LEN`]
//! bytes, so at most 64 KiB ever leaked): an upstream that sends a new name
//! with every answer fills it, and the names past the bound are kept per
//! entry as before. It is read when an answer is stored (a fill, a Redis
//! read, a snapshot), never on a hit.

use std::collections::HashSet;
use std::sync::{OnceLock, RwLock};

use http::HeaderName;

/// Most names the process-wide table holds.
const MAX_NAMES: usize = 1024;
/// Longest name it holds.
const MAX_NAME_LEN: usize = 64;

/// A bounded set of leaked, `'static` header names.
pub struct NameTable {
    names: RwLock<HashSet<&'static str>>,
    max_names: usize,
    max_len: usize,
}

impl NameTable {
    pub fn new(max_names: usize, max_len: usize) -> Self {
        Self {
            names: RwLock::default(),
            max_names,
            max_len,
        }
    }

    /// True when the table holds `name`: an entry that was stored holds
    /// the table's copy of it, and nothing of its own.
    pub fn holds(&self, name: &HeaderName) -> bool {
        self.names
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(name.as_str())
    }

    /// `name` as a `'static` name when the table has or can take it,
    /// otherwise a clone of it.
    pub fn shared(&self, name: &HeaderName) -> HeaderName {
        let text = name.as_str();
        if text.len() > self.max_len {
            return name.clone();
        }
        let known = self
            .names
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(text)
            .copied();
        if let Some(known) = known {
            return HeaderName::from_static(known);
        }
        let mut names = self.names.write().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = names.get(text) {
            return HeaderName::from_static(known);
        }
        if names.len() >= self.max_names {
            return name.clone();
        }
        // Leaked on purpose: bounded above, and kept for the process's life.
        let leaked: &'static str = Box::leak(text.to_owned().into_boxed_str());
        names.insert(leaked);
        // A `HeaderName`'s text is lowercase and valid, so this cannot panic.
        HeaderName::from_static(leaked)
    }
}

/// The process's table, for every stored answer.
pub fn table() -> &'static NameTable {
    static TABLE: OnceLock<NameTable> = OnceLock::new();
    TABLE.get_or_init(|| NameTable::new(MAX_NAMES, MAX_NAME_LEN))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same_text(a: &HeaderName, b: &HeaderName) -> bool {
        std::ptr::eq(a.as_str().as_ptr(), b.as_str().as_ptr())
    }

    #[test]
    fn every_entry_gets_the_same_copy_of_a_name() {
        let table = NameTable::new(8, 64);
        let a = table.shared(&HeaderName::from_bytes(b"x-origin-key").unwrap());
        let b = table.shared(&HeaderName::from_bytes(b"X-Origin-Key").unwrap());
        assert_eq!(a, "x-origin-key");
        assert!(same_text(&a, &b), "one copy for both");
        assert!(table.holds(&a));
        assert!(!table.holds(&HeaderName::from_bytes(b"x-other").unwrap()));
        let standard = table.shared(&http::header::CONTENT_TYPE);
        assert_eq!(standard, http::header::CONTENT_TYPE);
    }

    #[test]
    fn names_past_the_bounds_are_kept_as_they_came() {
        let table = NameTable::new(2, 16);
        let long = HeaderName::from_bytes(b"x-a-name-longer-than-sixteen").unwrap();
        assert!(
            same_text(&table.shared(&long), &long),
            "the name it was given"
        );
        assert!(!table.holds(&long));
        let first = table.shared(&HeaderName::from_bytes(b"x-one").unwrap());
        table.shared(&HeaderName::from_bytes(b"x-two").unwrap());
        let third = HeaderName::from_bytes(b"x-three").unwrap();
        let kept = table.shared(&third);
        assert!(
            same_text(&kept, &third),
            "the name itself, when the table is full"
        );
        assert!(!table.holds(&third));
        // What the table already holds is still shared.
        assert!(same_text(
            &first,
            &table.shared(&HeaderName::from_bytes(b"x-one").unwrap())
        ));
    }
}
