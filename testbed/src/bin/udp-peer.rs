//! The dataplane tests' UDP ends, run inside network namespaces (`ip netns exec`):
//!
//! - `udp-peer serve <port> <reply>`: a bridge's media port: answers every datagram with `<reply>` (the
//!   pod's name), until killed;
//! - `udp-peer probe <ip:port> <timeout-ms>`: a participant: sends one datagram, prints the answer and
//!   exits 0, or exits 1 silently when nothing answers in time.

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve", port, reply] => serve(port, reply),
        ["probe", to, timeout_ms] => probe(to, timeout_ms),
        _ => Err("usage: udp-peer serve <port> <reply> | udp-peer probe <ip:port> <timeout-ms>".to_owned()),
    };
    match outcome {
        Ok(code) => code,
        Err(message) => {
            eprintln!("udp-peer: {message}");
            ExitCode::from(2)
        }
    }
}

fn serve(port: &str, reply: &str) -> Result<ExitCode, String> {
    let port: u16 = port.parse().map_err(|e| format!("port {port:?}: {e}"))?;
    let socket = UdpSocket::bind(("0.0.0.0", port)).map_err(|e| format!("binding UDP {port}: {e}"))?;
    let mut buffer = [0u8; 1500];
    loop {
        let (_, from) = socket
            .recv_from(&mut buffer)
            .map_err(|e| format!("receiving: {e}"))?;
        // A lost answer is the prober's to notice (it times out), not a reason to stop serving.
        let _ = socket.send_to(reply.as_bytes(), from);
    }
}

fn probe(to: &str, timeout_ms: &str) -> Result<ExitCode, String> {
    let to: SocketAddr = to.parse().map_err(|e| format!("address {to:?}: {e}"))?;
    let timeout: u64 = timeout_ms
        .parse()
        .map_err(|e| format!("timeout {timeout_ms:?}: {e}"))?;
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("binding: {e}"))?;
    socket
        .set_read_timeout(Some(Duration::from_millis(timeout.max(1))))
        .map_err(|e| format!("setting the timeout: {e}"))?;
    socket
        .send_to(b"probe", to)
        .map_err(|e| format!("sending to {to}: {e}"))?;
    let mut buffer = [0u8; 1500];
    match socket.recv_from(&mut buffer) {
        Ok((length, _)) => {
            println!("{}", String::from_utf8_lossy(&buffer[..length]));
            Ok(ExitCode::SUCCESS)
        }
        // Timed out, or refused (ICMP port unreachable): nobody answered.
        Err(_) => Ok(ExitCode::FAILURE),
    }
}
