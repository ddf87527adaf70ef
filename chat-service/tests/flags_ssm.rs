//! The SSM Parameter Store flag source against moto's real server (ficus-testkit's `Moto`; skipped
//! locally when moto is not installed, a failure under CI=true): parameters put with the Rust
//! SDK the way the operator writes them (values first, `generation` last), read by a watcher
//! that polls every 200 ms.
//!
//! Apply latencies are printed (`--nocapture` to see them), not asserted: a loaded CI machine
//! must not fail a correctness test. Waits use a 10 s timeout.

mod common;

use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ssm::types::ParameterType;
use chat_service::flags::{
    DualWrite, FlagError, FlagSource, FlagValues, FlagWatcher, Flags, Percent, Side, keys,
};
use ficus_testkit::moto::Moto;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

const REGION: &str = ficus_testkit::moto::REGION;
const PREFIX: &str = "/hse/chat/";
const POLL: Duration = Duration::from_millis(200);
const WAIT: Duration = Duration::from_secs(10);
/// Several polls: time enough for a change that must be ignored to have been read and ignored.
const SETTLE: Duration = Duration::from_millis(1200);

struct Aws {
    moto: Moto,
    config: SdkConfig,
    ssm: aws_sdk_ssm::Client,
}

/// A fresh moto (an empty account) and an SDK configuration pointing at it, or `None` to skip.
async fn moto_or_skip() -> Option<Aws> {
    ficus_testkit::moto::use_test_credentials();
    ficus_testkit::init();
    let moto = match Moto::start() {
        Ok(m) => m,
        Err(e) => {
            ficus_testkit::skip_or_panic(&e);
            return None;
        }
    };
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(moto.url())
        .load()
        .await;
    let ssm = aws_sdk_ssm::Client::new(&config);
    Some(Aws { moto, config, ssm })
}

fn ssm_source() -> FlagSource {
    FlagSource::Ssm {
        prefix: PREFIX.into(),
        poll_interval: POLL,
    }
}

use common::flag_doc as flags;

impl Aws {
    async fn put(&self, key: &str, value: &str, kind: ParameterType) {
        self.ssm
            .put_parameter()
            .name(format!("{PREFIX}{key}"))
            .value(value)
            .r#type(kind)
            .overwrite(true)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "put {PREFIX}{key}={value}: {}",
                    aws_sdk_ssm::error::DisplayErrorContext(&e)
                )
            });
    }

    /// The whole document as the operator writes it (the contract's parameters, `generation`
    /// last).
    async fn put_flags(&self, f: &Flags, kind: ParameterType) {
        for (key, value) in ficus_flags::ssm::parameters(f) {
            self.put(key, &value, kind.clone()).await;
        }
    }

    async fn delete_all(&self) {
        let names: Vec<String> = keys::ALL.iter().map(|k| format!("{PREFIX}{k}")).collect();
        self.ssm
            .delete_parameters()
            .set_names(Some(names))
            .send()
            .await
            .expect("delete parameters");
    }

    async fn start(&self, gauge: &Gauge) -> Result<FlagWatcher, FlagError> {
        FlagWatcher::start_with_aws_config(ssm_source(), &self.config, gauge.clone()).await
    }
}

/// Waits until the flags in force satisfy `done`; returns how long it took since `since`.
async fn wait_until(
    rx: &mut watch::Receiver<Flags>,
    what: &str,
    since: Instant,
    done: impl FnMut(&Flags) -> bool,
) -> Duration {
    let outcome = tokio::time::timeout(WAIT, rx.wait_for(done))
        .await
        .map(|r| r.is_ok());
    match outcome {
        Ok(true) => since.elapsed(),
        Ok(false) => panic!("flag channel closed while waiting for {what}"),
        Err(_) => panic!(
            "{what} not applied within {WAIT:?}; in force: {:?}",
            *rx.borrow()
        ),
    }
}

async fn wait_for_flags(rx: &mut watch::Receiver<Flags>, want: Flags, since: Instant) -> Duration {
    wait_until(rx, &format!("{want:?}"), since, |f| *f == want).await
}

