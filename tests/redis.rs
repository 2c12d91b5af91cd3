//! The Redis Streams transport against the real Redis on 127.0.0.1:6379:
//! round trip, consumer groups, competing members, per-aggregate order,
//! recovery of a dead member's entries, malformed entries.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::redis_scope::{RedisScope, field};
use common::{OrderPlaced, OrderShipped, eventually, placed, shipped};
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

/// Creates the group `default` on the scope's stream, from its start.
fn create_default_group(scope: &RedisScope, conn: &mut redis::Connection) {
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(scope.stream())
        .arg("default")
        .arg("0")
        .arg("MKSTREAM")
        .query(conn)
        .expect("group");
}

/// What a member that dies before acking does: reads every new entry of
/// the group `default` as `consumer`, leaving them pending.
fn read_without_acking(scope: &RedisScope, conn: &mut redis::Connection, consumer: &str) {
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("default")
        .arg(consumer)
        .arg("COUNT")
        .arg(100)
        .arg("STREAMS")
        .arg(scope.stream())
        .arg(">")
        .query(conn)
        .expect("read");
}

fn once_each(seen: &Seen, ids: &BTreeSet<Uuid>) {
    let seen = seen.lock().expect("not poisoned");
    let unique: BTreeSet<Uuid> = seen.iter().copied().collect();
    assert_eq!(seen.len(), unique.len(), "no event handled twice");
    assert_eq!(&unique, ids, "every event handled");
}

#[tokio::test]
async fn round_trip_writes_eventsource_py_fields_and_delivers_every_field() {
    let scope = RedisScope::new("roundtrip");
    let got: Arc<Mutex<Vec<Envelope<OrderPlaced>>>> = Arc::default();
    let g = got.clone();
    let bus = scope
        .builder()
        .handler::<OrderPlaced, _, _>("record", move |e: Arc<Envelope<OrderPlaced>>| {
            g.lock().expect("not poisoned").push((*e).clone());
            std::future::ready(Ok::<_, HandlerError>(()))
        })
        .build()
        .await
        .expect("connects");
    assert_eq!(bus.transport_name(), "redis");
    bus.start_consuming().await.expect("consumes");
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

    let entries = scope.entries(&scope.stream());
    assert_eq!(entries.len(), 1);
    let (_, fields) = &entries[0];
    let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "event_id",
            "event_type",
            "aggregate_id",
            "aggregate_type",
            "tenant_id",
            "occurred_at",
            "payload"
        ]
    );
    assert_eq!(
        field(fields, "event_id"),
        Some(event.meta().event_id().to_string().as_str())
    );
    assert_eq!(field(fields, "event_type"), Some("OrderPlaced"));
    assert_eq!(field(fields, "aggregate_type"), Some("Order"));
    assert_eq!(
        field(fields, "tenant_id"),
        Some(tenant.to_string().as_str())
    );
    let occurred = field(fields, "occurred_at").expect("occurred_at");
    assert!(occurred.ends_with("+00:00"), "{occurred}");
    let payload: serde_json::Value =
        serde_json::from_str(field(fields, "payload").expect("payload")).expect("JSON");
    assert_eq!(payload["customer_id"], "C-1");
    assert_eq!(payload["actor_id"], "tester");

    bus.shutdown(Duration::from_secs(10))
        .await
        .expect("clean shutdown");
    assert_eq!(scope.pending("default"), 0, "acked");
    let stats = bus.stats();
    assert_eq!(
        (stats.events_published, stats.events_processed_success),
        (1, 1)
    );
}

