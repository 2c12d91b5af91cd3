//! The RabbitMQ transport (lapin).

use std::sync::Arc;

use crate::bus::{HealthStatus, QueueInfo, Shared};
use crate::envelope::AnyEnvelope;
use crate::error::Error;

/// A connection to RabbitMQ with its topology declared.
#[derive(Debug)]
pub struct RabbitTransport {}

impl RabbitTransport {
    pub(crate) async fn connect(_shared: &Arc<Shared>) -> Result<Self, Error> {
        Err(Error::Unsupported { operation: "connect", transport: "rabbitmq" })
    }
    pub(crate) async fn publish(&self, _shared: &Arc<Shared>, _events: &[AnyEnvelope]) -> Result<usize, Error> { Ok(0) }
    pub(crate) async fn start_consuming(&self, _shared: &Arc<Shared>) -> Result<(), Error> { Ok(()) }
    pub(crate) async fn stop_consuming(&self) -> Result<(), Error> { Ok(()) }
    pub(crate) async fn close(&self) -> Result<(), Error> { Ok(()) }
    pub(crate) async fn health(&self, _shared: &Arc<Shared>) -> HealthStatus { unimplemented!() }
    pub(crate) async fn bind(&self, _shared: &Arc<Shared>, _group: &str, _key: &str) -> Result<(), Error> { Ok(()) }
    pub(crate) async fn queue_info(&self, _queue: &str) -> Result<QueueInfo, Error> { unimplemented!() }
}
