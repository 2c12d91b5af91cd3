//! The Kafka transport against a real Kafka-protocol broker (Tansu, started
//! by each test on its own port): round trip, several groups, competing
//! members, retries and DLQ, malformed records, murmur2 partitioning,
//! offsets never committed past an unhandled record, DLQ tooling.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::kafka::{self, Tansu, builder, committed, prefix, records};
use common::{OrderPlaced, eventually, placed};
use eventbus::{Envelope, HandlerError};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

type Seen = Arc<Mutex<Vec<Uuid>>>;

fn seen_handler(
    seen: &Seen,
) -> impl Fn(Arc<Envelope<OrderPlaced>>) -> std::future::Ready<Result<(), HandlerError>>
+ Send
+ Sync
+ 'static {
    let seen = seen.clone();
    move |e: Arc<Envelope<OrderPlaced>>| {
        seen.lock().expect("not poisoned").push(e.meta().event_id());
        std::future::ready(Ok(()))
    }
}

fn count(seen: &Seen) -> usize {
    seen.lock().expect("not poisoned").len()
}

#[tokio::test]
async fn round_trip_writes_eventsource_py_records_and_commits() {
    let tansu = Tansu::start();
    let prefix = prefix("roundtrip");
    let got: Arc<Mutex<Vec<Envelope<OrderPlaced>>>> = Arc::default();
    let g = got.clone();
    let bus = builder(&tansu, &prefix)
        .handler::<OrderPlaced, _, _>("record", move |e: Arc<Envelope<OrderPlaced>>| {
            g.lock().expect("not poisoned").push((*e).clone());
            std::future::ready(Ok::<_, HandlerError>(()))
        })
        .build()
        .await
        .expect("connects");
    assert_eq!(bus.transport_name(), "kafka");
    let idle = bus.health_check().await;
    assert!(
        idle.healthy && !idle.consuming,
        "before consuming: {idle:?}"
    );
    let topic = format!("{prefix}.stream");
    assert_eq!(
        kafka::watermarks(&tansu, &topic).len(),
        3,
        "the topic is created with the configured partitions"
    );
    bus.start_consuming().await.expect("consumes");
    let idle = bus.health_check().await;
    assert!(
        idle.healthy && idle.consuming,
        "consuming, nothing received yet: {idle:?}"
    );
    let tenant = Uuid::new_v4();
    let event = placed("C-1").with_actor("tester").with_tenant(tenant);
    bus.publish([event.clone()]).await.expect("published");
    eventually("the event comes back", WAIT, || {
        let n = got.lock().expect("not poisoned").len();
        async move { n == 1 }
    })
    .await;
    let back = got.lock().expect("not poisoned")[0].clone();
    assert_eq!(back.meta(), event.meta());
    assert_eq!(back.customer_id, "C-1");

    let recs = records(&tansu, &topic);
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    let meta = event.meta();
    assert_eq!(
        r.key.as_deref(),
        Some(meta.aggregate_id().to_string().as_str())
    );
    let names: Vec<&str> = r.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        &names[..9],
        [
            "event_id",
            "event_type",
            "aggregate_id",
            "aggregate_type",
            "aggregate_version",
            "occurred_at",
            "correlation_id",
            "tenant_id",
            "actor_id"
        ]
    );
    assert!(
        names[9..]
            .iter()
            .all(|n| ["traceparent", "tracestate", "baggage"].contains(n)),
        "{names:?}"
    );
    assert_eq!(r.header("event_type"), Some("OrderPlaced"));
    assert_eq!(r.header("aggregate_version"), Some("1"));
    assert_eq!(r.header("tenant_id"), Some(tenant.to_string().as_str()));
    assert!(
        r.header("occurred_at")
            .is_some_and(|t| t.ends_with("+00:00"))
    );
    assert_eq!(r.header("retry_count"), None, "absent on a first publish");
    let value: serde_json::Value =
        serde_json::from_str(r.value.as_deref().expect("a value")).expect("JSON");
    assert_eq!(value["customer_id"], "C-1");
    assert_eq!(value["actor_id"], "tester");

    let health = bus.health_check().await;
    assert!(health.healthy && health.connected, "{health:?}");
    assert_eq!(health.transport, "kafka");
    eventually("the offset is committed", WAIT, || {
        let c = committed(&tansu, "default", &topic);
        let want = r.partition;
        async move { c.iter().any(|(p, o)| *p == want && *o == 1) }
    })
    .await;
    let info = bus.queue_info().await.expect("queue info");
    assert_eq!(info.message_count, 0, "{info:?}");
    let topic_info = bus.topic_info().await.expect("topic info");
    assert_eq!(topic_info.stream.name, topic);
    assert_eq!(topic_info.stream.length, 1);
    assert_eq!(topic_info.consumer_groups[0].lag, Some(0));
    bus.shutdown(Duration::from_secs(10))
        .await
        .expect("clean shutdown");
    let stats = bus.stats();
    assert_eq!(
        (stats.events_published, stats.events_processed_success),
        (1, 1)
    );
}