#[tokio::test]
async fn several_groups_each_receive_every_event_once() {
    let scope = RedisScope::new("groups");
    let (a, b) = (Seen::default(), Seen::default());
    let billing = scope
        .builder()
        .configure(|c| c.consumer_group = "billing".into())
        .handler::<OrderPlaced, _, _>("billing", seen_handler(&a))
        .build()
        .await
        .expect("connects");
    let audit = scope
        .builder()
        .configure(|c| c.consumer_group = "audit".into())
        .handler::<OrderPlaced, _, _>("audit", seen_handler(&b))
        .build()
        .await
        .expect("connects");
    billing.start_consuming().await.expect("consumes");
    audit.start_consuming().await.expect("consumes");
    let events: Vec<_> = (0..300).map(|i| placed(&format!("C-{i}"))).collect();
    let ids: BTreeSet<Uuid> = events.iter().map(|e| e.meta().event_id()).collect();
    let report = billing.publish_batch(events, false).await;
    assert_eq!(report.published, 300, "{:?}", report.errors);
    eventually("both groups got everything", WAIT, || {
        let done = count(&a) >= 300 && count(&b) >= 300;
        async move { done }
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
    once_each(&a, &ids);
    once_each(&b, &ids);
    assert_eq!(scope.pending("billing") + scope.pending("audit"), 0);
    let info = audit.stream_info().await.expect("stream info");
    let groups: Vec<(&str, u64)> = info
        .consumer_groups
        .iter()
        .map(|g| (g.name.as_str(), g.pending))
        .collect();
    assert_eq!(groups, [("audit", 0), ("billing", 0)]);
    assert_eq!(
        (info.stream.length, info.pending_messages, info.dlq_messages),
        (300, 0, 0)
    );
}

#[tokio::test]
async fn competing_members_of_one_group_share_the_entries() {
    let scope = RedisScope::new("compete");
    let (a, b) = (Seen::default(), Seen::default());
    let mut buses = Vec::new();
    for (name, seen) in [("member-a", &a), ("member-b", &b)] {
        let bus = scope
            .builder()
            .configure(move |c| c.consumer_name = Some(name.into()))
            .handler::<OrderPlaced, _, _>("h", seen_handler(seen))
            .build()
            .await
            .expect("connects");
        bus.start_consuming().await.expect("consumes");
        buses.push(bus);
    }
    let events: Vec<_> = (0..400).map(|i| placed(&format!("C-{i}"))).collect();
    let ids: BTreeSet<Uuid> = events.iter().map(|e| e.meta().event_id()).collect();
    for chunk in events.chunks(20) {
        buses[0].publish(chunk.to_vec()).await.expect("published");
    }
    eventually("the group got everything", WAIT, || {
        let done = count(&a) + count(&b) >= 400;
        async move { done }
    })
    .await;
    let info = buses[0].stream_info().await.expect("stream info");
    assert_eq!(info.stream.length, 400);
    let group = info
        .consumer_groups
        .iter()
        .find(|g| g.name == "default")
        .expect("the group");
    assert_eq!(group.consumers, 2);
    for bus in &buses {
        bus.shutdown(Duration::from_secs(10)).await.expect("stops");
    }
    let all: Seen = Arc::new(Mutex::new(
        a.lock()
            .expect("ok")
            .iter()
            .chain(b.lock().expect("ok").iter())
            .copied()
            .collect(),
    ));
    once_each(&all, &ids);
    assert_eq!(scope.pending("default"), 0);
}

#[tokio::test]
async fn events_of_one_aggregate_are_handled_in_order() {
    let scope = RedisScope::new("order");
    let log: Arc<Mutex<BTreeMap<Uuid, Vec<u64>>>> = Arc::default();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (l, f, p) = (log.clone(), in_flight.clone(), peak.clone());
    let bus = scope
        .builder()
        .handler::<OrderPlaced, _, _>("slow", move |e: Arc<Envelope<OrderPlaced>>| {
            let (l, f, p) = (l.clone(), f.clone(), p.clone());
            async move {
                let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                // Varying handler times: later versions often finish first if unordered.
                let jitter = e.meta().event_id().as_u128() % 5;
                tokio::time::sleep(Duration::from_millis(jitter as u64)).await;
                l.lock()
                    .expect("not poisoned")
                    .entry(e.meta().aggregate_id())
                    .or_default()
                    .push(e.meta().aggregate_version());
                f.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, HandlerError>(())
            }
        })
        .build()
        .await
        .expect("connects");
    let aggregates: Vec<Uuid> = (0..10).map(|_| Uuid::new_v4()).collect();
    let mut events = Vec::new();
    for version in 1..=20u64 {
        for id in &aggregates {
            events.push(
                Envelope::new(
                    *id,
                    OrderPlaced {
                        customer_id: "C".into(),
                        total_amount: 1.0,
                    },
                )
                .aggregate_version(version),
            );
        }
    }
    bus.publish(events).await.expect("published");
    bus.start_consuming().await.expect("consumes");
    eventually("every event handled", WAIT, || {
        let n: usize = log.lock().expect("ok").values().map(Vec::len).sum();
        async move { n == 200 }
    })
    .await;
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
    for (id, versions) in log.lock().expect("ok").iter() {
        assert_eq!(*versions, (1..=20).collect::<Vec<_>>(), "aggregate {id}");
    }
    assert!(
        peak.load(Ordering::SeqCst) > 1,
        "aggregates ran concurrently"
    );
}

#[tokio::test]
async fn entries_of_a_dead_member_are_claimed_and_handled_by_a_live_one() {
    let scope = RedisScope::new("recover");
    let seen = Seen::default();
    // The dead member: takes entries with XREADGROUP and never acks them.
    let publisher = scope
        .builder()
        .event::<OrderPlaced>()
        .build()
        .await
        .expect("connects");
    let mut conn = scope.conn();
    create_default_group(&scope, &mut conn);
    let events: Vec<_> = (0..20).map(|i| placed(&format!("C-{i}"))).collect();
    let ids: BTreeSet<Uuid> = events.iter().map(|e| e.meta().event_id()).collect();
    publisher.publish(events).await.expect("published");
    read_without_acking(&scope, &mut conn, "dead-member");
    assert_eq!(scope.pending("default"), 20, "the dead member holds them");

    let live = scope
        .builder()
        .configure(|c| c.pending_idle_ms = 300)
        .handler::<OrderPlaced, _, _>("h", seen_handler(&seen))
        .build()
        .await
        .expect("connects");
    live.start_consuming().await.expect("consumes");
    eventually(
        "the live member handled the dead one's entries",
        WAIT,
        || {
            let n = count(&seen);
            async move { n >= 20 }
        },
    )
    .await;
    live.shutdown(Duration::from_secs(10)).await.expect("stops");
    once_each(&seen, &ids);
    assert_eq!(scope.pending("default"), 0);
    assert_eq!(live.stats().messages_recovered, 20);
    // Nothing pending is left: an explicit recovery finds nothing (and needs a consumer).
    assert!(live.recover_pending().await.is_err(), "not consuming");
}

/// A member restarted under the same fixed name (a StatefulSet pod) takes
/// back what its previous process left pending, and goes on reading. It took
/// them back while holding every in-flight permit, and each waited for a
/// permit: the group never read again and shutdown timed out.
#[tokio::test]
async fn a_member_restarted_under_its_name_takes_back_its_pending_entries_and_goes_on() {
    let scope = RedisScope::new("same-name");
    let seen = Seen::default();
    let publisher = scope
        .builder()
        .event::<OrderPlaced>()
        .build()
        .await
        .expect("connects");
    let mut conn = scope.conn();
    create_default_group(&scope, &mut conn);
    let events: Vec<_> = (0..5).map(|i| placed(&format!("C-{i}"))).collect();
    let mut ids: BTreeSet<Uuid> = events.iter().map(|e| e.meta().event_id()).collect();
    publisher.publish(events).await.expect("published");
    // The previous process of "pod-0": read, then died before acking.
    read_without_acking(&scope, &mut conn, "pod-0");
    assert_eq!(scope.pending("default"), 5, "pod-0 left them pending");

    let restarted = scope
        .builder()
        .configure(|c| c.consumer_name = Some("pod-0".to_owned()))
        .handler::<OrderPlaced, _, _>("h", seen_handler(&seen))
        .build()
        .await
        .expect("connects");
    restarted.start_consuming().await.expect("consumes");
    let after = placed("C-new");
    ids.insert(after.meta().event_id());
    publisher.publish([after]).await.expect("published");
    eventually(
        "the restarted member handled its old entries and the new one",
        WAIT,
        || {
            let n = count(&seen);
            async move { n >= 6 }
        },
    )
    .await;
    restarted
        .shutdown(Duration::from_secs(10))
        .await
        .expect("stops in time");
    once_each(&seen, &ids);
    assert_eq!(scope.pending("default"), 0);
}

/// Entries queued behind their aggregate longer than `pending_idle_ms` are
/// not taken back by their own member's recovery: their idle time counts
/// from the read. They were claimed by the member itself and run a second
/// time, behind the first copy.
#[tokio::test]
async fn recovery_leaves_alone_what_this_member_is_still_handling() {
    let scope = RedisScope::new("queued-not-idle");
    let seen = Seen::default();
    let s = seen.clone();
    let bus = scope
        .builder()
        .configure(|c| {
            c.pending_idle_ms = 300;
            c.ordering = eventbus::DeliveryOrder::Strict;
        })
        .handler::<OrderPlaced, _, _>("slow", move |e: Arc<Envelope<OrderPlaced>>| {
            let s = s.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                s.lock().expect("not poisoned").push(e.meta().event_id());
                Ok::<_, HandlerError>(())
            }
        })
        .build()
        .await
        .expect("connects");
    // Published before consuming starts: one read takes them all, and the
    // last waits about 1.5 s for its turn, five times pending_idle_ms.
    let events: Vec<_> = (0..30).map(|i| placed(&format!("C-{i}"))).collect();
    let ids: BTreeSet<Uuid> = events.iter().map(|e| e.meta().event_id()).collect();
    bus.publish(events).await.expect("published");
    bus.start_consuming().await.expect("consumes");
    eventually("every event handled", WAIT, || {
        let n = count(&seen);
        async move { n >= 30 }
    })
    .await;
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
    once_each(&seen, &ids);
    assert_eq!(bus.stats().messages_recovered, 0);
    assert_eq!(scope.pending("default"), 0);
}

/// A retry that crashes its consumers every time is dead-lettered once Redis
/// has delivered it more than `max_retries + 1` times. The limit was only
/// checked for entries without retry state, so such a retry came back
/// forever. The state a crash loop leaves is made here with the commands the
/// bus itself runs: a failed first attempt's state, taken off the schedule,
/// then delivered (XCLAIM) by members that died with it.
#[tokio::test]
async fn a_retry_that_keeps_crashing_its_consumers_is_dead_lettered() {
    let scope = RedisScope::new("retry-crash-loop");
    let publisher = scope
        .builder()
        .event::<OrderPlaced>()
        .build()
        .await
        .expect("connects");
    let mut conn = scope.conn();
    create_default_group(&scope, &mut conn);
    publisher.publish([placed("C-1")]).await.expect("published");
    read_without_acking(&scope, &mut conn, "died-0");
    let ids: Vec<String> = redis::cmd("XRANGE")
        .arg(scope.stream())
        .arg("-")
        .arg("+")
        .query::<Vec<(String, Vec<(String, String)>)>>(&mut conn)
        .expect("range")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids.len(), 1);
    let id = &ids[0];
    let mut config = eventbus::Config::default();
    config.stream_prefix = scope.prefix.clone();
    let _: () = redis::cmd("HSET")
        .arg(config.retry_state_key("default"))
        .arg(format!("m|{id}"))
        .arg(r#"{"attempt":1,"failed":["h"]}"#)
        .query(&mut conn)
        .expect("retry state");
    // Four more deliveries, each to a member that died with it: 5 > 3 + 1.
    for n in 1..=4 {
        let _: redis::Value = redis::cmd("XCLAIM")
            .arg(scope.stream())
            .arg("default")
            .arg(format!("died-{n}"))
            .arg(0)
            .arg(id)
            .query(&mut conn)
            .expect("claimed");
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let live = scope
        .builder()
        .configure(|c| {
            c.pending_idle_ms = 300;
            c.max_retries = 3;
        })
        .handler::<OrderPlaced, _, _>("h", move |_e| {
            c.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok::<_, HandlerError>(()))
        })
        .build()
        .await
        .expect("connects");
    live.start_consuming().await.expect("consumes");
    let dlq = live.dlq("default");
    eventually("the crash-looping retry is dead-lettered", WAIT, || {
        let dlq = dlq.clone();
        async move { dlq.count().await.unwrap_or(0) == 1 }
    })
    .await;
    let listed = dlq.list(10).await.expect("lists");
    assert_eq!(
        listed[0].error_type.as_deref(),
        Some("DeliveryLimitExceeded"),
        "{listed:?}"
    );
    live.shutdown(Duration::from_secs(10)).await.expect("stops");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "not run a sixth time");
    assert_eq!(scope.pending("default"), 0);
}

