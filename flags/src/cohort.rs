//! Which users are in the new cohort: a stable bucket per user, shared by every service so one
//! user is on the same side of the split everywhere.

/// The user's stable bucket in 0..100: FNV-1a of the user's key (chat-service uses the decimal
/// user id). A user is in the new cohort when `bucket < read_split_percent`, so raising the
/// percent only ever moves users legacy → new. Fixed forever: changing it would move users
/// between stores mid-migration.
pub fn bucket(user_key: &str) -> u8 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = user_key
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    // `hash % 100` is below 100, so it always fits.
    u8::try_from(hash % 100).unwrap_or(99)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_spread_over_the_whole_range() {
        assert_eq!(bucket("42"), bucket("42"));
        let mut counts = [0u32; 10];
        for user in 0..10_000 {
            counts[usize::from(bucket(&user.to_string()) / 10)] += 1;
        }
        for (decile, n) in counts.iter().enumerate() {
            assert!(
                (800..1200).contains(n),
                "decile {decile} has {n} of 10000 users"
            );
        }
    }

    #[test]
    fn known_values_never_change() {
        // Pinned: a different hash would move live users between stores on upgrade.
        let pinned: Vec<u8> = ["1", "2", "42", "1000", "device-owner-7"]
            .iter()
            .map(|k| bucket(k))
            .collect();
        assert_eq!(pinned, [68, 1, 91, 28, 5]);
    }
}
