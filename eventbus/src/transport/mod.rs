//! Transports: in memory, and RabbitMQ.

use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream;

use crate::bus::{BatchReport, HealthStatus, QueueInfo, Shared};
use crate::envelope::AnyEnvelope;
use crate::error::Error;

pub(crate) mod memory;
pub(crate) mod rabbit;

/// The transport under a [`Bus`](crate::Bus).
#[derive(Debug)]
pub(crate) enum Transport {
    /// In-process delivery.
    Memory,
    /// RabbitMQ.
    Rabbit(rabbit::RabbitTransport),
}

impl Transport {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Rabbit(_) => "rabbitmq",
        }
    }

    fn unsupported(&self, operation: &'static str) -> Error {
        Error::Unsupported {
            operation,
            transport: self.name(),
        }
    }

    pub(crate) async fn publish(
        &self,
        shared: &Arc<Shared>,
        events: &[AnyEnvelope],
    ) -> Result<usize, Error> {
        match self {
            Self::Memory => memory::publish(shared, events).await,
            Self::Rabbit(r) => r.publish(shared, events).await,
        }
    }

    pub(crate) async fn publish_batch(
        &self,
        shared: &Arc<Shared>,
        events: Vec<AnyEnvelope>,
        preserve_order: bool,
    ) -> BatchReport {
        let total = events.len();
        let chunk_size = shared.config.publish_chunk_size.max(1);
        let concurrency = if preserve_order {
            1
        } else {
            shared.config.max_concurrent_publishes.max(1)
        };
        let results: Vec<(usize, Result<usize, Error>)> = stream::iter(events.chunks(chunk_size))
            .map(|chunk| async move { (chunk.len(), self.publish(shared, chunk).await) })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let mut report = BatchReport {
            published: 0,
            total,
            errors: Vec::new(),
        };
        for (_, result) in results {
            match result {
                Ok(n) => report.published += n,
                Err(e) => report.errors.push(e),
            }
        }
        report
    }

    pub(crate) async fn start_consuming(&self, shared: &Arc<Shared>) -> Result<(), Error> {
        match self {
            Self::Memory => Ok(()),
            Self::Rabbit(r) => r.start_consuming(shared).await,
        }
    }

    pub(crate) async fn stop_consuming(&self) -> Result<(), Error> {
        match self {
            Self::Memory => Ok(()),
            Self::Rabbit(r) => r.stop_consuming().await,
        }
    }

    pub(crate) async fn close(&self) -> Result<(), Error> {
        match self {
            Self::Memory => Ok(()),
            Self::Rabbit(r) => r.close().await,
        }
    }

    pub(crate) async fn health(&self, shared: &Arc<Shared>) -> HealthStatus {
        match self {
            Self::Memory => HealthStatus {
                healthy: true,
                transport: self.name(),
                connected: true,
                consuming: true,
                consumers: Default::default(),
                error: None,
            },
            Self::Rabbit(r) => r.health(shared).await,
        }
    }

    pub(crate) async fn bind(
        &self,
        shared: &Arc<Shared>,
        group: &str,
        routing_key: &str,
    ) -> Result<(), Error> {
        match self {
            Self::Memory => Err(self.unsupported("binding a routing key")),
            Self::Rabbit(r) => r.bind(shared, group, routing_key).await,
        }
    }

    pub(crate) async fn queue_info(&self, queue: &str) -> Result<QueueInfo, Error> {
        match self {
            Self::Memory => Err(self.unsupported("queue_info")),
            Self::Rabbit(r) => r.queue_info(queue).await,
        }
    }
}
