//! The dataplane tests' network ends, run inside network namespaces (`ip netns exec`):
//!
//! - `net-peer serve <udp|tcp> <port> <reply>`: a pod's port: answers every datagram (UDP) or every
//!   connection (TCP) with `<reply>` (the pod's name), until killed;
//! - `net-peer probe <udp|tcp> <ip:port> <timeout-ms>`: a client: sends one datagram or opens one
//!   connection, prints the answer and exits 0, or exits 1 silently when nothing answers in time;
//! - `net-peer flow <ip:port> <interval-ms> <timeout-ms>`: a media flow: datagram `seq <n>` every
//!   interval, n = 1, 2, …, each waited for up to the timeout; prints `<n> <answering pod>` or `<n> -`
//!   per datagram, until killed. A UDP server answers `seq <n>` with `<pod> seq <n>`, so a late answer
//!   is never taken for the next one's.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve", "udp", port, reply] => serve_udp(port, reply),
        ["serve", "tcp", port, reply] => serve_tcp(port, reply),
        ["probe", protocol @ ("udp" | "tcp"), to, timeout_ms] => probe(protocol, to, timeout_ms),
        ["flow", to, interval_ms, timeout_ms] => flow(to, interval_ms, timeout_ms),
        _ => Err(
            "usage: net-peer serve <udp|tcp> <port> <reply> | net-peer probe <udp|tcp> <ip:port> <timeout-ms> \
             | net-peer flow <ip:port> <interval-ms> <timeout-ms>"
                .to_owned(),
        ),
    };
    match outcome {
        Ok(code) => code,
        Err(message) => {
            eprintln!("net-peer: {message}");
            ExitCode::from(2)
        }
    }
}

fn port(text: &str) -> Result<u16, String> {
    text.parse().map_err(|e| format!("port {text:?}: {e}"))
}

fn serve_udp(port_text: &str, reply: &str) -> Result<ExitCode, String> {
    let port = port(port_text)?;
    let socket = UdpSocket::bind(("0.0.0.0", port)).map_err(|e| format!("binding UDP {port}: {e}"))?;
    let mut buffer = [0u8; 1500];
    loop {
        let (length, from) = socket
            .recv_from(&mut buffer)
            .map_err(|e| format!("receiving: {e}"))?;
        let answer = match &buffer[..length] {
            sequenced if sequenced.starts_with(b"seq ") => [reply.as_bytes(), b" ", sequenced].concat(),
            _ => reply.as_bytes().to_vec(),
        };
        // A lost answer is the prober's to notice (it times out), not a reason to stop serving.
        let _ = socket.send_to(&answer, from);
    }
}

fn serve_tcp(port_text: &str, reply: &str) -> Result<ExitCode, String> {
    let port = port(port_text)?;
    let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("binding TCP {port}: {e}"))?;
    for mut stream in listener.incoming().flatten() {
        let _ = stream.write_all(reply.as_bytes());
    }
    Ok(ExitCode::SUCCESS)
}

fn milliseconds(text: &str) -> Result<Duration, String> {
    text.parse::<u64>()
        .map(|ms| Duration::from_millis(ms.max(1)))
        .map_err(|e| format!("milliseconds {text:?}: {e}"))
}

fn flow(to: &str, interval_ms: &str, timeout_ms: &str) -> Result<ExitCode, String> {
    let to: SocketAddr = to.parse().map_err(|e| format!("address {to:?}: {e}"))?;
    let (interval, timeout) = (milliseconds(interval_ms)?, milliseconds(timeout_ms)?);
    // One socket for the whole flow, as a call keeps its 5-tuple (and its conntrack entry).
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("binding: {e}"))?;
    let mut out = std::io::stdout().lock();
    let mut buffer = [0u8; 1500];
    for seq in 1u64.. {
        let started = std::time::Instant::now();
        let sent = format!("seq {seq}");
        socket
            .send_to(sent.as_bytes(), to)
            .map_err(|e| format!("sending to {to}: {e}"))?;
        let mut answered_by = None;
        while answered_by.is_none() {
            let Some(left) = timeout.checked_sub(started.elapsed()).filter(|l| !l.is_zero()) else {
                break;
            };
            socket
                .set_read_timeout(Some(left))
                .map_err(|e| format!("setting the timeout: {e}"))?;
            match socket.recv_from(&mut buffer) {
                Ok((length, _)) => {
                    let answer = String::from_utf8_lossy(&buffer[..length]).into_owned();
                    // Another datagram's late answer is skipped.
                    if let Some(pod) = answer.strip_suffix(&format!(" {sent}")) {
                        answered_by = Some(pod.to_owned());
                    }
                }
                // Timed out, or refused (ICMP port unreachable): this one is lost.
                Err(_) => break,
            }
        }
        writeln!(out, "{seq} {}", answered_by.as_deref().unwrap_or("-"))
            .and_then(|()| out.flush())
            .map_err(|e| format!("writing: {e}"))?;
        if let Some(rest) = interval.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn probe(protocol: &str, to: &str, timeout_ms: &str) -> Result<ExitCode, String> {
    let to: SocketAddr = to.parse().map_err(|e| format!("address {to:?}: {e}"))?;
    let timeout = Duration::from_millis(
        timeout_ms
            .parse::<u64>()
            .map_err(|e| format!("timeout {timeout_ms:?}: {e}"))?
            .max(1),
    );
    let answer = if protocol == "udp" {
        let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("binding: {e}"))?;
        socket
            .set_read_timeout(Some(timeout))
            .map_err(|e| format!("setting the timeout: {e}"))?;
        socket
            .send_to(b"probe", to)
            .map_err(|e| format!("sending to {to}: {e}"))?;
        let mut buffer = [0u8; 1500];
        // Timed out, or refused (ICMP port unreachable): nobody answered.
        socket
            .recv_from(&mut buffer)
            .ok()
            .map(|(length, _)| buffer[..length].to_vec())
    } else {
        TcpStream::connect_timeout(&to, timeout)
            .ok()
            .and_then(|mut stream| {
                stream.set_read_timeout(Some(timeout)).ok()?;
                let mut answer = Vec::new();
                stream.read_to_end(&mut answer).ok()?;
                Some(answer)
            })
    };
    match answer {
        Some(bytes) if !bytes.is_empty() => {
            println!("{}", String::from_utf8_lossy(&bytes));
            Ok(ExitCode::SUCCESS)
        }
        _ => Ok(ExitCode::FAILURE),
    }
}
