//! The strict parse, exhaustively: every valid document is read back, every missing key and
//! invalid value is refused with a message naming it.

use std::collections::BTreeMap;

use ficus_flags::{DualWrite, FlagError, FlagValues, Flags, Percent, Side, keys};

fn flags(generation: i64, primary: Side, dual: DualWrite, shadow: u8, split: u8) -> Flags {
    Flags {
        generation,
        values: FlagValues {
            write_primary: primary,
            dual_write: dual,
            shadow_read_percent: Percent::new(shadow).expect("percent"),
            read_split_percent: Percent::new(split).expect("percent"),
            ..Default::default()
        },
    }
}

fn entries(f: &Flags) -> BTreeMap<String, String> {
    f.to_entries()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

#[test]
fn parse_accepts_every_valid_combination() {
    let mut n = 0;
    for primary in [Side::Legacy, Side::New] {
        for dual in [DualWrite::Off, DualWrite::Sync, DualWrite::Async] {
            for shadow in [0u8, 1, 50, 99, 100] {
                for split in [0u8, 1, 50, 99, 100] {
                    for generation in [0i64, 1, 42, i64::MAX] {
                        let want = flags(generation, primary, dual, shadow, split);
                        let map = entries(&want);
                        assert_eq!(
                            Flags::parse(|k| map.get(k).cloned()).expect("valid document"),
                            want
                        );
                        n += 1;
                    }
                }
            }
        }
    }
    assert_eq!(n, 2 * 3 * 5 * 5 * 4);

    // Exactly the strings the operator writes.
    let map = BTreeMap::from([
        ("generation", "12"),
        ("write_primary", "new"),
        ("dual_write", "async"),
        ("shadow_read_percent", "10"),
        ("read_split_percent", "100"),
        ("unrelated", "ignored"),
    ]);
    let parsed = Flags::parse(|k| map.get(k).map(|v| v.to_string())).expect("operator document");
    assert_eq!(parsed, flags(12, Side::New, DualWrite::Async, 10, 100));
}

#[test]
fn parse_rejects_every_missing_key() {
    let full = entries(&flags(3, Side::New, DualWrite::Sync, 10, 20));
    for key in keys::REQUIRED {
        let mut map = full.clone();
        map.remove(key);
        let err = Flags::parse(|k| map.get(k).cloned()).expect_err("a key is missing");
        assert!(
            matches!(err, FlagError::MissingKey { key: k } if k == key),
            "{key}: {err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(key), "message names the key: {msg}");
        println!("missing {key}: {msg}");
    }
}

#[test]
fn parse_rejects_every_invalid_value() {
    let cases: &[(&str, &[&str])] = &[
        (
            "generation",
            &[
                "",
                " ",
                "abc",
                "-1",
                "+1",
                "1.5",
                "1e3",
                "0x10",
                "9223372036854775808",
            ],
        ),
        (
            "write_primary",
            &["", "Legacy", "NEW", "old", "legacy,new", "primary"],
        ),
        (
            "dual_write",
            &["", "on", "true", "Sync", "ASYNC", "off sync"],
        ),
        (
            "shadow_read_percent",
            &["", "101", "-1", "+5", "50%", "5.5", "256", "abc"],
        ),
        (
            "read_split_percent",
            &["", "101", "-1", "1000", "50%", "0.5", "half"],
        ),
    ];
    let full = entries(&flags(3, Side::New, DualWrite::Sync, 10, 20));
    for (key, values) in cases {
        for value in *values {
            let mut map = full.clone();
            map.insert(key.to_string(), value.to_string());
            let err = Flags::parse(|k| map.get(k).cloned()).expect_err("invalid value");
            match &err {
                FlagError::InvalidValue {
                    key: k, value: v, ..
                } => {
                    assert_eq!((k, v.as_str()), (key, *value), "{err}");
                }
                other => panic!("{key}={value:?}: expected InvalidValue, got {other:?}"),
            }
            let msg = err.to_string();
            assert!(
                msg.contains(key) && msg.contains(&format!("{value:?}")),
                "message names key and value: {msg}"
            );
        }
    }
    let mut map = full.clone();
    map.insert("read_split_percent".into(), "150".into());
    let err = Flags::parse(|k| map.get(k).cloned()).expect_err("out of range");
    assert_eq!(
        err.to_string(),
        "flag `read_split_percent` has invalid value \"150\": expected an integer from 0 to 100"
    );
}
