//! Redis test scope: a stream prefix of the test's own, every key under it
//! deleted when dropped.

use std::time::Duration;

use eventbus::{Bus, BusBuilder};
use uuid::Uuid;

/// The Redis the tests use: `EVENTBUS_TEST_REDIS_URL`, default the local one.
pub fn redis_url() -> String {
    std::env::var("EVENTBUS_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned())
}

/// A synchronous connection for poking at Redis directly.
pub fn raw(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .expect("valid URL")
        .get_connection()
        .expect("Redis is reachable (start it with `redis-server --daemonize yes`)")
}

/// A test's own stream prefix; its keys are deleted when dropped.
pub struct RedisScope {
    pub prefix: String,
    pub url: String,
}

impl RedisScope {
    pub fn new(test: &str) -> Self {
        Self::on(test, &redis_url())
    }

    pub fn on(test: &str, url: &str) -> Self {
        let id = Uuid::new_v4().simple().to_string();
        Self {
            prefix: format!("test-{test}-{}", &id[..8]),
            url: url.to_owned(),
        }
    }

    /// A builder on this scope's prefix, discovery off, short timeouts.
    pub fn builder(&self) -> BusBuilder {
        let prefix = self.prefix.clone();
        Bus::builder()
            .url(&self.url)
            .without_discovery()
            .configure(move |c| {
                c.stream_prefix = prefix;
                c.block_ms = 1000;
                c.reconnect_delay = Duration::from_millis(100);
                c.max_reconnect_delay = Duration::from_secs(1);
                c.connect_timeout = Duration::from_secs(10);
                c.confirm_timeout = Duration::from_secs(20);
            })
    }

    pub fn stream(&self) -> String {
        format!("{}:stream", self.prefix)
    }

    pub fn dlq(&self) -> String {
        format!("{}:stream_dlq", self.prefix)
    }

    pub fn conn(&self) -> redis::Connection {
        raw(&self.url)
    }

    /// Every entry of `key`: (id, fields in order).
    pub fn entries(&self, key: &str) -> Vec<(String, Vec<(String, String)>)> {
        let reply: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .query(&mut self.conn())
            .expect("XRANGE");
        reply
    }

    /// `XPENDING` count of `group` on the main stream.
    pub fn pending(&self, group: &str) -> u64 {
        let reply: redis::Value = redis::cmd("XPENDING")
            .arg(self.stream())
            .arg(group)
            .query(&mut self.conn())
            .expect("XPENDING");
        match reply {
            redis::Value::Array(items) => match items.first() {
                Some(redis::Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
                _ => 0,
            },
            _ => 0,
        }
    }
}

impl Drop for RedisScope {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query(&mut conn)
            .unwrap_or_default();
        for key in keys {
            let _: Result<(), _> = redis::cmd("DEL").arg(key).query(&mut conn);
        }
    }
}

/// Field `name` of an entry's fields.
pub fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}
