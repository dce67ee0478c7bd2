//! Reads an RFC 7512 `pkcs11:` URI (the first argument, or an example) and
//! prints how it is shown (never with a PIN) and what a key file records
//! for it. No token is needed: opening one is `token_keys::open`.
//!
//! ```sh
//! cargo run -p token-keys --example key_uri -- 'pkcs11:token=devices;object=sensor-1?pin-value=2468'
//! ```

use token_keys::{KeyUri, TokenKeySpec};

fn main() -> Result<(), token_keys::Error> {
    let text = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "pkcs11:token=devices?pin-source=/run/secrets/pin".to_owned());
    // A device's new key is labelled with its name unless the URI says.
    let uri = KeyUri::for_new_key(&text, "sensor-1")?;
    println!("shown:  {uri}");
    let spec = TokenKeySpec::new(uri, Some("DEVICE_PIN".to_owned()));
    print!("record: {}", spec.record());
    Ok(())
}
