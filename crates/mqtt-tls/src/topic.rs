//! MQTT topic filters and matching (MQTT 3.1.1 section 4.7, MQTT 5 shared
//! subscriptions).

use std::fmt;

use crate::error::{Error, Result};

/// A validated subscription filter, e.g. `sensors/+/temperature`, `logs/#`
/// or `$share/ingest/sensors/#` (made by [`TopicFilter::shared`]).
///
/// [`MqttClient::subscribe`](crate::MqttClient::subscribe) takes one, or a
/// string it validates (`TryFrom<&str>`, `TryFrom<String>`).
///
/// Messages arrive under their real topic, also for shared subscriptions,
/// so routing matches against the filter with its `$share/<group>/` prefix
/// removed (paho's per-topic callbacks get this wrong).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicFilter {
    full: String,
    /// Byte offset of the routing part (after `$share/<group>/`).
    route_start: usize,
}

impl TopicFilter {
    /// Validates a filter: non-empty, `#` only as the last whole level, `+`
    /// only as a whole level, no NUL, and a `$share/` prefix with a group.
    pub fn new(filter: impl Into<String>) -> Result<Self> {
        let full = filter.into();
        let bad = |reason| Error::InvalidTopic {
            topic: full.clone(),
            reason,
        };
        if full.is_empty() {
            return Err(bad("a filter must not be empty"));
        }
        if full.len() > 65_535 {
            return Err(bad("longer than 65535 bytes"));
        }
        if full.contains('\0') {
            return Err(bad("contains NUL"));
        }
        let route_start = match full.strip_prefix("$share/") {
            Some(rest) => {
                let Some((group, filter)) = rest.split_once('/') else {
                    return Err(bad("a shared subscription needs $share/<group>/<filter>"));
                };
                if !is_share_group(group) {
                    return Err(bad("invalid share group name"));
                }
                if filter.is_empty() {
                    return Err(bad("a shared subscription needs a filter after the group"));
                }
                "$share/".len() + group.len() + 1
            }
            None => 0,
        };
        let route = &full[route_start..];
        let levels: Vec<&str> = route.split('/').collect();
        for (i, level) in levels.iter().enumerate() {
            if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
                return Err(bad("`#` must be the last level, on its own"));
            }
            if level.contains('+') && *level != "+" {
                return Err(bad("`+` must be a whole level"));
            }
        }
        Ok(Self { full, route_start })
    }

    /// The shared subscription `$share/GROUP/FILTER` (MQTT 5 section
    /// 4.8.2): the subscribers of one group split `filter`'s messages
    /// between them. The group is one topic level without wildcards;
    /// `filter` must not be a shared subscription already.
    pub fn shared(group: &str, filter: &TopicFilter) -> Result<Self> {
        if !is_share_group(group) {
            return Err(Error::InvalidShareGroup {
                group: group.to_owned(),
            });
        }
        if filter.share_group().is_some() {
            return Err(Error::InvalidTopic {
                topic: filter.full.clone(),
                reason: "already a shared subscription",
            });
        }
        Self::new(format!("$share/{group}/{}", filter.full))
    }

    /// The filter as sent to the broker.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The share group, for `$share/<group>/...` filters.
    pub fn share_group(&self) -> Option<&str> {
        (self.route_start > 0).then(|| &self.full["$share/".len()..self.route_start - 1])
    }

    /// Whether a message published to `topic` matches this filter.
    pub fn matches(&self, topic: &str) -> bool {
        // One matcher for the client and the broker plugin (section 4.7,
        // `$` topics included), checked exhaustively there.
        mosquitto_auth::topic::matches(&self.full[self.route_start..], topic)
    }
}

impl TopicFilter {
    /// Whether some topic matches both filters (their real filters, share
    /// groups aside): `a/#` and `a/+/t` overlap, `a/+` and `b/+` do not.
    pub fn overlaps(&self, other: &TopicFilter) -> bool {
        mosquitto_auth::topic::overlaps(
            &self.full[self.route_start..],
            &other.full[other.route_start..],
        )
    }
}

/// A share name is one non-empty topic level without wildcards (MQTT 5
/// section 4.8.2).
fn is_share_group(group: &str) -> bool {
    !group.is_empty() && !group.contains(['/', '+', '#'])
}

impl TryFrom<&str> for TopicFilter {
    type Error = Error;

    fn try_from(filter: &str) -> Result<Self> {
        Self::new(filter)
    }
}

impl TryFrom<String> for TopicFilter {
    type Error = Error;

    fn try_from(filter: String) -> Result<Self> {
        Self::new(filter)
    }
}

impl TryFrom<&String> for TopicFilter {
    type Error = Error;

    fn try_from(filter: &String) -> Result<Self> {
        Self::new(filter.as_str())
    }
}

