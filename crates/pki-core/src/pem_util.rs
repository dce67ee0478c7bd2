//! PEM framing (RFC 7468) through the `pem` crate, with errors that say
//! what was found instead.

use crate::error::{Error, Result};

pub(crate) struct PemBlock {
    pub(crate) label: String,
    pub(crate) contents: Vec<u8>,
    /// A legacy OpenSSL `Proc-Type: 4,ENCRYPTED` header was present.
    pub(crate) legacy_encrypted: bool,
}

/// All blocks in `input`, in order. A `BEGIN` line without a matching `END`
/// (a truncated file) is an error, not silently nothing.
pub(crate) fn parse_all(input: &str) -> Result<Vec<pem::Pem>> {
    let blocks = pem::parse_many(input).map_err(|e| Error::Pem {
        reason: e.to_string(),
    })?;
    let begins = input.matches("-----BEGIN ").count();
    if begins > blocks.len() {
        return Err(Error::Pem {
            reason: format!(
                "{} of {begins} blocks are truncated or corrupt (BEGIN without a matching END, or bad base64)",
                begins - blocks.len()
            ),
        });
    }
    Ok(blocks)
}

/// The first block whose label is one of `labels`.
pub(crate) fn find_block(input: &str, labels: &[&str], what: &'static str) -> Result<PemBlock> {
    let blocks = parse_all(input)?;
    let found = blocks
        .iter()
        .find(|b| labels.contains(&b.tag()))
        .ok_or_else(|| Error::MissingPemBlock {
            expected: what,
            found: labels_of(&blocks),
        })?;
    Ok(PemBlock {
        label: found.tag().to_owned(),
        legacy_encrypted: found
            .headers()
            .get("Proc-Type")
            .is_some_and(|v| v.contains("ENCRYPTED")),
        contents: found.contents().to_vec(),
    })
}

/// Every block with label `label`, in order.
pub(crate) fn all_with_label(input: &str, label: &str, what: &'static str) -> Result<Vec<Vec<u8>>> {
    let blocks = parse_all(input)?;
    let matching: Vec<Vec<u8>> = blocks
        .iter()
        .filter(|b| b.tag() == label)
        .map(|b| b.contents().to_vec())
        .collect();
    if matching.is_empty() {
        return Err(Error::MissingPemBlock {
            expected: what,
            found: labels_of(&blocks),
        });
    }
    Ok(matching)
}

fn labels_of(blocks: &[pem::Pem]) -> String {
    if blocks.is_empty() {
        "nothing".to_owned()
    } else {
        blocks
            .iter()
            .map(|b| b.tag().to_owned())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// PEM with LF line endings and 64-column base64, as OpenSSL writes it.
pub(crate) fn encode(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_block_is_an_error() {
        let good = encode("CERTIFICATE", &[1, 2, 3, 4]);
        assert!(parse_all(&good).is_ok());
        let cut = &good[..good.len() - 10];
        let err = parse_all(cut).err().unwrap().to_string();
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn reports_what_was_found() {
        let input = encode("EC PARAMETERS", &[6, 1, 0]);
        let Err(err) = find_block(&input, &["PRIVATE KEY"], "private key") else {
            panic!("expected an error");
        };
        assert_eq!(
            err.to_string(),
            "no private key found in PEM input (found: EC PARAMETERS)"
        );
    }
}
