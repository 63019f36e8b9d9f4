//! Records what a real Prosody's `mod_http_openmetrics` answers, for `testdata/prosody/`: starts the
//! Prosody on this machine as the tests configure it, lets anonymous XMPP clients join and leave two
//! rooms (three clients), and prints the body of `GET /metrics` with its Content-Type as a comment on
//! stderr. `cargo run -p testbed --bin record-prosody > testdata/prosody/prosody-<version>-openmetrics.txt`

use testbed::prosody::{Occupants, Prosody, ProsodyOptions};

#[tokio::main]
async fn main() {
    let prosody = Prosody::start(ProsodyOptions::default());
    {
        let mut occupants = Occupants::join(&prosody, &[("alpha", 1), ("beta", 2)]);
        occupants.leave("alpha");
        occupants.leave("beta");
    }
    let response = reqwest::get(format!("{}/metrics", prosody.url()))
        .await
        .expect("GET /metrics");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.text().await.expect("the body");
    eprintln!("Prosody {}; Content-Type: {content_type}", prosody.version());
    print!("{body}");
}
