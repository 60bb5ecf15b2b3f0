//! The entry codec on arbitrary bytes (a hostile Redis value, a damaged
//! snapshot record): never panics, never trusts a length; whatever decodes
//! has times that `Instant` arithmetic can use, and encodes to a fixed point.

#![no_main]

use std::time::{Duration, Instant, UNIX_EPOCH};

use dashcache::cache::codec::{self, Clock, MAX_SPAN};
use libfuzzer_sys::fuzz_target;

/// Three centuries of unix milliseconds: wall clocks from 1970 to 2270.
const WALL_RANGE_MS: u64 = 300 * 365 * 86_400 * 1000;

fuzz_target!(|data: &[u8]| {
    // The first eight bytes pick the wall clock the entry is read at.
    let Some((clock_bytes, input)) = data.split_first_chunk::<8>() else {
        return;
    };
    let wall_ms = u64::from_le_bytes(*clock_bytes) % WALL_RANGE_MS;
    let clock = Clock {
        wall: UNIX_EPOCH + Duration::from_millis(wall_ms),
        mono: Instant::now(),
    };
    let Ok(entry) = codec::decode(input, &clock) else {
        return;
    };
    let now = clock.mono;
    assert!(entry.ttl_left(now) <= MAX_SPAN);
    assert!(entry.stale.longest() <= MAX_SPAN);
    let _ = (entry.keep_until(), entry.age(now), entry.ttl_signed(now));
    let _ = (entry.serves_if_error(now), entry.serves_while_revalidating(now));
    assert!(entry.body.len() < input.len());

    let encoded = codec::encode(&entry, &clock);
    let again = codec::decode(&encoded, &clock).expect("an encoded entry decodes");
    assert_eq!(
        codec::encode(&again, &clock),
        encoded,
        "encoding is not a fixed point"
    );
    assert_eq!(again.body, entry.body);
    assert_eq!(again.headers, entry.headers);
    assert_eq!(again.description, entry.description);
});
