//! A TCP proxy that can hang: it forwards bytes both ways until told to hang, then holds every
//! connection — open ones and new ones — without forwarding anything, as a half-open network path does.
//! Healing drops the connections that hung (their peers gave up on them long ago; nothing they sent
//! meanwhile is delivered late) and forwards new ones again. For the API server (TLS passes through
//! untouched: the certificate is for 127.0.0.1, any port).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug)]
pub struct TcpProxy {
    pub addr: SocketAddr,
    hanging: Arc<watch::Sender<bool>>,
    /// Bumped by `heal`: connections of an older generation are closed.
    generation: Arc<watch::Sender<u64>>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let hanging = Arc::new(watch::channel(false).0);
        let generation = Arc::new(watch::channel(0u64).0);
        let (flag, generations) = (Arc::clone(&hanging), Arc::clone(&generation));
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let flag = Arc::clone(&flag);
                let mut healed = generations.subscribe();
                let born = *healed.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let both = async {
                        tokio::join!(
                            pump(client_read, server_write, flag.subscribe()),
                            pump(server_read, client_write, flag.subscribe()),
                        )
                    };
                    // Dropping both halves closes both connections. Healing is looked at first, so a
                    // connection that hung never forwards what it held.
                    tokio::select! {
                        biased;
                        _ = healed.wait_for(|now| *now != born) => {}
                        _ = both => {}
                    }
                });
            }
        });
        Self {
            addr,
            hanging,
            generation,
            accept,
        }
    }

    /// From now on nothing passes; connections stay open.
    pub fn hang(&self) {
        self.hanging.send_replace(true);
    }

    /// The path works again: the connections that hung are closed, new ones are forwarded.
    pub fn heal(&self) {
        self.generation.send_modify(|generation| *generation += 1);
        self.hanging.send_replace(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut hanging: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        // While hanging, neither read nor write: the peer sees a silent, open connection.
        if hanging.wait_for(|hang| !hang).await.is_err() {
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            _ = hanging.wait_for(|hang| *hang) => continue,
        };
        let Ok(count) = read else { return };
        if count == 0 {
            let _ = to.shutdown().await;
            return;
        }
        if hanging.wait_for(|hang| !hang).await.is_err() || to.write_all(&buffer[..count]).await.is_err() {
            return;
        }
    }
}
