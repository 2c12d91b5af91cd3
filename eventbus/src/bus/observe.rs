//! Watching a bus: `/metrics` (OpenMetrics text for Prometheus),
//! `/health/live` and `/health/ready` (for Kubernetes probes), and the
//! sampler that keeps the queue-depth and consumer gauges current.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::error::Error;
use crate::metrics::{self, GroupKey, QueueKey};
use crate::runtime::HealthStatus;
use crate::transport::Transport;

use super::Bus;

/// The content type of the OpenMetrics text format.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
struct Served {
    bus: Bus,
    registry: Arc<Registry>,
}

impl Bus {
    /// The metrics in the OpenMetrics text format, as `/metrics` serves them.
    ///
    /// Counters end in `_total`, durations are histograms in `_seconds`;
    /// labels are the group, handler, event type and outcome, never an id.
    /// Queue depths and consumer state are as of the last sample (see
    /// [`Bus::sample_metrics`]).
    pub fn metrics_text(&self) -> String {
        metrics::encode(&metrics::registry(&self.ctx.stats))
    }

    /// Samples what the broker knows: whether the bus is connected, whether
    /// each group's consumer runs, and how many messages wait in each group's
    /// queue and dead-letter queue. `run()` does this every
    /// `metrics_interval` while it serves metrics.
    pub async fn sample_metrics(&self) {
        let m = &self.ctx.stats.metrics;
        let health = self.transport.health().await;
        m.connected.set(i64::from(health.connected));
        let groups: Vec<String> = self
            .ctx
            .dispatcher
            .snapshot()
            .groups
            .keys()
            .map(|g| g.to_string())
            .collect();
        let timeout = self.ctx.config.metrics_interval;
        for group in groups {
            let queue = self.ctx.config.group_queue_name(&group);
            let up = health.consuming && health.consumers.get(&queue).copied().unwrap_or(false);
            m.consumer_up
                .get_or_create(&GroupKey {
                    group: group.clone(),
                })
                .set(i64::from(up));
            // The in-memory transport has no queues: nothing to sample.
            if let Ok(Ok(info)) =
                tokio::time::timeout(timeout, self.transport.queue_info(&group)).await
            {
                m.queue_messages
                    .get_or_create(&QueueKey {
                        group: group.clone(),
                        queue: "main",
                    })
                    .set(i64::from(info.message_count));
            }
            if let Ok(Ok(count)) =
                tokio::time::timeout(timeout, self.transport.dlq_count(&group)).await
            {
                m.queue_messages
                    .get_or_create(&QueueKey {
                        group,
                        queue: "dlq",
                    })
                    .set(i64::from(count));
            }
        }
    }

    /// Serves `/metrics`, `/health/live` and `/health/ready` on `addr` and
    /// samples the broker every `metrics_interval`, until the bus shuts
    /// down. Returns the address bound (useful with port 0). `run()` calls
    /// this when `EVENTBUS_METRICS_ADDR` is set.
    ///
    /// `/health/ready` answers 200 once the bus is connected and every
    /// group's consumer runs, 503 otherwise (while reconnecting, say), with
    /// the [`HealthStatus`] as JSON; `/health/live` answers 200 while the
    /// process serves.
    pub async fn serve_metrics(&self, addr: SocketAddr) -> Result<SocketAddr, Error> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Listen { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| Error::Listen { addr, source })?;
        let served = Served {
            bus: self.clone(),
            registry: Arc::new(metrics::registry(&self.ctx.stats)),
        };
        let app = Router::new()
            .route("/metrics", get(metrics_endpoint))
            .route("/health/live", get(|| async { "ok\n" }))
            .route("/health/ready", get(ready_endpoint))
            .with_state(served);
        let stop = self.observe.clone();
        tokio::spawn(async move {
            let stopped = stop.clone();
            if let Err(error) = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await
            {
                tracing::error!(%error, "the metrics listener stopped");
            }
        });
        let bus = self.clone();
        let stop = self.observe.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(bus.ctx.config.metrics_interval);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = every.tick() => bus.sample_metrics().await,
                }
            }
        });
        Ok(bound)
    }
}

async fn metrics_endpoint(State(served): State<Served>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, OPENMETRICS)],
        metrics::encode(&served.registry),
    )
}

/// Ready: connected, and every group's consumer running.
fn is_ready(health: &HealthStatus) -> bool {
    health.healthy
        && health.connected
        && health.consuming
        && health.consumers.values().all(|up| *up)
}

async fn ready_endpoint(State(served): State<Served>) -> impl IntoResponse {
    let health = served.bus.transport.health().await;
    let status = if is_ready(&health) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::to_string(&health).unwrap_or_else(|_| "{}".to_owned());
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}