#[tokio::test]
async fn malformed_entries_go_to_the_dlq_at_once_and_foreign_types_are_skipped() {
    let scope = RedisScope::new("malformed");
    let seen = Seen::default();
    let bus = scope
        .builder()
        .handler::<OrderPlaced, _, _>("h", seen_handler(&seen))
        .build()
        .await
        .expect("connects");
    let mut conn = scope.conn();
    let stream = scope.stream();
    let xadd = |conn: &mut redis::Connection, fields: &[(&str, &str)]| -> String {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&stream).arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        cmd.query(conn).expect("XADD")
    };
    let no_payload = xadd(&mut conn, &[("event_type", "OrderPlaced")]);
    let bad_json = xadd(
        &mut conn,
        &[("event_type", "OrderPlaced"), ("payload", "{not json")],
    );
    let wrong_body = xadd(
        &mut conn,
        &[
            ("event_type", "OrderPlaced"),
            ("payload", r#"{"aggregate_id":"x"}"#),
        ],
    );
    let _foreign = xadd(
        &mut conn,
        &[("event_type", "SomethingElse"), ("payload", "{}")],
    );
    let good = placed("C-ok");
    bus.publish([good.clone()]).await.expect("published");
    bus.start_consuming().await.expect("consumes");
    eventually(
        "the good event is handled and three are dead-lettered",
        WAIT,
        || {
            let n = count(&seen);
            let dlq = bus.dlq("default");
            async move { n == 1 && dlq.count().await.unwrap_or(0) == 3 }
        },
    )
    .await;
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
    assert_eq!(
        scope.pending("default"),
        0,
        "all acked, the foreign one too"
    );
    let dead = scope.entries(&scope.dlq());
    let originals: Vec<&str> = dead
        .iter()
        .filter_map(|(_, f)| field(f, "original_message_id"))
        .collect();
    assert_eq!(
        originals,
        [no_payload.as_str(), bad_json.as_str(), wrong_body.as_str()]
    );
    for (_, f) in &dead {
        assert_eq!(field(f, "retry_count"), Some("0"));
        assert_eq!(field(f, "dlq_group"), Some("default"));
        assert!(field(f, "dlq_timestamp").is_some_and(|t| t.ends_with("+00:00")));
        let reason = field(f, "dlq_reason").expect("reason");
        assert!(!reason.is_empty() && reason.len() <= 1024, "{reason}");
        assert!(field(f, "dlq_error_type").is_some_and(|t| t.starts_with("DecodeError::")));
    }
    assert!(
        field(&dead[1].1, "dlq_reason").is_some_and(|r| r.contains("JSON")),
        "{:?}",
        dead[1]
    );
}

