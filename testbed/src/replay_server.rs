//! A minimal keep-alive HTTP/1.1 server answering every request with a fixed body per path prefix, so the
//! upstream of a benchmark costs next to nothing and is the same for every program measured against it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

/// One route: path prefix, content type, body.
pub type Route = (&'static str, &'static str, Vec<u8>);

/// Starts the server on a free port of 127.0.0.1 (threads, forever) and returns the port.
pub fn start(routes: Vec<Route>) -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let responses: Arc<Vec<(&'static str, Vec<u8>)>> = Arc::new(
        routes
            .into_iter()
            .map(|(path, content_type, body)| {
                let mut response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                response.extend_from_slice(&body);
                (path, response)
            })
            .collect(),
    );
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let responses = Arc::clone(&responses);
            std::thread::spawn(move || answer(stream, &responses));
        }
    });
    Ok(port)
}

fn answer(mut stream: TcpStream, responses: &[(&'static str, Vec<u8>)]) {
    let _ = stream.set_nodelay(true);
    let mut pending: Vec<u8> = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(n) => pending.extend_from_slice(&buffer[..n]),
        }
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let request = String::from_utf8_lossy(&pending[..end]).into_owned();
            pending.drain(..end + 4);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let Some((_, response)) = responses.iter().find(|(prefix, _)| path.starts_with(prefix)) else {
                return;
            };
            if stream.write_all(response).is_err() {
                return;
            }
        }
    }
}
