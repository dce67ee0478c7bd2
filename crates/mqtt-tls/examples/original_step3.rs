//! The original design's step 3 in Rust: a `ClientCert` bundle, an MQTT
//! client over mutual TLS, a handler on the device's own topics
//! (`devices/client1/#`: what the broker's rules give a device), and a loop that keeps
//! going until Ctrl-C.
//!
//! ```text
//! cargo run -p mqtt-tls --example original_step3 -- [HOST] [PORT] [CLIENT_ID]
//! ```
//!
//! It reads the original file names: `backend_certs/client1_cert.pem`,
//! `backend_certs/client1.key` and `root_cert/root_ca_cert.pem` (make them
//! with `cargo run -p pki-core --example original_flow -- .`).

use mqtt_tls::{ClientCert, ConnectOptions, Message, MqttClient, QoS};

async fn save_data_to_db(message: Message) -> Result<(), std::io::Error> {
    // A real handler stores the message; an error leaves it unacknowledged
    // and it is retried.
    println!(
        "{}: {}",
        message.topic,
        String::from_utf8_lossy(&message.payload)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let host = args.next().unwrap_or_else(|| "localhost".into());
    let port = args.next().map(|p| p.parse()).transpose()?.unwrap_or(8883);
    let client_id = args.next().unwrap_or_else(|| "Client1".into());

    let client_cert = ClientCert::new(
        "backend_certs/client1_cert.pem",
        "backend_certs/client1.key",
        "root_cert/root_ca_cert.pem",
    );
    let identity = client_cert.load()?;
    let (client, mut connection) =
        MqttClient::new(&ConnectOptions::new(host, port, client_id), &identity)?;
    connection.connect().await?;
    client.subscribe("devices/client1/#", QoS::AtLeastOnce, save_data_to_db)?;

    let publisher = client.clone();
    tokio::spawn(async move {
        match publisher
            .publish(
                "devices/client1/data",
                "hello from mqtt-tls",
                QoS::AtLeastOnce,
                false,
            )
            .await
        {
            Ok(()) => println!("published (PUBACK received)"),
            Err(e) => eprintln!("publish failed: {e}"),
        }
    });
    // Until Ctrl-C; loop_forever() is the blocking equivalent.
    connection
        .run_until(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
