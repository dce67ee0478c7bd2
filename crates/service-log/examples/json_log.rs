//! Logs two events as JSON lines on standard error:
//! `cargo run -p service-log --example json_log`.

fn main() -> Result<(), service_log::Error> {
    service_log::init(service_log::LogFormat::Json, "info")?;
    tracing::info!(port = 8883_u16, "listening");
    tracing::warn!(error = "connection refused", "broker unreachable; retrying");
    Ok(())
}