#[tokio::test]
async fn several_groups_each_receive_every_event_once() {
    let tansu = Tansu::start();
    let prefix = prefix("groups");
    let (a, b) = (Seen::default(), Seen::default());
    let billing = builder(&tansu, &prefix)
        .configure(|c| c.consumer_group = "billing".into())
        .handler::<OrderPlaced, _, _>("billing", seen_handler(&a))
        .build()
        .await
        .expect("connects");
    let audit = builder(&tansu, &prefix)
        .configure(|c| c.consumer_group = "audit".into())
        .handler::<OrderPlaced, _, _>("audit", seen_handler(&b))
        .build()
        .await
        .expect("connects");
    billing.start_consuming().await.expect("consumes");
    audit.start_consuming().await.expect("consumes");
    let events: Vec<_> = (0..200).map(|i| placed(&format!("C-{i}"))).collect();
    let ids: BTreeSet<Uuid> = events.iter().map(|e| e.meta().event_id()).collect();
    let report = billing.publish_batch(events, false).await;
    assert_eq!(report.published, 200, "{:?}", report.errors);
    eventually("both groups have every event", WAIT, || {
        let (na, nb) = (count(&a), count(&b));
        async move { na >= 200 && nb >= 200 }
    })
    .await;
    billing
        .shutdown(Duration::from_secs(10))
        .await
        .expect("stops");
    audit
        .shutdown(Duration::from_secs(10))
        .await
        .expect("stops");
    for seen in [&a, &b] {
        let seen = seen.lock().expect("not poisoned");
        let unique: BTreeSet<Uuid> = seen.iter().copied().collect();
        assert_eq!(unique, ids, "every event");
        assert_eq!(seen.len(), ids.len(), "once");
    }
}

