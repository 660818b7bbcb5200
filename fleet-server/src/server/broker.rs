//! The embedded MQTT broker: rumqttd in its own threads.
//!
//! Design: rumqttd binds inside a thread it spawns and only logs a bind
//! failure, so the port is probed here first (to report a taken port
//! clearly, and to resolve port 0), then the broker is awaited until it
//! accepts connections. Built without rumqttd's TLS features, which bring
//! a second rustls; use an external broker (Mosquitto) for TLS.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::ServeError;

/// Largest MQTT packet the broker accepts: a telemetry window is at most
/// 1 MiB (`outpost_protocol::messages::max_payload`).
const MAX_PAYLOAD: usize = 2 << 20;

fn config(listen: SocketAddr) -> Result<rumqttd::Config, ServeError> {
    let text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 10010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "outpost-v4"
listen = "{listen}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = {MAX_PAYLOAD}
max_inflight_count = 100
dynamic_filters = true
"#
    );
    toml::from_str(&text).map_err(|e| ServeError::Config(format!("embedded broker: {e}")))
}

/// Starts rumqttd on `bind`; returns the address it listens on.
pub(crate) async fn start_embedded(bind: SocketAddr) -> Result<SocketAddr, ServeError> {
    let probe = std::net::TcpListener::bind(bind).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => ServeError::PortTaken {
            what: "MQTT",
            port: bind.port(),
            why: if bind.port() == 1883 {
                " (is Mosquitto running?)"
            } else {
                ""
            },
            hint: format!(
                "choose another with --mqtt-port PORT (0 picks a free one) or use --mqtt-url \
                 mqtt://{}:{}",
                bind.ip(),
                bind.port()
            ),
        },
        _ => ServeError::Io(e),
    })?;
    let addr = probe.local_addr()?;
    drop(probe);
    let config = config(addr)?;
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(addr);
        }
        if Instant::now() > deadline {
            return Err(ServeError::Config(format!(
                "the embedded MQTT broker did not start listening on {addr}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
