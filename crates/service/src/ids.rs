//! Object ids that sort by creation time (`file-…`, `batch_…`), so the `after=` cursor of a list
//! is a range scan on the primary key and "newest first" is a descending key order.
//!
//! The id is 48 bits of Unix milliseconds then 80 random bits, in Crockford base 32 (26
//! characters), the ULID layout. Ids made in the same millisecond by one process still sort in
//! creation order: the random part is then the previous one plus one.

use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const RANDOM_BITS: u32 = 80;

static LAST: Mutex<(u64, u128)> = Mutex::new((0, 0));

/// A new `file-…` id.
pub fn file_id() -> String {
    format!("file-{}", sortable())
}

/// A new `batch_…` id.
pub fn batch_id() -> String {
    format!("batch_{}", sortable())
}

/// A new `req_…` id for one API request.
pub fn request_id() -> String {
    format!("req_{}", sortable())
}

fn sortable() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        & ((1 << 48) - 1);
    let random = {
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        let mask = (1u128 << RANDOM_BITS) - 1;
        let next = if ms <= last.0 {
            // Same millisecond (or a clock step back): keep the order of this process.
            (last.0, (last.1 + 1) & mask)
        } else {
            (ms, random_bits() & mask)
        };
        *last = next;
        next
    };
    encode((u128::from(random.0) << RANDOM_BITS) | random.1)
}

/// Randomness from the standard library's per-process hasher keys (ids need to be unique, not
/// secret: the API key, not the id, guards an object).
fn random_bits() -> u128 {
    let state = std::collections::hash_map::RandomState::new();
    let mut a = state.build_hasher();
    a.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    a.write_u32(std::process::id());
    let high = a.finish();
    let mut b = state.build_hasher();
    b.write_u64(high);
    (u128::from(high) << 64) | u128::from(b.finish())
}

fn encode(mut n: u128) -> String {
    let mut out = [0u8; 26];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n & 31) as usize];
        n >>= 5;
    }
    out.iter().map(|&b| b as char).collect()
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
