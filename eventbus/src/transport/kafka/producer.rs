//! The bus's producer, replaced when librdkafka reports it unusable.
//!
//! An idempotent producer stops for good on a fatal error: the broker fenced
//! its producer id, or lost track of its sequence numbers. A broker restarted
//! while records were timing out does that (seen with Tansu: `ProducerFenced`
//! on every record after the restart). librdkafka then fails every later
//! record (librdkafka does not always flag it fatal), so the bus creates a
//! new producer (a new producer id) the next time it needs one, and
//! publishing resumes once the broker answers.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer as _;

use super::{KafkaProducer, Logged};

use crate::runtime::BusContext;
use crate::stats::add;

/// A shared handle on the current producer.
#[derive(Clone)]
pub(crate) struct Producer {
    current: Arc<Mutex<KafkaProducer>>,
    settings: Arc<ClientConfig>,
    ctx: Arc<BusContext>,
}

impl Producer {
    /// Creates the first producer from `settings` (kept for its successors).
    pub(crate) fn new(settings: ClientConfig, ctx: Arc<BusContext>) -> Result<Self, KafkaError> {
        let first: KafkaProducer = settings.create_with_context(Logged)?;
        Ok(Self {
            current: Arc::new(Mutex::new(first)),
            settings: Arc::new(settings),
            ctx,
        })
    }

    fn lock(&self) -> MutexGuard<'_, KafkaProducer> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The producer to use now: a new one when the current one hit a fatal
    /// error (if creating it fails, the old one, which reports the error).
    pub(crate) fn get(&self) -> KafkaProducer {
        let mut current = self.lock();
        if let Some((code, reason)) = current.client().fatal_error() {
            self.replace(&mut current, &format!("{code:?}: {reason}"));
        }
        current.clone()
    }

    /// `used` failed a record with `error`: when the error says its producer
    /// id is no good any more, the next [`Producer::get`] returns a new producer.
    pub(crate) fn failed(&self, used: &KafkaProducer, error: &KafkaError) {
        if !needs_new_producer(error) {
            return;
        }
        let mut current = self.lock();
        if same(&current, used) {
            self.replace(&mut current, &error.to_string());
        }
    }

    /// Whether `used` is no longer the current producer.
    pub(crate) fn replaced(&self, used: &KafkaProducer) -> bool {
        !same(&self.lock(), used)
    }

    fn replace(&self, current: &mut KafkaProducer, why: &str) {
        match self
            .settings
            .create_with_context::<_, KafkaProducer>(Logged)
        {
            Ok(new) => {
                tracing::warn!(reason = %why, "the Kafka producer cannot go on; publishing through a new producer");
                add(&self.ctx.stats.reconnections, 1);
                let old = std::mem::replace(current, new);
                // Dropping a producer purges and joins its polling thread: not on the runtime.
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn_blocking(move || drop(old));
                }
            }
            Err(error) => {
                tracing::error!(%error, reason = %why, "cannot create a new Kafka producer; trying again at the next failure");
            }
        }
    }
}

fn same(a: &KafkaProducer, b: &KafkaProducer) -> bool {
    std::ptr::eq(a.client().native_ptr(), b.client().native_ptr())
}

/// The broker refuses the producer's id or epoch, or lost its sequence: no
/// later record of this producer gets through.
fn needs_new_producer(error: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        error.rdkafka_error_code(),
        Some(
            C::ProducerFenced
                | C::InvalidProducerEpoch
                | C::InvalidProducerIdMapping
                | C::OutOfOrderSequenceNumber
                | C::UnknownProducerId
                | C::Fatal
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaErrorCode as C;

    #[test]
    fn only_a_refused_producer_id_calls_for_a_new_producer() {
        let produce = |c| KafkaError::MessageProduction(c);
        for c in [
            C::ProducerFenced,
            C::OutOfOrderSequenceNumber,
            C::UnknownProducerId,
        ] {
            assert!(needs_new_producer(&produce(c)), "{c:?}");
        }
        for c in [C::MessageTimedOut, C::QueueFull, C::BrokerTransportFailure] {
            assert!(!needs_new_producer(&produce(c)), "{c:?}");
        }
    }
}
