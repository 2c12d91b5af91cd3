//! The service as it should be written: it names nothing in `shop_core` but
//! links its handlers with `.link(shop_core::eventbus_handlers())`.
//!
//! Runs until SIGINT/SIGTERM (`EVENTBUS_URL` picks the broker); with
//! `SHOP_EXIT_AFTER_START=1` it starts, prints its startup line and stops.

use eventbus::Bus;

#[tokio::main]
async fn main() -> Result<(), eventbus::Error> {
    let bus = Bus::from_env()
        .link(shop_core::eventbus_handlers())
        .build()
        .await?;
    if std::env::var_os("SHOP_EXIT_AFTER_START").is_some() {
        bus.run_until(async { Ok(()) }).await
    } else {
        bus.run().await
    }
}