#[tokio::test]
async fn shipped_and_placed_share_the_stream_and_unhandled_types_are_acked() {
    let scope = RedisScope::new("types");
    let seen = Seen::default();
    let bus = scope
        .builder()
        .event::<OrderShipped>()
        .handler::<OrderPlaced, _, _>("h", seen_handler(&seen))
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    let p = placed("C");
    bus.publish([
        eventbus::AnyEnvelope::from(shipped("T-1")),
        p.clone().into(),
    ])
    .await
    .expect("published");
    eventually("the placed event is handled", WAIT, || {
        let n = count(&seen);
        async move { n == 1 }
    })
    .await;
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
    assert_eq!(scope.pending("default"), 0);
    assert_eq!(scope.entries(&scope.stream()).len(), 2);
}

#[tokio::test]
async fn trimming_is_off_by_default_and_maxlen_or_max_age_trim_on_publish() {
    let scope = RedisScope::new("trim");
    let untrimmed = scope
        .builder()
        .event::<OrderPlaced>()
        .build()
        .await
        .expect("connects");
    let batch: Vec<_> = (0..500).map(|i| placed(&format!("C-{i}"))).collect();
    untrimmed.publish(batch.clone()).await.expect("published");
    assert_eq!(scope.entries(&scope.stream()).len(), 500, "off by default");

    let capped = scope
        .builder()
        .event::<OrderPlaced>()
        .configure(|c| c.stream_maxlen = Some(100))
        .build()
        .await
        .expect("connects");
    capped.publish(batch.clone()).await.expect("published");
    let len = scope.entries(&scope.stream()).len();
    // `MAXLEN ~` trims whole nodes: about 100, never below.
    assert!((100..=300).contains(&len), "length {len}");

    // Entries older than the age are trimmed (`MINID ~`): ids from 1970 here.
    let mut conn = scope.conn();
    let _: () = redis::cmd("DEL")
        .arg(scope.stream())
        .query(&mut conn)
        .expect("DEL");
    for i in 1..=300 {
        let _: String = redis::cmd("XADD")
            .arg(scope.stream())
            .arg(format!("{i}-0"))
            .arg("event_type")
            .arg("Old")
            .arg("payload")
            .arg("{}")
            .query(&mut conn)
            .expect("XADD");
    }
    let aged = scope
        .builder()
        .event::<OrderPlaced>()
        .configure(|c| c.stream_max_age = Some(Duration::from_secs(3600)))
        .build()
        .await
        .expect("connects");
    let fresh = placed("fresh");
    aged.publish([fresh.clone()]).await.expect("published");
    let entries = scope.entries(&scope.stream());
    assert!(
        entries.len() < 301,
        "old entries trimmed: {}",
        entries.len()
    );
    let last = &entries.last().expect("the fresh one").1;
    assert_eq!(
        field(last, "event_id"),
        Some(fresh.meta().event_id().to_string().as_str())
    );
}