#[tokio::test]
async fn competing_members_share_the_partitions_and_lose_nothing() {
    let tansu = Tansu::start();
    let prefix = prefix("compete");
    let (a, b) = (Seen::default(), Seen::default());
    let first = builder(&tansu, &prefix)
        .configure(|c| c.consumer_group = "workers".into())
        .handler::<OrderPlaced, _, _>("work", seen_handler(&a))
        .build()
        .await
        .expect("connects");
    first.start_consuming().await.expect("consumes");
    let batch1: Vec<_> = (0..100).map(|i| placed(&format!("A-{i}"))).collect();
    let mut ids: BTreeSet<Uuid> = batch1.iter().map(|e| e.meta().event_id()).collect();
    assert_eq!(first.publish_batch(batch1, false).await.published, 100);
    eventually("the first member handles the first batch", WAIT, || {
        let n = count(&a);
        async move { n >= 100 }
    })
    .await;
    // A second member joins: the group rebalances.
    let second = builder(&tansu, &prefix)
        .configure(|c| c.consumer_group = "workers".into())
        .handler::<OrderPlaced, _, _>("work", seen_handler(&b))
        .build()
        .await
        .expect("connects");
    second.start_consuming().await.expect("consumes");
    // Publish until the group has rebalanced and the newcomer handles some.
    let published: Arc<Mutex<BTreeSet<Uuid>>> = Arc::default();
    eventually("the joining member is given partitions", WAIT, || {
        let batch: Vec<_> = (0..10).map(|i| placed(&format!("B-{i}"))).collect();
        published
            .lock()
            .expect("not poisoned")
            .extend(batch.iter().map(|e| e.meta().event_id()));
        let second = &second;
        let b = b.clone();
        async move {
            assert_eq!(second.publish_batch(batch, false).await.published, 10);
            count(&b) > 0
        }
    })
    .await;
    ids.extend(published.lock().expect("not poisoned").iter().copied());
    let expected = ids.len();
    let all_seen = |a: &Seen, b: &Seen| -> BTreeSet<Uuid> {
        let mut s: BTreeSet<Uuid> = a.lock().expect("not poisoned").iter().copied().collect();
        s.extend(b.lock().expect("not poisoned").iter().copied());
        s
    };
    eventually(
        "every event is handled by one member or the other",
        WAIT,
        || {
            let done = all_seen(&a, &b).len();
            async move { done == expected }
        },
    )
    .await;
    assert_eq!(all_seen(&a, &b), ids, "nothing lost");
    let total = count(&a) + count(&b);
    eprintln!(
        "competing members: first {} second {} duplicates {}",
        count(&a),
        count(&b),
        total - expected
    );
    assert!(
        count(&a) > 100,
        "the first member handled more than the first batch"
    );
    // The first member leaves: the second takes every partition and
    // handles what is published next.
    first
        .shutdown(Duration::from_secs(10))
        .await
        .expect("stops");
    let before = count(&b);
    let batch3: Vec<_> = (0..50).map(|i| placed(&format!("C-{i}"))).collect();
    assert_eq!(second.publish_batch(batch3, false).await.published, 50);
    eventually(
        "the remaining member takes over every partition",
        WAIT,
        || {
            let n = count(&b);
            async move { n >= before + 50 }
        },
    )
    .await;
    second
        .shutdown(Duration::from_secs(10))
        .await
        .expect("stops");
}

/// Calls of each handler, by name.
type Calls = Arc<Mutex<BTreeMap<String, usize>>>;

fn counting(
    calls: &Calls,
    name: &str,
    fail: bool,
) -> impl Fn(Arc<Envelope<OrderPlaced>>) -> std::future::Ready<Result<(), HandlerError>>
+ Send
+ Sync
+ 'static {
    let calls = calls.clone();
    let name = name.to_owned();
    move |_e| {
        *calls
            .lock()
            .expect("not poisoned")
            .entry(name.clone())
            .or_default() += 1;
        std::future::ready(if fail {
            Err(HandlerError::new("boom: the handler always fails"))
        } else {
            Ok(())
        })
    }
}

fn calls_of(calls: &Calls, name: &str) -> usize {
    calls
        .lock()
        .expect("not poisoned")
        .get(name)
        .copied()
        .unwrap_or(0)
}

