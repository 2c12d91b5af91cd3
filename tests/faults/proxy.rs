//! A TCP proxy between the bus and a broker, with faults on demand: pass,
//! cut every connection (RST), blackhole (sockets stay open, nothing is
//! forwarded), refuse new connections, latency with jitter, cut after N bytes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Forward everything.
    Pass,
    /// Keep every socket open and forward nothing (held bytes flow on when it ends).
    Blackhole,
    /// Reset new connections at once; existing ones pass.
    Refuse,
    /// Delay every chunk by `base` +- `jitter`, each way.
    Latency { base: Duration, jitter: Duration },
}

struct Shared {
    upstream: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Bumped by `cut_all`: connections of an older generation reset.
    cut: watch::Sender<u64>,
    /// Bytes client -> broker left before the next connection is cut mid-stream; < 0: off.
    cut_after: AtomicI64,
    accepted: AtomicUsize,
    open: AtomicUsize,
    seed: AtomicU64,
}

/// A running proxy; stops when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.cut.send_modify(|g| *g += 1);
        self.task.abort();
    }
}

impl Proxy {
    /// Listens on a free local port, forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            upstream,
            mode: watch::channel(Mode::Pass).0,
            cut: watch::channel(0).0,
            cut_after: AtomicI64::new(-1),
            accepted: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            seed: AtomicU64::new(0x9e37_79b9_7f4a_7c15),
        });
        let task = tokio::spawn(accept(listener, shared.clone()));
        Self { addr, shared, task }
    }

    /// An `amqp://` URL through the proxy.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    pub fn set(&self, mode: Mode) {
        self.shared.mode.send_replace(mode);
    }

    /// Resets (RST) every open connection.
    pub fn cut_all(&self) {
        self.shared.cut.send_modify(|g| *g += 1);
    }

    /// Cuts the connection that carries the next `bytes` bytes towards the
    /// broker, in the middle of whatever frame is passing then.
    pub fn cut_after(&self, bytes: i64) {
        self.shared.cut_after.store(bytes, Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if *shared.mode.borrow() == Mode::Refuse {
            reset(client);
            continue;
        }
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let shared = shared.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(shared.upstream).await else {
                reset(client);
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            shared.open.fetch_add(1, Ordering::SeqCst);
            connection(client, server, &shared).await;
            shared.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Closes with RST instead of FIN.
#[allow(deprecated)] // Linger 0 resets at once; it never blocks.
fn reset(stream: TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

async fn connection(mut client: TcpStream, mut server: TcpStream, shared: &Arc<Shared>) {
    let mut cut = shared.cut.subscribe();
    cut.mark_unchanged();
    let reset_both = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        // Each direction: a reader that stamps chunks with when they may go,
        // a writer that sends them then, in order.
        let up = direction(client_read, server_write, shared, true);
        let down = direction(server_read, client_write, shared, false);
        tokio::select! {
            _ = cut.changed() => true,
            cut_mid_stream = up => cut_mid_stream,
            cut_mid_stream = down => cut_mid_stream,
        }
    };
    if reset_both {
        reset(client);
        reset(server);
    }
}

/// Pumps one way until EOF, an error, or a cut; true for a cut.
async fn direction(
    mut from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
    shared: &Shared,
    towards_broker: bool,
) -> bool {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>, bool)>();
    let reader = async move {
        let mut mode = shared.mode.subscribe();
        let mut buf = vec![0u8; 64 * 1024];
        let mut last_due = Instant::now();
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut chunk = buf[..n].to_vec();
            let mut last = false;
            if towards_broker {
                let left = shared.cut_after.load(Ordering::SeqCst);
                if left >= 0 {
                    let n = n as i64;
                    if n >= left {
                        shared.cut_after.store(-1, Ordering::SeqCst);
                        chunk.truncate(left as usize);
                        last = true;
                    } else {
                        shared.cut_after.fetch_sub(n, Ordering::SeqCst);
                    }
                }
            }
            // Hold the chunk while blackholed.
            while *mode.borrow_and_update() == Mode::Blackhole {
                if mode.changed().await.is_err() {
                    return;
                }
            }
            let delay = match *mode.borrow() {
                Mode::Latency { base, jitter } => {
                    let r = shared
                        .seed
                        .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
                        .wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    let unit = (r >> 11) as f64 / (1u64 << 53) as f64;
                    let offset = jitter.as_secs_f64() * (2.0 * unit - 1.0);
                    Duration::from_secs_f64((base.as_secs_f64() + offset).max(0.0))
                }
                _ => Duration::ZERO,
            };
            // Never reorder: a chunk goes no earlier than the one before it.
            let due = (Instant::now() + delay).max(last_due);
            last_due = due;
            if tx.send((due, chunk, last)).is_err() || last {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk, last)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return false;
            }
            if last {
                let _ = to.flush().await;
                return true;
            }
        }
        false
    };
    let ((), cut) = tokio::join!(reader, writer);
    cut
}
