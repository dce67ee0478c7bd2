//! [`QoS`]: MQTT's delivery guarantees (MQTT 3.1.1 section 4.3).

use std::str::FromStr;

use crate::error::{Error, Result};

/// How hard the broker and the client try to deliver a message (MQTT 3.1.1
/// section 4.3). On the wire and on command lines it is the number 0, 1
/// or 2: [`QoS::try_from`] a `u8`, [`str::parse`] a string, [`u8::from`]
/// back.
///
/// ```
/// use mqtt_tls::QoS;
///
/// assert_eq!(QoS::try_from(1)?, QoS::AtLeastOnce);
/// assert_eq!("2".parse::<QoS>()?, QoS::ExactlyOnce);
/// assert_eq!(u8::from(QoS::AtMostOnce), 0);
/// assert_eq!(QoS::try_from(3).unwrap_err().to_string(), "QoS must be 0, 1 or 2, not 3");
/// # Ok::<(), mqtt_tls::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    /// 0: at most once, no acknowledgement.
    AtMostOnce,
    /// 1: at least once, acknowledged by PUBACK.
    AtLeastOnce,
    /// 2: exactly once, acknowledged by PUBREC, PUBREL and PUBCOMP.
    ExactlyOnce,
}

impl QoS {
    /// The MQTT client's own type, for the requests we hand it.
    pub(crate) fn to_wire(self) -> rumqttc_mtls::QoS {
        match self {
            Self::AtMostOnce => rumqttc_mtls::QoS::AtMostOnce,
            Self::AtLeastOnce => rumqttc_mtls::QoS::AtLeastOnce,
            Self::ExactlyOnce => rumqttc_mtls::QoS::ExactlyOnce,
        }
    }

    /// Ours, from the MQTT client's type in the packets it hands us.
    pub(crate) fn from_wire(qos: rumqttc_mtls::QoS) -> Self {
        match qos {
            rumqttc_mtls::QoS::AtMostOnce => Self::AtMostOnce,
            rumqttc_mtls::QoS::AtLeastOnce => Self::AtLeastOnce,
            rumqttc_mtls::QoS::ExactlyOnce => Self::ExactlyOnce,
        }
    }
}

impl TryFrom<u8> for QoS {
    type Error = Error;

    /// 0, 1 or 2; anything else is [`Error::InvalidQos`].
    fn try_from(number: u8) -> Result<Self> {
        match number {
            0 => Ok(Self::AtMostOnce),
            1 => Ok(Self::AtLeastOnce),
            2 => Ok(Self::ExactlyOnce),
            _ => Err(Error::InvalidQos {
                value: number.to_string(),
            }),
        }
    }
}

impl FromStr for QoS {
    type Err = Error;

    /// `"0"`, `"1"` or `"2"`; anything else is [`Error::InvalidQos`].
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "0" => Ok(Self::AtMostOnce),
            "1" => Ok(Self::AtLeastOnce),
            "2" => Ok(Self::ExactlyOnce),
            _ => Err(Error::InvalidQos {
                // A number as it is, anything else quoted.
                value: if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                    s.to_owned()
                } else {
                    format!("{s:?}")
                },
            }),
        }
    }
}

impl From<QoS> for u8 {
    fn from(qos: QoS) -> Self {
        match qos {
            QoS::AtMostOnce => 0,
            QoS::AtLeastOnce => 1,
            QoS::ExactlyOnce => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_strings_round_trip() {
        for (n, qos) in [
            (0, QoS::AtMostOnce),
            (1, QoS::AtLeastOnce),
            (2, QoS::ExactlyOnce),
        ] {
            assert_eq!(QoS::try_from(n).unwrap(), qos);
            assert_eq!(n.to_string().parse::<QoS>().unwrap(), qos);
            assert_eq!(u8::from(qos), n);
            assert_eq!(QoS::from_wire(qos.to_wire()), qos);
        }
    }

    #[test]
    fn anything_else_is_refused_with_the_value() {
        assert_eq!(
            QoS::try_from(3).unwrap_err().to_string(),
            "QoS must be 0, 1 or 2, not 3"
        );
        assert_eq!(
            "3".parse::<QoS>().unwrap_err().to_string(),
            "QoS must be 0, 1 or 2, not 3"
        );
        assert_eq!(
            "01".parse::<QoS>().unwrap_err().to_string(),
            "QoS must be 0, 1 or 2, not 01"
        );
        for bad in ["", "one", " 1", "+1"] {
            let err = bad.parse::<QoS>().unwrap_err().to_string();
            assert_eq!(err, format!("QoS must be 0, 1 or 2, not {bad:?}"));
        }
    }
}
