//! MQTT topic names and filters (MQTT 3.1.1 section 4.7): whether a filter
//! matches a topic, and the two relations between filters that a
//! SUBSCRIBE check needs: one filter *covers* another (every topic the
//! inner one matches, the outer one matches too) and two filters
//! *overlap* (some topic matches both).
//!
//! A filter starting with a wildcard never matches a topic starting with
//! `$` (section 4.7.2), in all three relations.

/// Whether `filter` is a valid MQTT topic filter: not empty, no NUL, `+`
/// and `#` only as whole levels, `#` only last.
pub fn is_valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| {
        (!level.contains('#') || (*level == "#" && i + 1 == levels.len()))
            && (!level.contains('+') || *level == "+")
    })
}

/// Whether `topic` is a valid topic name (what a PUBLISH carries): not
/// empty, no NUL, no wildcard.
pub fn is_valid_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['\0', '+', '#'])
}

/// A topic (or filter) whose first level starts with `$` is out of reach
/// of a filter starting with a wildcard.
fn dollar_guard(filter: &str, other: &str) -> bool {
    other.starts_with('$') && filter.starts_with(['+', '#'])
}

/// Whether `filter` matches `topic`.
pub fn matches(filter: &str, topic: &str) -> bool {
    if dollar_guard(filter, topic) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            // `a/#` matches `a` too (section 4.7.1.2).
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every topic `inner` matches is matched by `outer`: a client
/// allowed to read `outer` may subscribe to `inner`.
pub fn covers(outer: &str, inner: &str) -> bool {
    if dollar_guard(outer, inner) {
        return false;
    }
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    let mut first = true;
    loop {
        let (ol, il) = (o.next(), i.next());
        let at_start = std::mem::replace(&mut first, false);
        match (ol, il) {
            (Some("#"), _) => return true,
            // A whole filter `#` matches at least one level, as `+/#` does
            // (`a/#` matches `a`); deeper down, `#` may match no level,
            // which `+/...` never does.
            (Some("+"), Some("#")) => {
                return at_start && o.next() == Some("#") && o.next().is_none();
            }
            // `+` stands for one level: not for `#`, which may be none or
            // many.
            (Some("+"), Some(il)) if il != "#" => {}
            // A literal level covers only itself.
            (Some(ol), Some(il)) if ol == il && il != "+" && il != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some topic matches both `a` and `b`.
pub fn overlaps(a: &str, b: &str) -> bool {
    if dollar_guard(a, b) || dollar_guard(b, a) {
        return false;
    }
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(p), Some(q)) if p == q => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_by_table() {
        for (filter, topic, expected) in [
            ("devices/#", "devices", true),
            ("devices/#", "devices/a/b", true),
            ("devices/+", "devices/a", true),
            ("devices/+", "devices/a/b", false),
            ("devices/+", "devices", false),
            ("+/x", "/x", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/b", "a/b/", false),
        ] {
            assert_eq!(matches(filter, topic), expected, "{filter} ~ {topic}");
        }
    }

    #[test]
    fn covering_and_overlapping_by_table() {
        for (outer, inner, covered, overlapping) in [
            ("devices/#", "devices/#", true, true),
            ("devices/#", "devices/+/telemetry", true, true),
            ("devices/+/#", "devices/#", false, true),
            ("devices/d1/#", "devices/#", false, true),
            ("devices/d1/#", "devices/+/x", false, true),
            ("devices/+", "devices/+", true, true),
            ("devices/+", "devices/#", false, true),
            ("devices/a", "devices/+", false, true),
            ("devices/a", "devices/b", false, false),
            ("#", "$SYS/#", false, false),
            ("+/#", "$x", false, false),
            ("a/#", "a", true, true),
        ] {
            assert_eq!(covers(outer, inner), covered, "{outer} covers {inner}");
            assert_eq!(
                overlaps(outer, inner),
                overlapping,
                "{outer} overlaps {inner}"
            );
            assert_eq!(
                overlaps(inner, outer),
                overlapping,
                "{inner} overlaps {outer}"
            );
        }
    }

    #[test]
    fn validity() {
        for good in ["#", "+", "a/+/b", "a/#", "/", "$share/g/x", "a//b"] {
            assert!(is_valid_filter(good), "{good}");
        }
        for bad in ["", "a/#/b", "a+", "a/b#", "#a", "a\0b"] {
            assert!(!is_valid_filter(bad), "{bad}");
        }
        assert!(is_valid_topic("a/b"));
        for bad in ["", "a/+", "a/#", "a\0"] {
            assert!(!is_valid_topic(bad), "{bad}");
        }
    }

    /// Every sequence of `levels` of length 1..=`max`, joined by `/`.
    fn all(levels: &[&str], max: usize) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut last: Vec<String> = vec![String::new()];
        for len in 1..=max {
            last = last
                .iter()
                .flat_map(|prefix| {
                    levels.iter().map(move |l| {
                        if len == 1 {
                            (*l).to_owned()
                        } else {
                            format!("{prefix}/{l}")
                        }
                    })
                })
                .collect();
            out.extend(last.iter().cloned());
        }
        out
    }

    /// The property the SUBSCRIBE check stands on, over every filter of up
    /// to 3 levels and every topic of up to 4 (from levels that include a
    /// `$` level, an empty level and one no filter names): `covers` is
    /// exactly "every topic the inner filter matches, the outer matches",
    /// and `overlaps` exactly "some topic matches both".
    #[test]
    fn covers_and_overlaps_agree_with_matching_on_every_small_case() {
        let filters: Vec<String> = all(&["a", "$s", "", "+", "#"], 3)
            .into_iter()
            .filter(|f| is_valid_filter(f))
            .collect();
        let topics = all(&["a", "$s", "", "z"], 4);
        let matched: Vec<Vec<bool>> = filters
            .iter()
            .map(|f| topics.iter().map(|t| matches(f, t)).collect())
            .collect();
        let mut checked = 0;
        for (i, outer) in filters.iter().enumerate() {
            for (j, inner) in filters.iter().enumerate() {
                let by_topics_covered = (0..topics.len()).all(|t| !matched[j][t] || matched[i][t]);
                let by_topics_overlap = (0..topics.len()).any(|t| matched[j][t] && matched[i][t]);
                assert_eq!(
                    covers(outer, inner),
                    by_topics_covered,
                    "covers({outer:?}, {inner:?})"
                );
                assert_eq!(
                    overlaps(outer, inner),
                    by_topics_overlap,
                    "overlaps({outer:?}, {inner:?})"
                );
                checked += 1;
            }
        }
        assert!(checked > 10_000, "{checked}");
    }
}