/// One step of a ledger, as `src/bin/ledger_consumer.rs` handles it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, eventbus::DomainEvent)]
#[event(aggregate = "Ledger")]
struct Step {
    seq: u32,
}

/// A `ledger_consumer` process on the scope's stream; returns once it runs.
fn ledger_consumer(
    scope: &RedisScope,
    envs: &[(&str, &str)],
) -> (common::ChildGuard, std::sync::mpsc::Receiver<String>) {
    use std::process::{Command, Stdio};
    let mut command = Command::new(env!("CARGO_BIN_EXE_ledger_consumer"));
    command
        .env("EVENTBUS_URL", &scope.url)
        .env("EVENTBUS_STREAM_PREFIX", &scope.prefix)
        .env("EVENTBUS_BLOCK_MS", "500")
        .env("RUST_LOG", "eventbus=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        command.env(k, v);
    }
    let mut child = common::ChildGuard(command.spawn().expect("ledger_consumer starts"));
    let stdout = common::lines(child.0.stdout.take().expect("piped"));
    let stderr = common::lines(child.0.stderr.take().expect("piped"));
    loop {
        let line = stderr
            .recv_timeout(WAIT)
            .expect("the consumer reports it runs");
        if line.contains("eventbus running") {
            break;
        }
    }
    std::thread::spawn(move || while stderr.recv().is_ok() {});
    (child, stdout)
}

