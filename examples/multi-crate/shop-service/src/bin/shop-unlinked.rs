//! The trap this crate exists to test: `shop_core` is a dependency, but this
//! binary names nothing in it, so its handlers are not linked. `run()` refuses
//! to start, saying why and how to link the crate.

use eventbus::Bus;

#[tokio::main]
async fn main() -> Result<(), eventbus::Error> {
    Bus::from_env().run().await
}