/// Asserts that nothing was applied: the subscriber saw no change (and its channel is still
/// open, so the poller is alive) and the flags and gauge are `expected`.
async fn assert_kept(
    watcher: &FlagWatcher,
    rx: &watch::Receiver<Flags>,
    gauge: &Gauge,
    expected: Flags,
    what: &str,
) {
    tokio::time::sleep(SETTLE).await;
    match rx.has_changed() {
        Ok(false) => {}
        Ok(true) => panic!("{what}: the flags changed to {:?}", *rx.borrow()),
        Err(_) => panic!("{what}: the flag poller stopped (channel closed)"),
    }
    assert_eq!(watcher.current(), expected, "{what}");
    assert_eq!(gauge.get(), expected.generation, "{what}: gauge");
}

#[tokio::test]
async fn ssm_source_follows_changes_and_keeps_the_last_good_flags() {
    let Some(aws) = moto_or_skip().await else {
        return;
    };
    let g1 = flags(1, Side::Legacy, DualWrite::Sync, 0, 0);
    aws.put_flags(&g1, ParameterType::String).await;

    let gauge = Gauge::default();
    let watcher = aws.start(&gauge).await.expect("start");
    assert_eq!(
        watcher.current(),
        g1,
        "start loads the document before returning"
    );
    assert_eq!(gauge.get(), 1);
    let mut rx = watcher.subscribe();

    // A new generation with new values.
    let g2 = flags(2, Side::Legacy, DualWrite::Sync, 10, 25);
    let t = Instant::now();
    aws.put_flags(&g2, ParameterType::String).await;
    let latency = wait_for_flags(&mut rx, g2, t).await;
    println!(
        "generation 2 applied {latency:?} after the operator-style write began (poll {POLL:?})"
    );
    assert_eq!(gauge.get(), 2);
    rx.mark_unchanged();

    // An invalid value (written first, so no reading holds a valid new document) is rejected;
    // generation 2 stays in force, on every poll after.
    aws.put(keys::WRITE_PRIMARY, "sideways", ParameterType::String)
        .await;
    aws.put(keys::GENERATION, "3", ParameterType::String).await;
    assert_kept(&watcher, &rx, &gauge, g2, "write_primary=sideways").await;

    // Fixed with the next generation: applied.
    let g4 = flags(4, Side::New, DualWrite::Async, 10, 50);
    let t = Instant::now();
    aws.put_flags(&g4, ParameterType::String).await;
    let latency = wait_for_flags(&mut rx, g4, t).await;
    println!("generation 4 applied {latency:?} after a rejected generation 3");
    assert_eq!(gauge.get(), 4);
    rx.mark_unchanged();

    // A lower generation (a stale writer; generation first, so every reading is stale) is
    // ignored.
    let stale = flags(1, Side::Legacy, DualWrite::Off, 0, 0);
    aws.put(keys::GENERATION, "1", ParameterType::String).await;
    aws.put_flags(&stale, ParameterType::String).await;
    assert_kept(&watcher, &rx, &gauge, g4, "generation 1 after 4").await;

    let g5 = flags(5, Side::New, DualWrite::Async, 0, 75);
    let t = Instant::now();
    aws.put_flags(&g5, ParameterType::String).await;
    wait_for_flags(&mut rx, g5, t).await;

    // A hand edit without a generation bump is followed (after a confirming poll).
    let edited = Flags {
        values: FlagValues {
            read_split_percent: Percent::ALL,
            ..g5.values
        },
        ..g5
    };
    let t = Instant::now();
    aws.put(keys::READ_SPLIT_PERCENT, "100", ParameterType::String)
        .await;
    let latency = wait_for_flags(&mut rx, edited, t).await;
    println!("same-generation edit applied after {latency:?} (two polls)");
    assert_eq!(gauge.get(), 5);
    rx.mark_unchanged();

    // The parameters disappear: the last good flags stay.
    aws.delete_all().await;
    assert_kept(&watcher, &rx, &gauge, edited, "parameters deleted").await;

    // Written again: applied.
    let g6 = flags(6, Side::New, DualWrite::Off, 0, 100);
    let t = Instant::now();
    aws.put_flags(&g6, ParameterType::String).await;
    let latency = wait_for_flags(&mut rx, g6, t).await;
    println!("generation 6 applied {latency:?} after the parameters were re-created");
    rx.mark_unchanged();

    // SSM goes away (moto stopped): every poll fails, the poller logs and keeps going, and
    // generation 6 stays in force.
    let Aws {
        moto,
        config,
        ssm: _,
    } = aws;
    drop(moto);
    assert_kept(&watcher, &rx, &gauge, g6, "SSM unreachable").await;
    assert_kept(&watcher, &rx, &gauge, g6, "SSM still unreachable").await;

    // Starting against an unreachable SSM is an error, not a run on default flags.
    let t = Instant::now();
    let err = FlagWatcher::start_with_aws_config(ssm_source(), &config, Gauge::default())
        .await
        .expect_err("SSM is down");
    println!("start without SSM failed after {:?}: {err}", t.elapsed());
    assert!(
        matches!(err, FlagError::Ssm { ref prefix, .. } if prefix == PREFIX),
        "{err:?}"
    );
    assert!(err.to_string().contains(PREFIX), "{err}");
}