#[tokio::test]
async fn a_consumer_killed_mid_handler_leaves_its_entries_to_a_live_member_in_order() {
    let scope = RedisScope::new("killed");
    let publisher = scope
        .builder()
        .event::<Step>()
        .build()
        .await
        .expect("connects");
    let aggregates: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    let mut events = Vec::new();
    for seq in 0..10u32 {
        for id in &aggregates {
            events.push(Envelope::new(*id, Step { seq }).aggregate_version(u64::from(seq) + 1));
        }
    }
    // The first member hangs in the handler of step 5 of every aggregate.
    let (mut dying, dying_out) = ledger_consumer(
        &scope,
        &[
            ("LEDGER_HANG_SEQ", "5"),
            ("EVENTBUS_CONSUMER_NAME", "dying"),
        ],
    );
    publisher.publish(events).await.expect("published");
    let mut first: Vec<String> = Vec::new();
    while first.iter().filter(|l| l.starts_with("hang")).count() < aggregates.len() {
        first.push(
            dying_out
                .recv_timeout(WAIT)
                .expect("the first member works"),
        );
    }
    dying.0.kill().expect("kill -9");
    dying.0.wait().expect("reaped");
    while let Ok(line) = dying_out.recv_timeout(Duration::from_secs(5)) {
        first.push(line);
    }
    assert!(
        scope.pending("ledger") >= 4 * 5,
        "the dead member held steps 5..9"
    );

    // A live member claims what the dead one left once it is idle long enough.
    let (_live, live_out) = ledger_consumer(
        &scope,
        &[
            ("EVENTBUS_PENDING_IDLE_MS", "500"),
            ("EVENTBUS_CONSUMER_NAME", "live"),
        ],
    );
    let mut second: BTreeMap<Uuid, Vec<u32>> = BTreeMap::new();
    let claimed = |m: &BTreeMap<Uuid, Vec<u32>>| m.values().flatten().filter(|s| **s >= 5).count();
    while claimed(&second) < 4 * 5 {
        let line = live_out
            .recv_timeout(WAIT)
            .expect("the live member handles the rest");
        let mut parts = line.split_whitespace();
        if parts.next() == Some("done") {
            let id: Uuid = parts.next().expect("id").parse().expect("uuid");
            let seq: u32 = parts.next().expect("seq").parse().expect("seq");
            second.entry(id).or_default().push(seq);
        }
    }
    for id in &aggregates {
        let done_first: BTreeSet<u32> = first
            .iter()
            .filter(|l| l.starts_with("done") && l.contains(&id.to_string()))
            .filter_map(|l| l.split_whitespace().nth(2)?.parse().ok())
            .collect();
        assert_eq!(done_first, (0..5).collect(), "first member of {id}");
        let again = &second[id];
        // An ack still in flight when the process died means a step runs again
        // (at least once); the claimed ones run in order after it.
        assert!(again.is_sorted(), "claimed in order for {id}: {again:?}");
        let tail: Vec<u32> = again.iter().copied().filter(|s| *s >= 5).collect();
        assert_eq!(tail, (5..10).collect::<Vec<_>>(), "claimed for {id}");
    }
    eventually("everything acked", WAIT, || {
        let n = scope.pending("ledger");
        async move { n == 0 }
    })
    .await;
}