impl From<&TopicFilter> for TopicFilter {
    fn from(filter: &TopicFilter) -> Self {
        filter.clone()
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

/// Checks a topic name for publishing: non-empty, no wildcards, no NUL.
pub(crate) fn check_publish_topic(topic: &str) -> Result<()> {
    let bad = |reason| Error::InvalidTopic {
        topic: topic.to_owned(),
        reason,
    };
    if topic.is_empty() {
        return Err(bad("a topic must not be empty"));
    }
    if topic.contains(['+', '#']) {
        return Err(bad("wildcards are not allowed when publishing"));
    }
    if topic.contains('\0') {
        return Err(bad("contains NUL"));
    }
    // MQTT frames a topic with a 16-bit length: a longer one would be
    // written with its length cut (a corrupt packet the broker refuses,
    // resent for ever with a persistent session).
    if topic.len() > 65_535 {
        return Err(bad("longer than 65535 bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_topic_must_fit_mqtts_16_bit_length() {
        assert!(check_publish_topic(&"a".repeat(65_535)).is_ok());
        let err = check_publish_topic(&"a".repeat(65_536)).unwrap_err();
        assert!(err.to_string().contains("longer than 65535 bytes"), "{err}");
    }

    fn m(filter: &str, topic: &str) -> bool {
        TopicFilter::new(filter).unwrap().matches(topic)
    }

    #[test]
    fn wildcards_match_as_the_spec_says() {
        assert!(m("a/b", "a/b"));
        assert!(!m("a/b", "a/b/c"));
        assert!(m("a/+", "a/b"));
        assert!(!m("a/+", "a/b/c"));
        assert!(m("a/+", "a/"));
        assert!(m("a/#", "a"));
        assert!(m("a/#", "a/b/c"));
        assert!(m("#", "a/b"));
        assert!(m("+/+", "/x"));
        assert!(m("+/b/+", "a/b/c"));
        assert!(!m("+/b/+", "a/x/c"));
    }

    #[test]
    fn dollar_topics_need_explicit_first_level() {
        assert!(!m("#", "$SYS/broker/uptime"));
        assert!(!m("+/broker/uptime", "$SYS/broker/uptime"));
        assert!(m("$SYS/#", "$SYS/broker/uptime"));
    }

    #[test]
    fn shared_subscriptions_route_by_their_filter() {
        let f = TopicFilter::new("$share/ingest/sensors/+/t").unwrap();
        assert_eq!(f.share_group(), Some("ingest"));
        assert!(f.matches("sensors/1/t"));
        assert!(!f.matches("$share/ingest/sensors/1/t"));
        assert_eq!(TopicFilter::new("a/#").unwrap().share_group(), None);
    }

    #[test]
    fn shared_subscriptions_are_made_from_a_group_and_a_plain_filter() {
        let plain = TopicFilter::new("sensors/+/t").unwrap();
        let shared = TopicFilter::shared("ingest", &plain).unwrap();
        assert_eq!(shared.as_str(), "$share/ingest/sensors/+/t");
        assert_eq!(
            shared,
            TopicFilter::new("$share/ingest/sensors/+/t").unwrap()
        );
        assert_eq!(shared.share_group(), Some("ingest"));
        for bad in ["", "a/b", "+", "g#", "#"] {
            let err = TopicFilter::shared(bad, &plain).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidShareGroup { group } if group == bad),
                "{bad:?}: {err}"
            );
        }
        let err = TopicFilter::shared("g", &shared).unwrap_err().to_string();
        assert!(err.contains("already a shared subscription"), "{err}");
    }

    #[test]
    fn rejects_malformed_filters() {
        for bad in [
            "",
            "a/#/b",
            "a#",
            "a/b+",
            "$share/",
            "$share/g",
            "$share//a",
            "$share/g/",
            "a\0b",
        ] {
            assert!(TopicFilter::new(bad).is_err(), "{bad:?}");
        }
        assert!(check_publish_topic("a/+").is_err());
        assert!(check_publish_topic("").is_err());
        assert!(check_publish_topic("a/b").is_ok());
    }

    #[test]
    fn overlapping_filters_are_found() {
        let o = |a: &str, b: &str| {
            let (a, b) = (TopicFilter::new(a).unwrap(), TopicFilter::new(b).unwrap());
            assert_eq!(a.overlaps(&b), b.overlaps(&a), "symmetric");
            a.overlaps(&b)
        };
        assert!(o("a/#", "a/+/t"));
        assert!(o("a/#", "a"));
        assert!(o("#", "x/y"));
        assert!(o("a/+", "+/b"));
        assert!(o("a/b", "a/b"));
        assert!(o("$share/g/a/#", "a/x"));
        assert!(!o("a/+", "b/+"));
        assert!(!o("a/+", "a/b/c"));
        assert!(!o("a/b", "a/c"));
        assert!(!o("#", "$SYS/x"));
        assert!(o("$SYS/#", "$SYS/+"));
    }
}