#[tokio::test]
async fn ssm_source_starts_on_defaults_and_reads_secure_strings() {
    let Some(aws) = moto_or_skip().await else {
        return;
    };
    let gauge = Gauge::default();
    gauge.set(-1);
    let watcher = aws.start(&gauge).await.expect("start without parameters");
    assert_eq!(watcher.current(), Flags::default());
    assert_eq!(gauge.get(), 0);
    let mut rx = watcher.subscribe();

    // SecureString parameters come back decrypted.
    let g1 = flags(1, Side::Legacy, DualWrite::Async, 5, 0);
    let t = Instant::now();
    aws.put_flags(&g1, ParameterType::SecureString).await;
    let latency = wait_for_flags(&mut rx, g1, t).await;
    println!("SecureString generation 1 applied {latency:?} after the write began");
    assert_eq!(gauge.get(), 1);

    // The plan's extra parameters are not the service's: changing only them changes nothing.
    rx.mark_unchanged();
    aws.put(
        "traffic-split-percent",
        "not-a-number",
        ParameterType::String,
    )
    .await;
    aws.put("use-new-system", "maybe", ParameterType::String)
        .await;
    assert_kept(
        &watcher,
        &rx,
        &gauge,
        g1,
        "only the plan's parameters changed",
    )
    .await;
}

#[tokio::test]
async fn ssm_source_refuses_to_start_on_a_bad_document_or_prefix() {
    let Some(aws) = moto_or_skip().await else {
        return;
    };
    aws.put_flags(
        &flags(3, Side::New, DualWrite::Sync, 0, 0),
        ParameterType::String,
    )
    .await;
    aws.put(keys::SHADOW_READ_PERCENT, "150", ParameterType::String)
        .await;
    let err = aws
        .start(&Gauge::default())
        .await
        .expect_err("invalid document at start");
    println!("{err}");
    assert!(
        matches!(err, FlagError::Rejected { ref source, .. } if matches!(**source, FlagError::Document(ficus_flags::FlagError::InvalidValue { key: "shadow_read_percent", .. }))),
        "{err:?}"
    );

    // A document without `generation` (half created) is invalid too.
    aws.put(keys::SHADOW_READ_PERCENT, "0", ParameterType::String)
        .await;
    aws.ssm
        .delete_parameter()
        .name(format!("{PREFIX}{}", keys::GENERATION))
        .send()
        .await
        .expect("delete generation");
    let err = aws
        .start(&Gauge::default())
        .await
        .expect_err("no generation");
    assert!(err.to_string().contains("generation"), "{err}");

    for bad in ["hse/chat/", "/hse/chat", "/", "/hse//chat/"] {
        let source = FlagSource::Ssm {
            prefix: bad.into(),
            poll_interval: POLL,
        };
        let err = FlagWatcher::start_with_aws_config(source, &aws.config, Gauge::default())
            .await
            .expect_err(bad);
        assert!(
            matches!(err, FlagError::SsmPrefix(ref p) if p.0 == bad),
            "{bad}: {err:?}"
        );
    }
    // Checked before any AWS configuration is loaded, on the default path too.
    let err = FlagWatcher::start(
        FlagSource::Ssm {
            prefix: "chat".into(),
            poll_interval: POLL,
        },
        Gauge::default(),
    )
    .await
    .expect_err("bad prefix");
    assert!(matches!(err, FlagError::SsmPrefix(_)), "{err:?}");
}