#[tokio::test]
async fn a_group_subscribed_at_runtime_starts_consuming() {
    let scope = RedisScope::new("runtime");
    let bus = scope
        .builder()
        .configure(|c| c.consumer_group = "late".into())
        .wildcard_handler("early", Some("early"), |_e: eventbus::AnyEnvelope| {
            std::future::ready(Ok::<_, HandlerError>(()))
        })
        .event::<OrderPlaced>()
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes group early");
    let seen = Seen::default();
    bus.subscribe_named::<OrderPlaced, _, _>("late", seen_handler(&seen))
        .expect("subscribes");
    let event = placed("C-late");
    bus.publish([event.clone()]).await.expect("published");
    eventually("the new group handles it", WAIT, || {
        let n = count(&seen);
        async move { n == 1 }
    })
    .await;
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
    assert_eq!(seen.lock().expect("ok")[0], event.meta().event_id());
    assert_eq!(scope.pending("late") + scope.pending("early"), 0);
}

/// `shutdown(timeout)` returns by `timeout` even when a handler never ends
/// and the configured shutdown timeout is much longer; the stuck entry stays
/// pending and a live member of the group claims it after the idle time.
#[tokio::test]
async fn shutdown_returns_by_its_timeout_and_a_stuck_entry_is_claimed_by_the_next_member() {
    let scope = RedisScope::new("stuck");
    common::assert_stuck_shutdown_returns_by_its_timeout(scope.builder()).await;
    assert_eq!(scope.pending("default"), 1, "the stuck entry was not acked");
    let seen = Seen::default();
    let next = scope
        .builder()
        .configure(|c| c.pending_idle_ms = 500)
        .handler::<OrderPlaced, _, _>("next", seen_handler(&seen))
        .build()
        .await
        .expect("connects");
    next.start_consuming().await.expect("consumes");
    eventually("the next member claimed the stuck entry", WAIT, || {
        let done = count(&seen) == 1;
        async move { done }
    })
    .await;
    next.shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
    assert_eq!(scope.pending("default"), 0);
}
