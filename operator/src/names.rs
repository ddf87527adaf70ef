//! Names and label values derived from user input, fitted to Kubernetes' limits: a value that
//! fits is kept as it is; a longer one is cut and given a hash of the whole, so two long inputs
//! sharing a prefix still get different names, and the same input always the same one.

/// Longest label value, and longest name of an object whose name becomes a label value (a
/// Job's name is its pods' `job-name` label).
pub const LABEL_VALUE_MAX: usize = 63;

/// `value` itself when it has at most `max` characters, else its first characters, `-` and an
/// 8-hex-digit hash of the whole, `max` characters in all. Characters outside `[a-z0-9.-]` never
/// come from Ficus; the cut only lands on an alphanumeric character, as names and labels need.
pub fn fit(value: &str, max: usize) -> String {
    if value.len() <= max {
        return value.to_string();
    }
    let hash = format!("{:08x}", fnv1a(value) as u32);
    let keep = max.saturating_sub(hash.len() + 1);
    let head: String = value.chars().take(keep).collect();
    let head = head.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    if head.is_empty() {
        hash
    } else {
        format!("{head}-{hash}")
    }
}

/// `<base>-<what>-<n>` within [`LABEL_VALUE_MAX`]: the base is fitted, the suffix kept whole so
/// the name still says what the Job is and which attempt.
pub fn job_name(base: &str, what: &str, n: i32) -> String {
    let suffix = format!("-{what}-{n}");
    let room = LABEL_VALUE_MAX.saturating_sub(suffix.len());
    format!("{}{suffix}", fit(base, room))
}

/// FNV-1a (64 bit): stable across Rust versions and processes, unlike `DefaultHasher`, so a
/// restarted operator derives the same names.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_kept_and_long_ones_fit_with_a_distinguishing_hash() {
        assert_eq!(fit("chat", 63), "chat");
        let a = format!("{}a", "x".repeat(119));
        let b = format!("{}b", "x".repeat(119));
        let (fa, fb) = (fit(&a, 63), fit(&b, 63));
        assert_eq!(fa.len(), 63);
        assert_ne!(fa, fb, "inputs sharing a prefix stay apart");
        assert_eq!(fit(&a, 63), fa, "the same input, the same value");
        assert!(fa.starts_with("xxxx") && fa.ends_with(|c: char| c.is_ascii_hexdigit()));
    }

    #[test]
    fn job_names_keep_their_suffix_and_fit_a_label_value() {
        assert_eq!(job_name("chat", "backfill", 1), "chat-backfill-1");
        let service = "s".repeat(63);
        let name = job_name(&service, "validate", 12);
        assert!(name.len() <= LABEL_VALUE_MAX, "{name}");
        assert!(name.ends_with("-validate-12"), "{name}");
        // A cut that would end on '-' is trimmed: names end alphanumeric.
        let dashed = format!("{}-{}", "a".repeat(40), "b".repeat(40));
        let fitted = fit(&dashed, 50);
        assert!(!fitted.contains("--"), "{fitted}");
    }
}
