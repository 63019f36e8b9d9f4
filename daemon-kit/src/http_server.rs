//! The HTTP/1 server every daemon's listener runs, bounded against clients that open connections and
//! keep them: a request's headers must arrive within `header_read_timeout` (an idle keep-alive connection
//! is closed after that long too), and at most `max_connections` are open — at the limit, the connection
//! idle the longest makes room for the new one, so a scraper always gets in, however many idle
//! connections someone holds. A connection that is busy with a request is never taken.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{oneshot, watch};
use tower::ServiceExt;

/// How much a server lets its clients hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(5),
        }
    }
}

/// Flags for [`ConnectionLimits`], flattened into a daemon's command line.
#[derive(Clone, Debug, clap::Args)]
pub struct ConnectionArgs {
    /// Connections open at once; at the limit the one idle the longest is closed for a new one.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_connections: u16,

    /// Time a client has to send a request's headers (an idle keep-alive connection is closed after it).
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = "5s", value_parser = crate::flags::parse_duration)]
    pub header_read_timeout: Duration,
}

impl ConnectionArgs {
    pub fn limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: usize::from(self.max_connections),
            header_read_timeout: self.header_read_timeout,
        }
    }
}

/// One open connection, as the admission decision sees it.
#[derive(Debug)]
struct Open {
    busy: bool,
    last_active: Instant,
    close: Option<oneshot::Sender<()>>,
}

type Registry = Arc<Mutex<HashMap<u64, Open>>>;

fn lock(registry: &Registry) -> std::sync::MutexGuard<'_, HashMap<u64, Open>> {
    registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Makes room for one more connection: false when every open one is busy with a request.
fn admit(registry: &Registry, limit: usize) -> bool {
    let mut open = lock(registry);
    if open.len() < limit {
        return true;
    }
    let idlest = open
        .iter()
        .filter(|(_, connection)| !connection.busy && connection.close.is_some())
        .min_by_key(|(_, connection)| connection.last_active)
        .map(|(id, _)| *id);
    match idlest
        .and_then(|id| open.get_mut(&id))
        .and_then(|connection| connection.close.take())
    {
        Some(close) => {
            let _ = close.send(());
            true
        }
        None => false,
    }
}

/// Serves `router` on `listener` until `stop` resolves, then lets the requests in flight finish (for
/// at most 5 s) and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ConnectionLimits,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let registry: Registry = Arc::default();
    let (draining, drain) = watch::channel(false);
    let mut next_id: u64 = 0;
    tokio::pin!(stop);
    loop {
        let (stream, _peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of descriptors and the like: wait a little rather than spin.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if !admit(&registry, limits.max_connections) {
            // Every connection is busy: this one is refused rather than queued.
            drop(stream);
            continue;
        }
        next_id += 1;
        let id = next_id;
        let (close, closed) = oneshot::channel();
        lock(&registry).insert(
            id,
            Open {
                busy: false,
                last_active: Instant::now(),
                close: Some(close),
            },
        );
        tokio::spawn(connection(
            stream,
            id,
            router.clone(),
            limits,
            Arc::clone(&registry),
            closed,
            drain.clone(),
        ));
    }
    let _ = draining.send(true);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lock(&registry).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn connection(
    stream: tokio::net::TcpStream,
    id: u64,
    router: Router,
    limits: ConnectionLimits,
    registry: Registry,
    closed: oneshot::Receiver<()>,
    mut drain: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let tracked = Arc::clone(&registry);
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let router = router.clone();
        let registry = Arc::clone(&tracked);
        async move {
            mark(&registry, id, true);
            let response = router.oneshot(request.map(Body::new)).await;
            mark(&registry, id, false);
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        // Made room for a newer connection: dropped at once.
        _ = closed => {}
        () = async { let _ = drain.wait_for(|draining| *draining).await; } => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), connection.as_mut()).await;
        }
    }
    lock(&registry).remove(&id);
}

fn mark(registry: &Registry, id: u64, busy: bool) {
    if let Some(open) = lock(registry).get_mut(&id) {
        open.busy = busy;
        open.last_active = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    async fn start(limits: ConnectionLimits) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        tokio::spawn(serve(listener, router, limits, std::future::pending()));
        addr
    }

    fn get(addr: SocketAddr) -> std::io::Result<String> {
        let mut stream = std::net::TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    }

    #[tokio::test]
    async fn idle_connections_make_room_for_a_request() {
        let addr = start(ConnectionLimits {
            max_connections: 4,
            header_read_timeout: Duration::from_secs(60),
        })
        .await;
        // Ten connections that never send anything, more than the limit.
        let idle: Vec<std::net::TcpStream> = (0..10)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let answer = tokio::task::spawn_blocking(move || get(addr))
            .await
            .unwrap()
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        drop(idle);
    }

    #[tokio::test]
    async fn a_client_that_sends_nothing_is_closed_after_the_header_timeout() {
        let addr = start(ConnectionLimits {
            max_connections: 4,
            header_read_timeout: Duration::from_millis(200),
        })
        .await;
        let closed = tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let started = Instant::now();
            let mut buffer = [0u8; 16];
            let read = stream.read(&mut buffer);
            (started.elapsed(), read.map(|n| n == 0).unwrap_or(true))
        })
        .await
        .unwrap();
        assert!(closed.1, "closed by the server");
        assert!(closed.0 < Duration::from_secs(2), "{:?}", closed.0);
    }
}
