//! The SSM flag follower against moto's real server (skipped locally without moto, a failure
//! under CI=true): the operator's document written the operator's way (the contract's
//! parameters, `generation` last), a rejected document, and the plan's own
//! `traffic-split-percent` taking users off the new system by hand.

use std::time::Duration;

use aws_sdk_ssm::types::ParameterType;
use devices_service::flags::{FlagError, FlagSource, FlagWatcher, InForce};
use ficus_flags::{DualWrite, FlagValues, Flags, Percent, Side};
use ficus_testkit::Moto;
use prometheus_client::metrics::gauge::Gauge;

const PREFIX: &str = "/hse/";
const WAIT: Duration = Duration::from_secs(10);

fn doc(generation: i64, split: u8) -> Flags {
    Flags {
        generation,
        values: FlagValues {
            write_primary: Side::Legacy,
            dual_write: DualWrite::Sync,
            shadow_read_percent: Percent::ZERO,
            read_split_percent: Percent::new(split).expect("percent"),
            ..Default::default()
        },
    }
}

async fn put(ssm: &aws_sdk_ssm::Client, key: &str, value: &str) {
    ssm.put_parameter()
        .name(format!("{PREFIX}{key}"))
        .value(value)
        .r#type(ParameterType::String)
        .overwrite(true)
        .send()
        .await
        .expect("put parameter");
}

async fn put_flags(ssm: &aws_sdk_ssm::Client, f: &Flags) {
    for (key, value) in ficus_flags::ssm::parameters(f) {
        put(ssm, key, &value).await;
    }
}

async fn wait(watcher: &FlagWatcher, what: &str, done: impl Fn(&InForce) -> bool) {
    let mut rx = watcher.subscribe();
    tokio::time::timeout(WAIT, rx.wait_for(|f| done(f)))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{what} not applied within {WAIT:?}; in force {:?}",
                watcher.current()
            )
        })
        .expect("flag channel open");
}

#[tokio::test]
async fn follows_the_document_and_the_plans_split_only_lowers_it() {
    ficus_testkit::moto::use_test_credentials();
    ficus_testkit::init();
    let moto = match Moto::start() {
        Ok(m) => m,
        Err(e) => {
            ficus_testkit::skip_or_panic(&e);
            return;
        }
    };
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(moto.url())
        .load()
        .await;
    let ssm = aws_sdk_ssm::Client::new(&config);
    let source = FlagSource::Ssm {
        prefix: PREFIX.into(),
        poll_interval: Duration::from_millis(100),
    };

    // Nothing written yet: the pre-migration defaults.
    let gauge = Gauge::default();
    let watcher = FlagWatcher::start(source.clone(), Some(&config), gauge.clone())
        .await
        .expect("start");
    assert_eq!(watcher.current().doc, Flags::default());

    put_flags(&ssm, &doc(3, 50)).await;
    wait(&watcher, "generation 3", |f| f.doc == doc(3, 50)).await;
    assert_eq!(watcher.current().values().read_split_percent.get(), 50);
    assert_eq!(gauge.get(), 3);

    // The runbook's emergency step: the plan's parameter to 0 by hand.
    put(&ssm, "traffic-split-percent", "0").await;
    wait(&watcher, "split 0", |f| {
        f.values().read_split_percent == Percent::ZERO
    })
    .await;
    assert_eq!(
        watcher.current().doc.generation,
        3,
        "the document itself is unchanged"
    );
    // Raising it above the document does not move anyone forward.
    put(&ssm, "traffic-split-percent", "100").await;
    wait(&watcher, "back to the document's split", |f| {
        f.values().read_split_percent.get() == 50
    })
    .await;
    put(&ssm, "use-new-system", "false").await;
    wait(&watcher, "use-new-system=false", |f| {
        f.values().read_split_percent == Percent::ZERO
    })
    .await;

    // The operator's next document restores both parameters.
    put_flags(&ssm, &doc(4, 100)).await;
    wait(&watcher, "generation 4", |f| {
        f.doc == doc(4, 100) && f.values().read_split_percent == Percent::ALL
    })
    .await;

    // An invalid document at start is refused, not run on defaults.
    put(&ssm, "dual_write", "sometimes").await;
    let err = FlagWatcher::start(source, Some(&config), Gauge::default())
        .await
        .expect_err("invalid document");
    assert!(matches!(err, FlagError::Rejected { .. }), "{err:?}");
    assert!(err.to_string().contains("dual_write"), "{err}");
    assert_eq!(
        watcher.current().doc,
        doc(4, 100),
        "the running watcher keeps the last good flags"
    );
}
