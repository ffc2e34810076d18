//! Object ids that sort by creation time (`file-…`, `batch_…`), so the `after=` cursor of a list
//! is a range scan on the primary key and "newest first" is a descending key order.
//!
//! The id after the prefix is a ULID (48 bits of Unix milliseconds, 80 random bits, Crockford
//! base 32). One monotonic generator per process keeps ids made in the same millisecond in
//! creation order (the random part is then the previous one plus one).

use std::sync::Mutex;

use ulid::{Generator, Ulid};

static GENERATOR: Mutex<Generator> = Mutex::new(Generator::new());

/// A new `file-…` id.
pub fn file_id() -> String {
    format!("file-{}", sortable())
}

/// A new `batch_…` id.
pub fn batch_id() -> String {
    format!("batch_{}", sortable())
}

/// A new `evt_…` id for one webhook event.
pub fn event_id() -> String {
    format!("evt_{}", sortable())
}

/// A new `req_…` id for one API request.
pub fn request_id() -> String {
    format!("req_{}", sortable())
}

fn sortable() -> String {
    let mut generator = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    // The generator fails only when 2^80 ids were made in one millisecond; a fresh random id
    // (still in this millisecond) is then as good.
    generator
        .generate()
        .unwrap_or_else(|_| Ulid::new())
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_in_creation_order_and_are_unique() {
        let ids: Vec<String> = (0..2000).map(|_| batch_id()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, ids);
        assert!(ids[0].starts_with("batch_") && ids[0].len() == 32);
        assert!(file_id().starts_with("file-"));
    }
}