#[tokio::test]
async fn failures_retry_in_their_group_only_rerun_failed_handlers_then_dead_letter() {
    let tansu = Tansu::start();
    let prefix = prefix("retry");
    let calls = Calls::default();
    let flaky = builder(&tansu, &prefix)
        .configure(|c| {
            c.consumer_group = "flaky".into();
            c.max_retries = 2;
        })
        .handler::<OrderPlaced, _, _>("always_fails", counting(&calls, "always_fails", true))
        .handler::<OrderPlaced, _, _>("fine", counting(&calls, "fine", false))
        .build()
        .await
        .expect("connects");
    let steady = builder(&tansu, &prefix)
        .configure(|c| c.consumer_group = "steady".into())
        .handler::<OrderPlaced, _, _>("steady", counting(&calls, "steady", false))
        .build()
        .await
        .expect("connects");
    flaky.start_consuming().await.expect("consumes");
    steady.start_consuming().await.expect("consumes");
    let event = placed("C-retry");
    flaky.publish([event.clone()]).await.expect("published");
    let dlq = flaky.dlq("flaky");
    assert_eq!(dlq.queue_name(), format!("{prefix}.stream.dlq"));
    eventually("the event is dead-lettered after its retries", WAIT, || {
        let dlq = dlq.clone();
        async move { dlq.count().await.unwrap_or(0) == 1 }
    })
    .await;
    assert_eq!(
        calls_of(&calls, "always_fails"),
        3,
        "first attempt + 2 retries"
    );
    assert_eq!(
        calls_of(&calls, "fine"),
        1,
        "a retry runs only the failed handler"
    );
    assert_eq!(
        calls_of(&calls, "steady"),
        1,
        "the other group is not retried"
    );
    let retries = records(&tansu, &format!("{prefix}.stream.retry.flaky"));
    assert_eq!(retries.len(), 2);
    assert_eq!(retries[0].header("retry_count"), Some("1"));
    assert_eq!(retries[1].header("retry_count"), Some("2"));
    assert!(
        retries[0]
            .header("retry_after")
            .is_some_and(|t| t.parse::<f64>().is_ok())
    );
    assert_eq!(
        retries[0].header("eventbus_failed_handlers"),
        Some(r#"["always_fails"]"#)
    );
    let dead = records(&tansu, &format!("{prefix}.stream.dlq"));
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(
        d.key.as_deref(),
        Some(event.meta().aggregate_id().to_string().as_str())
    );
    assert_eq!(
        d.header("event_id"),
        Some(event.meta().event_id().to_string().as_str())
    );
    assert_eq!(d.header("dlq_reason"), Some("max_retries_exceeded"));
    assert_eq!(d.header("dlq_consumer_group"), Some("flaky"));
    assert_eq!(d.header("dlq_retry_count"), Some("2"));
    assert_eq!(d.header("dlq_handler"), Some("always_fails"));
    assert_eq!(
        d.header("eventbus_retry_group"),
        Some("flaky"),
        "made by eventbus: replayed to the group's retry topic"
    );
    assert_eq!(
        d.header("dlq_original_topic"),
        Some(format!("{prefix}.stream.retry.flaky").as_str())
    );
    assert!(d.header("dlq_original_offset").is_some());
    assert!(d.header("dlq_original_partition").is_some());
    assert!(
        d.header("dlq_timestamp")
            .is_some_and(|t| t.ends_with("+00:00"))
    );
    assert!(d.header("dlq_error_type").is_some());
    let message = d.header("dlq_error_message").expect("a message");
    assert!(
        message.contains("boom") && message.len() <= 1024,
        "{message}"
    );
    assert_eq!(d.header("retry_after"), None);
    assert_eq!(steady.dlq("steady").count().await.expect("count"), 0);

    // DLQ tooling: list and show leave it there; a replay reaches the
    // failing group only, and the replayed record leaves the listing.
    let listed = dlq.list(10).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].handler.as_deref(), Some("always_fails"));
    let id = event.meta().event_id().to_string();
    assert!(dlq.show(&id).await.expect("show").is_some());
    assert!(dlq.replay(&id).await.expect("replay"), "replayed");
    eventually(
        "the replay runs the failed handler again and dead-letters it again",
        WAIT,
        || {
            let dlq = dlq.clone();
            let calls = calls_of(&calls, "always_fails");
            async move { calls >= 6 && dlq.count().await.unwrap_or(0) == 1 }
        },
    )
    .await;
    assert_eq!(
        calls_of(&calls, "steady"),
        1,
        "the replay is for the failing group only"
    );
    assert_eq!(
        calls_of(&calls, "fine"),
        1,
        "only the failed handler runs again"
    );
    let again = dlq.list(10).await.expect("list");
    assert_eq!(again[0].headers.get("dlq_replay_count"), Some(&"1".into()));
    assert_eq!(dlq.purge().await.expect("purge"), 1);
    assert_eq!(dlq.count().await.expect("count"), 0);
    flaky
        .shutdown(Duration::from_secs(10))
        .await
        .expect("stops");
    // The retry topic is read by a consumer of its own, in the Kafka group
    // `flaky.retry`: every retry record (2, then 2 more after the replay) is
    // committed there, and the main group `flaky` holds no offset of it.
    let retry_topic = format!("{prefix}.stream.retry.flaky");
    let committed_end: i64 = committed(&tansu, "flaky.retry", &retry_topic)
        .iter()
        .map(|(_, o)| (*o).max(0))
        .sum();
    let written: i64 = records(&tansu, &retry_topic).len() as i64;
    assert_eq!(written, 5, "2 retries, the replay, then 2 more retries");
    assert_eq!(
        committed_end, written,
        "the retry group committed every retry record"
    );
    assert!(
        committed(&tansu, "flaky", &retry_topic)
            .iter()
            .all(|(_, o)| *o < 0),
        "the main group commits nothing on the retry topic"
    );
    steady
        .shutdown(Duration::from_secs(10))
        .await
        .expect("stops");
}

