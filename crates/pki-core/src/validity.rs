//! Validity windows (RFC 5280 section 4.1.2.5).

use std::time::{Duration, SystemTime};

use der::asn1::{GeneralizedTime, UtcTime};
use x509_cert::time::Time;

use crate::error::{Error, Result};

/// How far `not_before` is moved into the past, so that peers whose clocks run
/// a little behind accept a certificate issued a moment ago.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(5 * 60);

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// The time span a certificate is valid for.
///
/// Always explicit: there is no "forever" default (rcgen's 1975–4096 is an
/// anti-pattern). Build one with [`Validity::days_from_now`] or
/// [`Validity::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    not_before: SystemTime,
    not_after: SystemTime,
}

impl Validity {
    /// A window from [`CLOCK_SKEW_ALLOWANCE`] before `now` until `days` days
    /// after `now`.
    pub fn days_from(now: SystemTime, days: u32) -> Result<Self> {
        if days == 0 {
            return Err(Error::InvalidValidity {
                reason: "the validity must be at least one day".into(),
            });
        }
        let not_before = now
            .checked_sub(CLOCK_SKEW_ALLOWANCE)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let not_after = now
            .checked_add(DAY * days)
            .ok_or_else(|| Error::InvalidValidity {
                reason: format!("{days} days from now cannot be represented"),
            })?;
        Self::new(not_before, not_after)
    }

    /// A window of `days` days starting now (see [`Validity::days_from`]).
    pub fn days_from_now(days: u32) -> Result<Self> {
        Self::days_from(SystemTime::now(), days)
    }

    /// An explicit window; `not_before` must come before `not_after` and both
    /// must be encodable (years 1950 to 9999, whole seconds are kept).
    pub fn new(not_before: SystemTime, not_after: SystemTime) -> Result<Self> {
        let not_before = truncate_to_second(not_before);
        let not_after = truncate_to_second(not_after);
        if not_after <= not_before {
            return Err(Error::InvalidValidity {
                reason: format!(
                    "notAfter {} is not after notBefore {}",
                    Timestamp(not_after),
                    Timestamp(not_before)
                ),
            });
        }
        for t in [not_before, not_after] {
            to_time(t)?;
        }
        Ok(Self {
            not_before,
            not_after,
        })
    }

    /// The first second of validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// The last second of validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Whether `at` lies within the window.
    pub fn contains(&self, at: SystemTime) -> bool {
        self.not_before <= at && at <= self.not_after
    }

    /// This window with `not_after` moved back to `limit` if it ends later;
    /// returns `None` in the second place when nothing was cut.
    ///
    /// A leaf must not outlive its issuer: path validation would reject it
    /// after the issuer expires anyway, so the CA caps it and says so.
    pub(crate) fn capped_at(self, limit: SystemTime) -> Result<(Self, Option<SystemTime>)> {
        if self.not_after <= limit {
            return Ok((self, None));
        }
        let capped = Self::new(self.not_before, limit).map_err(|_| Error::InvalidValidity {
            reason: format!(
                "the issuer expires at {}, before the certificate would start",
                Timestamp(limit)
            ),
        })?;
        Ok((capped, Some(self.not_after)))
    }

    pub(crate) fn to_x509(self) -> Result<x509_cert::time::Validity> {
        Ok(x509_cert::time::Validity::new(
            to_time(self.not_before)?,
            to_time(self.not_after)?,
        ))
    }

    pub(crate) fn from_x509(v: &x509_cert::time::Validity) -> Self {
        Self {
            not_before: v.not_before.to_system_time(),
            not_after: v.not_after.to_system_time(),
        }
    }
}

fn truncate_to_second(t: SystemTime) -> SystemTime {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => SystemTime::UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => t,
    }
}

/// Converts to an RFC 5280 time: UTCTime through 2049, GeneralizedTime after
/// (section 4.1.2.5).
pub(crate) fn to_time(t: SystemTime) -> Result<Time> {
    let dt = der::DateTime::from_system_time(t).map_err(|e| Error::InvalidValidity {
        reason: format!("time cannot be encoded: {e}"),
    })?;
    let encoded = if dt.year() < 2050 {
        UtcTime::from_date_time(dt).map(Time::UtcTime)
    } else {
        Ok(Time::GeneralTime(GeneralizedTime::from_date_time(dt)))
    };
    encoded.map_err(|e| Error::InvalidValidity {
        reason: format!("time cannot be encoded: {e}"),
    })
}

/// Formats a `SystemTime` as RFC 3339 in UTC, e.g. `2026-11-24T20:58:17Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub SystemTime);

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match der::DateTime::from_system_time(self.0) {
            Ok(dt) => write!(f, "{dt}"),
            Err(_) => write!(f, "{:?}", self.0),
        }
    }
}

/// Parses RFC 3339 in UTC, as [`Timestamp`] displays it.
impl std::str::FromStr for Timestamp {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let dt: der::DateTime = s.parse().map_err(|e| Error::InvalidValidity {
            reason: format!("{s:?} is not an RFC 3339 UTC time: {e}"),
        })?;
        Ok(Self(dt.to_system_time()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backdates_for_clock_skew() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let v = Validity::days_from(now, 10).unwrap();
        assert_eq!(v.not_before(), now - CLOCK_SKEW_ALLOWANCE);
        assert_eq!(v.not_after(), now + DAY * 10);
        assert!(v.contains(now));
    }

    #[test]
    fn rejects_empty_and_inverted_windows() {
        assert!(Validity::days_from_now(0).is_err());
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let err = Validity::new(t, t).unwrap_err().to_string();
        assert!(err.contains("is not after"), "{err}");
    }

    #[test]
    fn caps_at_issuer_expiry() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let v = Validity::days_from(t, 100).unwrap();
        let (capped, cut) = v.capped_at(t + DAY).unwrap();
        assert_eq!(capped.not_after(), t + DAY);
        assert_eq!(cut, Some(t + DAY * 100));
        let (same, none) = v.capped_at(t + DAY * 200).unwrap();
        assert_eq!(same, v);
        assert_eq!(none, None);
        assert!(v.capped_at(t - DAY).is_err());
    }

    #[test]
    fn uses_generalized_time_after_2049() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(2_600_000_000); // 2052
        assert!(matches!(to_time(t).unwrap(), Time::GeneralTime(_)));
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000); // 2027
        assert!(matches!(to_time(t).unwrap(), Time::UtcTime(_)));
    }

    #[test]
    fn timestamp_is_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(Timestamp(t).to_string(), "2027-01-15T08:00:00Z");
        assert_eq!(
            "2027-01-15T08:00:00Z".parse::<Timestamp>().unwrap(),
            Timestamp(t)
        );
        assert!("yesterday".parse::<Timestamp>().is_err());
    }
}
