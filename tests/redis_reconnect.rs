//! Redis restarted mid-run: a `redis-server` this test starts on a port of its
//! own and stops by its pid (never the machine's shared one). The bus reports
//! the outage, reconnects with backoff, recreates its consumer group and
//! handles what is published afterwards; nothing is acked that was not handled.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::redis_scope::RedisScope;
use common::{ChildGuard, OrderPlaced, eventually, placed};
use eventbus::{Envelope, HandlerError};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A private redis-server without persistence, answering PING.
async fn start_redis(port: u16, dir: &std::path::Path) -> ChildGuard {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server runs (apt-get install redis-server)");
    let guard = ChildGuard(child);
    let url = format!("redis://127.0.0.1:{port}/0");
    eventually("the private redis-server answers", WAIT, || {
        let up = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok();
        async move { up }
    })
    .await;
    guard
}

fn stop(mut server: ChildGuard) {
    server.0.kill().expect("kill our redis-server");
    server.0.wait().expect("reaped");
}

#[tokio::test]
async fn a_restarted_redis_is_reconnected_to_and_consuming_resumes() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("eventbus-redis-{port}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let server = start_redis(port, &dir).await;
    let scope = RedisScope::on("reconnect", &format!("redis://127.0.0.1:{port}/0"));
    let seen: Arc<Mutex<Vec<Uuid>>> = Arc::default();
    let s = seen.clone();
    let bus = scope
        .builder()
        .configure(|c| {
            c.socket_timeout = Duration::from_secs(1);
            c.socket_connect_timeout = Duration::from_millis(500);
        })
        .handler::<OrderPlaced, _, _>("h", move |e: Arc<Envelope<OrderPlaced>>| {
            s.lock().expect("ok").push(e.meta().event_id());
            std::future::ready(Ok::<_, HandlerError>(()))
        })
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    let before: Vec<_> = (0..10).map(|i| placed(&format!("B-{i}"))).collect();
    bus.publish(before.clone()).await.expect("published");
    eventually("the first events are handled", WAIT, || {
        let n = seen.lock().expect("ok").len();
        async move { n == 10 }
    })
    .await;
    assert!(bus.health_check().await.healthy);

    stop(server);
    eventually("the outage shows in health", WAIT, || {
        let bus = bus.clone();
        async move {
            let h = bus.health_check().await;
            !h.healthy && !h.connected && h.error.is_some()
        }
    })
    .await;

    let server = start_redis(port, &dir).await;
    let after: Vec<_> = (0..10).map(|i| placed(&format!("A-{i}"))).collect();
    // Retries the dropped connection until confirm_timeout.
    bus.publish(after.clone())
        .await
        .expect("published after the restart");
    eventually("the later events are handled", WAIT, || {
        let n = seen.lock().expect("ok").len();
        async move { n == 20 }
    })
    .await;
    eventually("healthy again", WAIT, || {
        let bus = bus.clone();
        async move { bus.health_check().await.healthy }
    })
    .await;
    assert!(bus.stats().reconnections >= 1);
    bus.shutdown(Duration::from_secs(10)).await.expect("stops");
    let ids: BTreeSet<Uuid> = before
        .iter()
        .chain(&after)
        .map(|e| e.meta().event_id())
        .collect();
    let got: BTreeSet<Uuid> = seen.lock().expect("ok").iter().copied().collect();
    assert_eq!(got, ids);
    assert_eq!(seen.lock().expect("ok").len(), 20, "each once");
    assert_eq!(scope.pending("default"), 0);
    drop(scope);
    stop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