/// A retry waiting for its time holds up nothing: under strict ordering (one
/// lane for the whole group) a record published while a retry waits is
/// handled before it. The waiting retry held its permit and its turn: with
/// strict ordering, the whole group; with the default, its aggregate, and
/// once due it ran outside its aggregate's lane.
#[tokio::test]
async fn a_waiting_retry_holds_up_no_other_record() {
    let tansu = Tansu::start();
    let prefix = prefix("retry-wait");
    let flaky_attempts = Arc::new(AtomicUsize::new(0));
    let attempts_when_good = Arc::new(Mutex::new(None));
    let (a, w) = (flaky_attempts.clone(), attempts_when_good.clone());
    let bus = builder(&tansu, &prefix)
        .configure(|c| {
            c.ordering = eventbus::DeliveryOrder::Strict;
            c.max_retries = 1;
            // Far longer than reading and handling one record takes, even
            // on a loaded machine.
            c.retry_base_delay = Duration::from_secs(8);
            c.retry_max_delay = Duration::from_secs(8);
            c.retry_jitter = 0.0;
        })
        .handler::<OrderPlaced, _, _>("h", move |e: Arc<Envelope<OrderPlaced>>| {
            let result = if e.customer_id == "flaky" {
                // Fails the first time only.
                if a.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(HandlerError::new("not yet"))
                } else {
                    Ok(())
                }
            } else {
                *w.lock().expect("not poisoned") = Some(a.load(Ordering::SeqCst));
                Ok(())
            };
            std::future::ready(result)
        })
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    bus.publish([placed("flaky")]).await.expect("published");
    // The record and its retry copy are both read: the retry is waiting.
    eventually("the retry is read and waiting", WAIT, || {
        let consumed = bus.stats().events_consumed;
        async move { consumed >= 2 }
    })
    .await;
    bus.publish([placed("good")]).await.expect("published");
    eventually("the later record is handled", WAIT, || {
        let done = attempts_when_good.lock().expect("not poisoned").is_some();
        async move { done }
    })
    .await;
    assert_eq!(
        *attempts_when_good.lock().expect("not poisoned"),
        Some(1),
        "handled while the retry waited, not after it"
    );
    eventually("the retry ran once due", WAIT, || {
        let n = flaky_attempts.load(Ordering::SeqCst);
        async move { n == 2 }
    })
    .await;
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
    assert_eq!(bus.stats().messages_sent_to_dlq, 0);
}

#[tokio::test]
async fn malformed_records_go_to_the_dlq_at_once() {
    let tansu = Tansu::start();
    let prefix = prefix("malformed");
    let seen = Seen::default();
    let bus = builder(&tansu, &prefix)
        .handler::<OrderPlaced, _, _>("seen", seen_handler(&seen))
        .build()
        .await
        .expect("connects");
    let topic = format!("{prefix}.stream");
    let key = Uuid::new_v4().to_string();
    kafka::produce(&tansu, &topic, &key, None, &[("event_type", "OrderPlaced")]).await;
    kafka::produce(
        &tansu,
        &topic,
        &key,
        Some("{not json"),
        &[("event_type", "OrderPlaced")],
    )
    .await;
    kafka::produce(
        &tansu,
        &topic,
        &key,
        Some(r#"{"aggregate_id":"x"}"#),
        &[("event_type", "OrderPlaced")],
    )
    .await;
    kafka::produce(
        &tansu,
        &topic,
        &key,
        Some("{}"),
        &[("event_type", "SomethingElse")],
    )
    .await;
    let good = placed("C-ok");
    bus.publish([good.clone()]).await.expect("published");
    bus.start_consuming().await.expect("consumes");
    let dlq = bus.dlq("default");
    eventually(
        "the good event is handled and three are dead-lettered",
        WAIT,
        || {
            let n = count(&seen);
            let dlq = dlq.clone();
            async move { n == 1 && dlq.count().await.unwrap_or(0) == 3 }
        },
    )
    .await;
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
    let dead = records(&tansu, &format!("{prefix}.stream.dlq"));
    assert_eq!(dead.len(), 3);
    for d in &dead {
        assert_eq!(d.header("dlq_reason"), Some("deserialization_error"));
        assert_eq!(d.header("dlq_retry_count"), Some("0"));
        assert_eq!(d.header("dlq_consumer_group"), Some("default"));
        assert!(
            d.header("dlq_error_type")
                .is_some_and(|t| t.starts_with("DecodeError"))
        );
    }
    assert_eq!(bus.stats().messages_sent_to_dlq, 3);
    let all = records(&tansu, &topic);
    assert_eq!(all.len(), 5);
    let c = committed(&tansu, "default", &topic);
    for (p, o) in c {
        let end = all
            .iter()
            .filter(|r| r.partition == p)
            .map(|r| r.offset + 1)
            .max();
        if let Some(end) = end {
            assert_eq!(o, end, "partition {p} committed to its end");
        }
    }
}

#[test]
fn murmur2_matches_kafkas_published_vectors() {
    // Kafka's UtilsTest.testMurmur2.
    for (input, want) in [
        ("21", -973_932_308),
        ("foobar", -790_332_482),
        ("a-little-bit-long-string", -985_981_536),
        ("a-little-bit-longer-string", -1_486_304_829),
        (
            "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58_897_971,
        ),
        ("abc", 479_470_107),
    ] {
        assert_eq!(kafka::murmur2(input.as_bytes()), want, "{input}");
    }
}

#[tokio::test]
async fn a_key_lands_on_the_partition_aiokafka_and_java_choose() {
    let tansu = Tansu::start();
    let prefix = prefix("murmur");
    let bus = builder(&tansu, &prefix)
        .configure(|c| c.topic_partitions = 7)
        .build()
        .await
        .expect("connects");
    let events: Vec<_> = (0..50).map(|i| placed(&format!("C-{i}"))).collect();
    assert_eq!(bus.publish_batch(events, true).await.published, 50);
    let recs = records(&tansu, &format!("{prefix}.stream"));
    assert_eq!(recs.len(), 50);
    let mut used = BTreeSet::new();
    for r in &recs {
        let key = r.key.as_deref().expect("a key");
        assert_eq!(
            r.partition,
            kafka::java_partition(key.as_bytes(), 7),
            "key {key}"
        );
        used.insert(r.partition);
    }
    assert!(used.len() > 3, "keys spread over partitions: {used:?}");
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
}

#[tokio::test]
async fn offsets_are_never_committed_past_an_unhandled_record() {
    let tansu = Tansu::start();
    let prefix = prefix("offsets");
    let handled = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let blocked: Arc<Mutex<Option<Uuid>>> = Arc::default();
    let (h, r, b) = (handled.clone(), release.clone(), blocked.clone());
    let bus = builder(&tansu, &prefix)
        .configure(|c| c.topic_partitions = 1)
        .handler::<OrderPlaced, _, _>("gate", move |e: Arc<Envelope<OrderPlaced>>| {
            let (h, r) = (h.clone(), r.clone());
            let wait = *b.lock().expect("not poisoned") == Some(e.meta().event_id());
            async move {
                if wait {
                    r.notified().await;
                }
                h.fetch_add(1, Ordering::SeqCst);
                Ok::<_, HandlerError>(())
            }
        })
        .build()
        .await
        .expect("connects");
    let events: Vec<_> = (0..6).map(|i| placed(&format!("C-{i}"))).collect();
    *blocked.lock().expect("not poisoned") = Some(events[2].meta().event_id());
    assert_eq!(bus.publish_batch(events, true).await.published, 6);
    let topic = format!("{prefix}.stream");
    bus.start_consuming().await.expect("consumes");
    eventually("every record but the blocked one is handled", WAIT, || {
        let n = handled.load(Ordering::SeqCst);
        async move { n == 5 }
    })
    .await;
    eventually("the commit reaches the blocked record", WAIT, || {
        let c = committed(&tansu, "default", &topic);
        async move { c == [(0, 2)] }
    })
    .await;
    // Ten commit intervals later it is still there, not past it.
    let moved = tokio::time::timeout(
        Duration::from_secs(1),
        eventually("a commit past the blocked record", WAIT, || {
            let c = committed(&tansu, "default", &topic);
            async move { c != [(0, 2)] }
        }),
    )
    .await;
    assert!(moved.is_err(), "committed past an unhandled record");
    assert_eq!(bus.stats().events_processed_success, 5);
    release.notify_one();
    eventually("then everything is committed", WAIT, || {
        let c = committed(&tansu, "default", &topic);
        async move { c == [(0, 6)] }
    })
    .await;
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
}

#[tokio::test]
async fn shutdown_with_a_stuck_handler_returns_by_its_timeout_and_commits_the_rest() {
    let tansu = Tansu::start();
    let prefix = prefix("stuck");
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let bus = builder(&tansu, &prefix)
        .configure(|c| c.topic_partitions = 1)
        .handler::<OrderPlaced, _, _>("stuck", move |e: Arc<Envelope<OrderPlaced>>| {
            let h = h.clone();
            async move {
                if e.customer_id == "stuck" {
                    std::future::pending::<()>().await;
                }
                h.fetch_add(1, Ordering::SeqCst);
                Ok::<_, HandlerError>(())
            }
        })
        .build()
        .await
        .expect("connects");
    let events = vec![placed("a"), placed("b"), placed("stuck"), placed("c")];
    assert_eq!(bus.publish_batch(events, true).await.published, 4);
    bus.start_consuming().await.expect("consumes");
    eventually("the others are handled", WAIT, || {
        let n = handled.load(Ordering::SeqCst);
        async move { n == 3 }
    })
    .await;
    let started = std::time::Instant::now();
    let result = bus.shutdown(Duration::from_secs(2)).await;
    assert!(
        matches!(result, Err(eventbus::Error::ShutdownTimeout { .. })),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        committed(&tansu, "default", &format!("{prefix}.stream")),
        [(0, 2)],
        "committed up to the stuck record, not past it"
    );
}

/// The child side of [`a_member_killed_mid_handler_loses_nothing`]: a member
/// of group `workers` that records each event it handled in a file and
/// hangs forever in the handler of the event for customer `block`. Does
/// nothing unless the parent test started it.
#[test]
#[ignore = "run by a_member_killed_mid_handler_loses_nothing as a child process"]
fn kafka_child_member() {
    let (Ok(url), Ok(prefix), Ok(out)) = (
        std::env::var("KAFKA_CHILD_URL"),
        std::env::var("KAFKA_CHILD_PREFIX"),
        std::env::var("KAFKA_CHILD_OUT"),
    ) else {
        return;
    };
    // The parent holds our stdin: when it goes away, so do we.
    std::thread::spawn(|| {
        let mut sink = String::new();
        let _ = std::io::stdin().read_line(&mut sink);
        std::process::exit(0);
    });
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async move {
        let log = Arc::new(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&out)
                .expect("the output file"),
        ));
        let bus = eventbus::Bus::builder()
            .url(&url)
            .without_discovery()
            .configure(move |c| {
                c.topic_prefix = prefix;
                c.consumer_group = "workers".into();
                c.commit_interval_ms = 100;
                c.session_timeout_ms = 6000;
                c.heartbeat_interval_ms = 500;
                c.max_poll_interval_ms = 10_000;
            })
            .handler::<OrderPlaced, _, _>("work", move |e: Arc<Envelope<OrderPlaced>>| {
                let log = log.clone();
                async move {
                    use std::io::Write as _;
                    let id = e.meta().event_id();
                    if e.customer_id == "block" {
                        let _ = writeln!(log.lock().expect("not poisoned"), "started {id}");
                        std::future::pending::<()>().await;
                    }
                    let _ = writeln!(log.lock().expect("not poisoned"), "done {id}");
                    Ok::<_, HandlerError>(())
                }
            })
            .build()
            .await
            .expect("connects");
        bus.start_consuming().await.expect("consumes");
        std::future::pending::<()>().await;
    });
}

#[tokio::test]
async fn a_member_killed_mid_handler_loses_nothing() {
    let tansu = Tansu::start();
    let prefix = prefix("killed");
    let publisher = builder(&tansu, &prefix)
        .configure(|c| c.topic_partitions = 1)
        .build()
        .await
        .expect("connects");
    let events: Vec<_> = (0..20)
        .map(|i| placed(if i == 10 { "block" } else { "ok" }))
        .collect();
    let ids: Vec<Uuid> = events.iter().map(|e| e.meta().event_id()).collect();
    assert_eq!(publisher.publish_batch(events, true).await.published, 20);
    let out = std::env::temp_dir().join(format!("{prefix}.log"));
    let mut child = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", "kafka_child_member", "--ignored", "--nocapture"])
        .env("KAFKA_CHILD_URL", tansu.url())
        .env("KAFKA_CHILD_PREFIX", &prefix)
        .env("KAFKA_CHILD_OUT", &out)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the child member starts");
    let lines = |out: &std::path::Path| -> Vec<String> {
        std::fs::read_to_string(out)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let topic = format!("{prefix}.stream");
    eventually(
        "the child handled all but the blocked event and committed up to it",
        WAIT,
        || {
            let l = lines(&out);
            let c = committed(&tansu, "workers", &topic);
            async move {
                l.iter().filter(|l| l.starts_with("done")).count() == 19
                    && l.iter().any(|l| l.starts_with("started"))
                    && c == [(0, 10)]
            }
        },
    )
    .await;
    child.kill().expect("killed");
    let _ = child.wait();
    let child_done: BTreeSet<Uuid> = lines(&out)
        .iter()
        .filter_map(|l| l.strip_prefix("done "))
        .filter_map(|id| id.parse().ok())
        .collect();
    let _ = std::fs::remove_file(&out);
    // A new member takes the group over once the broker has given up on the dead one.
    let seen = Seen::default();
    let survivor = builder(&tansu, &prefix)
        .configure(|c| c.consumer_group = "workers".into())
        .handler::<OrderPlaced, _, _>("work", seen_handler(&seen))
        .build()
        .await
        .expect("connects");
    survivor.start_consuming().await.expect("consumes");
    eventually("the survivor handles the blocked event", WAIT, || {
        let got = seen.lock().expect("not poisoned").contains(&ids[10]);
        async move { got }
    })
    .await;
    eventually("and everything after it", WAIT, || {
        let n = count(&seen);
        async move { n >= 10 }
    })
    .await;
    let again: BTreeSet<Uuid> = seen.lock().expect("not poisoned").iter().copied().collect();
    let mut all = child_done.clone();
    all.extend(again.iter().copied());
    assert_eq!(all, ids.iter().copied().collect(), "nothing lost");
    assert!(
        again.iter().all(|id| ids[10..].contains(id)),
        "only the uncommitted tail is reprocessed"
    );
    let duplicates = child_done.intersection(&again).count();
    eprintln!(
        "killed member: child handled {}, survivor {}, duplicates {duplicates}",
        child_done.len(),
        again.len()
    );
    assert_eq!(
        duplicates, 9,
        "the nine handled after the blocked one run again"
    );
    survivor
        .shutdown(Duration::from_secs(10))
        .await
        .expect("stops");
}

#[tokio::test]
async fn sasl_credentials_the_broker_refuses_fail_closed_without_the_password() {
    let tansu = Tansu::start_authenticating();
    let password = "not-the-password-5e1f";
    let connect = Duration::from_secs(5);
    let started = std::time::Instant::now();
    let refused = builder(&tansu, &prefix("sasl"))
        .configure(|c| {
            c.security_protocol = "SASL_PLAINTEXT".into();
            c.sasl_mechanism = Some("SCRAM-SHA-512".into());
            c.sasl_username = Some("alice".into());
            c.sasl_password = Some(eventbus::Secret::new(password));
            c.connect_timeout = connect;
        })
        .build()
        .await
        .expect_err("the broker refuses these credentials");
    let took = started.elapsed();
    eprintln!("refused in {took:?}: {refused}");
    assert!(
        matches!(refused, eventbus::Error::Connect { .. }),
        "{refused:?}"
    );
    assert!(took <= connect + Duration::from_secs(3), "took {took:?}");
    let shown = format!("{refused} {refused:?}");
    assert!(!shown.contains(password), "the password leaked: {shown}");
}
