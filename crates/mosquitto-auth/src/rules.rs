//! The rules file: each role's topic rules, written by `provision
//! broker-config` from a fleet manifest's `[acl]` and read by the plugin.
//!
//! ```text
//! # comments and blank lines are ignored
//! [device]
//! readwrite devices/{name}/#
//! read fleet/broadcast/#
//!
//! [service]
//! read devices/#
//! share ingest devices/#
//! ```
//!
//! A rule is `read FILTER`, `write FILTER`, `readwrite FILTER`, `deny
//! FILTER` or `share GROUP FILTER`; `{name}` in a filter stands for the
//! identity's name (its certificate's CN). A role without a section gets
//! nothing. One file serves every identity: issuing a device changes
//! nothing at the broker.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::topic::{covers, is_valid_filter, matches, overlaps};

/// What a rule allows (or, for `deny`, takes away).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Receive messages on matching topics, and subscribe to filters the
    /// rule's filter covers.
    Read,
    /// Publish on matching topics.
    Write,
    /// Both.
    ReadWrite,
    /// Neither, whatever another rule says (checked first).
    Deny,
    /// Join the shared subscription group `$share/GROUP/...` with a filter
    /// the rule's filter covers (reading still needs a `read` rule).
    Share(String),
}

/// One rule: an access and a filter template (`{name}` for the
/// identity's name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// What it allows.
    pub access: Access,
    /// The topic filter, `{name}` not yet replaced.
    pub filter: String,
}

/// The placeholder for the identity's name in a filter.
pub const NAME: &str = "{name}";

impl FromStr for Rule {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: &str| Error::Rule {
            rule: s.to_owned(),
            reason: reason.to_owned(),
        };
        let mut words = s.split_whitespace();
        let (Some(access), Some(second)) = (words.next(), words.next()) else {
            return Err(bad(
                "a rule is ACCESS FILTER (read, write, readwrite, deny) or share GROUP FILTER",
            ));
        };
        let (access, filter) = match access {
            "read" => (Access::Read, second),
            "write" => (Access::Write, second),
            "readwrite" => (Access::ReadWrite, second),
            "deny" => (Access::Deny, second),
            "share" => {
                if !is_group(second) {
                    return Err(bad(
                        "a share group is one topic level without +, #, / or spaces",
                    ));
                }
                let filter = words
                    .next()
                    .ok_or_else(|| bad("share needs a group and a filter: share GROUP FILTER"))?;
                (Access::Share(second.to_owned()), filter)
            }
            _ => return Err(bad("access is read, write, readwrite, deny or share")),
        };
        if words.next().is_some() {
            return Err(bad("a filter has no spaces"));
        }
        // `{name}` as a placeholder; no other braces, and no `%` (Mosquitto's
        // acl_file patterns, which mean nothing here).
        let bare = filter.replace(NAME, "x");
        if bare.contains(['{', '}', '%'])
            || !is_valid_filter(&bare)
            || bare.chars().any(char::is_control)
        {
            return Err(bad(
                "the filter must be an MQTT filter (`+` and `#` as whole levels, `#` last; \
                 `{name}` for the identity's name)",
            ));
        }
        if filter.starts_with("$share/") {
            return Err(bad(
                "a shared subscription is allowed with `share GROUP FILTER`, not as a filter",
            ));
        }
        Ok(Self {
            access,
            filter: filter.to_owned(),
        })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.access {
            Access::Read => write!(f, "read {}", self.filter),
            Access::Write => write!(f, "write {}", self.filter),
            Access::ReadWrite => write!(f, "readwrite {}", self.filter),
            Access::Deny => write!(f, "deny {}", self.filter),
            Access::Share(group) => write!(f, "share {group} {}", self.filter),
        }
    }
}

/// Whether `s` can be a shared subscription's group name.
fn is_group(s: &str) -> bool {
    !s.is_empty() && !s.contains(['+', '#', '/', '\0']) && !s.chars().any(char::is_whitespace)
}

/// Whether `s` can name a role (a section).
fn is_role(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Whether `name` may stand for `{name}`: a single topic level that is
/// not a wildcard and does not start a `$` topic. An identity whose name
/// is not gets nothing (a CN `a/#` would otherwise widen `devices/{name}/#`).
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('$')
        && !name.contains(['/', '+', '#'])
        && !name.chars().any(char::is_control)
}

/// Every role's rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    roles: BTreeMap<String, Vec<Rule>>,
}

impl Rules {
    /// No rules: every role gets nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `role`'s rules (replacing any).
    pub fn set(&mut self, role: &str, rules: Vec<Rule>) -> Result<()> {
        if !is_role(role) {
            return Err(Error::Rule {
                rule: format!("[{role}]"),
                reason: "a role is lower-case letters, digits and -".into(),
            });
        }
        self.roles.insert(role.to_owned(), rules);
        Ok(())
    }

    /// The roles that have a section.
    pub fn roles(&self) -> impl Iterator<Item = &str> {
        self.roles.keys().map(String::as_str)
    }

    /// The rules of `role` (empty when it has no section).
    pub fn of(&self, role: &str) -> &[Rule] {
        self.roles.get(role).map_or(&[], Vec::as_slice)
    }

    /// Parses a rules file's text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let mut rules = Self::new();
        let mut current: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let err = |reason: String| Error::Rules {
                path: path.to_owned(),
                line: i + 1,
                reason,
            };
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(role) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                let role = role.trim();
                if !is_role(role) {
                    return Err(err(format!(
                        "[{role}]: a role is lower-case letters, digits and -"
                    )));
                }
                if rules.roles.contains_key(role) {
                    return Err(err(format!("[{role}] appears twice")));
                }
                rules.roles.insert(role.to_owned(), Vec::new());
                current = Some(role.to_owned());
                continue;
            }
            let Some(role) = &current else {
                return Err(err(format!("{line:?} comes before any [role] section")));
            };
            let rule: Rule = line.parse().map_err(|e: Error| err(e.to_string()))?;
            rules.roles.entry(role.clone()).or_default().push(rule);
        }
        Ok(rules)
    }

    /// The file's text, with `header` (each line made a comment) on top;
    /// [`Rules::parse`] reads it back.
    pub fn render(&self, header: &str) -> String {
        let mut text = String::new();
        for line in header.lines() {
            text.push_str("# ");
            text.push_str(line);
            text.push('\n');
        }
        for (role, rules) in &self.roles {
            text.push_str(&format!("\n[{role}]\n"));
            for rule in rules {
                text.push_str(&format!("{rule}\n"));
            }
        }
        text
    }

    /// `role`'s rules with `name` put in: what one identity may do.
    /// Nothing when the name is not safe ([`is_safe_name`]).
    pub fn grant(&self, role: &str, name: &str) -> Grant {
        if !is_safe_name(name) {
            return Grant::default();
        }
        Grant {
            rules: self
                .of(role)
                .iter()
                .map(|r| Rule {
                    access: r.access.clone(),
                    filter: r.filter.replace(NAME, name),
                })
                .collect(),
        }
    }
}

/// What a client asks the broker to do: the ACL check's question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// Receive a message published on this topic (a delivery).
    Read(&'a str),
    /// Publish on this topic (including a Last Will).
    Write(&'a str),
    /// Subscribe to this filter, which may be `$share/GROUP/FILTER`.
    Subscribe(&'a str),
    /// Unsubscribe: always allowed (a refused one would silently keep the
    /// subscription).
    Unsubscribe,
}

/// One identity's rules, `{name}` replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    rules: Vec<Rule>,
}

impl Grant {
    /// Whether the rules allow `request`. Deny rules win: a topic one
    /// matches, or a filter one overlaps, is refused.
    pub fn allows(&self, request: Request<'_>) -> bool {
        match request {
            Request::Unsubscribe => true,
            Request::Read(topic) => self.topic_allowed(topic, true),
            Request::Write(topic) => self.topic_allowed(topic, false),
            Request::Subscribe(filter) => match filter.strip_prefix("$share/") {
                Some(rest) => {
                    let Some((group, filter)) = rest.split_once('/') else {
                        return false;
                    };
                    is_group(group)
                        && is_valid_filter(filter)
                        && self.rules.iter().any(|r| {
                            matches!(&r.access, Access::Share(g) if g == group)
                                && covers(&r.filter, filter)
                        })
                        && self.filter_readable(filter)
                }
                None => is_valid_filter(filter) && self.filter_readable(filter),
            },
        }
    }

    fn topic_allowed(&self, topic: &str, read: bool) -> bool {
        let grants = |a: &Access| match a {
            Access::ReadWrite => true,
            Access::Read => read,
            Access::Write => !read,
            Access::Deny | Access::Share(_) => false,
        };
        !self
            .rules
            .iter()
            .any(|r| r.access == Access::Deny && matches(&r.filter, topic))
            && self
                .rules
                .iter()
                .any(|r| grants(&r.access) && matches(&r.filter, topic))
    }

    /// Whether every topic `filter` matches may be read: a read rule
    /// covers it, and no deny rule overlaps it (a subscription that would
    /// be granted but receive only part of what it names is refused: a
    /// member of a shared group must be able to take every message).
    fn filter_readable(&self, filter: &str) -> bool {
        !self
            .rules
            .iter()
            .any(|r| r.access == Access::Deny && overlaps(&r.filter, filter))
            && self.rules.iter().any(|r| {
                matches!(r.access, Access::Read | Access::ReadWrite) && covers(&r.filter, filter)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules::parse(
            "# test\n\
             [device]\n\
             readwrite devices/{name}/#\n\
             read fleet/broadcast/#\n\
             write pki/v1/renew/{name}/req\n\
             \n\
             [service]\n\
             read devices/#\n\
             write fleet/broadcast/#\n\
             share ingest devices/#\n\
             deny devices/secret/x\n\
             [reader]\n",
            Path::new("rules"),
        )
        .unwrap()
    }

    #[test]
    fn the_file_round_trips() {
        let rules = rules();
        let text = rules.render("Generated\nby a test");
        assert!(text.starts_with("# Generated\n# by a test\n"), "{text}");
        assert_eq!(Rules::parse(&text, Path::new("x")).unwrap(), rules);
        assert!(rules.of("reader").is_empty());
        assert!(rules.of("nobody").is_empty());
    }

    #[test]
    fn bad_files_name_the_line() {
        for (text, line, needle) in [
            ("read x\n", 1, "before any [role]"),
            ("[device]\nadmin x\n", 2, "access is"),
            ("[device]\nread a/#/b\n", 2, "MQTT filter"),
            ("[device]\nread devices/%u/#\n", 2, "MQTT filter"),
            ("[device]\nread {other}/x\n", 2, "MQTT filter"),
            ("[device]\nread a b\n", 2, "no spaces"),
            ("[device]\nshare a/b x\n", 2, "share group"),
            ("[device]\nshare g\n", 2, "a group and a filter"),
            ("[device]\nread $share/g/x\n", 2, "share GROUP FILTER"),
            ("[Device]\n", 1, "lower-case"),
            ("[a]\n[a]\n", 2, "twice"),
        ] {
            let e = Rules::parse(text, Path::new("broker/rules")).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("broker/rules:{line}: ")) && msg.contains(needle),
                "{text:?}: {msg}"
            );
        }
    }

    #[test]
    fn decisions_by_table() {
        let rules = rules();
        let d1 = rules.grant("device", "d1");
        let svc = rules.grant("service", "ingest");
        let reader = rules.grant("reader", "dash");
        use Request::*;
        for (who, grant, request, allowed) in [
            ("d1", &d1, Subscribe("devices/d1/#"), true),
            ("d1", &d1, Subscribe("devices/d1/+/x"), true),
            ("d1", &d1, Subscribe("devices/#"), false),
            ("d1", &d1, Subscribe("devices/+/telemetry"), false),
            ("d1", &d1, Subscribe("#"), false),
            ("d1", &d1, Subscribe("fleet/broadcast/#"), true),
            (
                "d1",
                &d1,
                Subscribe("$share/ingest/devices/+/telemetry"),
                false,
            ),
            ("d1", &d1, Subscribe("$share/ingest/devices/d1/#"), false),
            ("d1", &d1, Subscribe("$SYS/#"), false),
            ("d1", &d1, Unsubscribe, true),
            ("d1", &d1, Write("devices/d1/data"), true),
            ("d1", &d1, Write("devices/d2/data"), false),
            ("d1", &d1, Write("fleet/broadcast/x"), false),
            ("d1", &d1, Write("pki/v1/renew/d1/req"), true),
            ("d1", &d1, Read("pki/v1/renew/d1/req"), false),
            ("d1", &d1, Read("devices/d2/data"), false),
            ("d1", &d1, Read("fleet/broadcast/x"), true),
            ("svc", &svc, Subscribe("devices/#"), false),
            ("svc", &svc, Subscribe("devices/+/telemetry"), true),
            (
                "svc",
                &svc,
                Subscribe("$share/ingest/devices/+/telemetry"),
                true,
            ),
            (
                "svc",
                &svc,
                Subscribe("$share/other/devices/+/telemetry"),
                false,
            ),
            ("svc", &svc, Subscribe("$share/ingest/fleet/#"), false),
            ("svc", &svc, Subscribe("$share/ingest"), false),
            ("svc", &svc, Subscribe("$share//devices/x"), false),
            ("svc", &svc, Read("devices/d1/telemetry"), true),
            ("svc", &svc, Read("devices/secret/x"), false),
            ("svc", &svc, Write("fleet/broadcast/all"), true),
            ("svc", &svc, Write("devices/d1/cmd"), false),
            ("reader", &reader, Subscribe("#"), false),
            ("reader", &reader, Read("devices/d1/x"), false),
            ("reader", &reader, Unsubscribe, true),
        ] {
            assert_eq!(grant.allows(request), allowed, "{who}: {request:?}");
        }
    }

    #[test]
    fn an_unsafe_name_gets_nothing() {
        let rules = rules();
        for name in ["", "a/b", "+", "#", "d1/#", "$SYS", "a\nb", "a\0b"] {
            let grant = rules.grant("device", name);
            assert_eq!(grant, Grant::default(), "{name:?}");
            assert!(
                !grant.allows(Request::Read("fleet/broadcast/x")),
                "{name:?}"
            );
        }
        // Characters that are mere text in a topic level stay text.
        let grant = rules.grant("device", "%u");
        assert!(grant.allows(Request::Write("devices/%u/x")));
        assert!(!grant.allows(Request::Write("devices/d1/x")));
    }

    /// Whatever the name, `readwrite devices/{name}/#` grants a device no
    /// topic outside `devices/NAME/...`, over names made of every
    /// character that means something to MQTT, a shell or a template.
    #[test]
    fn no_name_reaches_outside_its_own_topics() {
        let rules = rules();
        let parts = [
            "a", "/", "+", "#", "$", "%u", "%c", "{name}", " ", "\0", "..",
        ];
        let topics = [
            "devices/a/x",
            "devices/b/x",
            "devices",
            "devices/+/x",
            "fleet/broadcast/x",
            "$SYS/x",
            "x",
        ];
        for p in parts {
            for q in parts {
                let name = format!("{p}{q}");
                let grant = rules.grant("device", &name);
                for topic in topics {
                    for request in [Request::Write(topic), Request::Read(topic)] {
                        let own = topic.starts_with(&format!("devices/{name}/"))
                            || topic == format!("devices/{name}")
                            || (matches!(request, Request::Read(_))
                                && topic.starts_with("fleet/broadcast/"));
                        if grant.allows(request) {
                            assert!(own, "{name:?} was granted {request:?}");
                        }
                    }
                    if grant.allows(Request::Subscribe(topic)) {
                        assert!(
                            topic.starts_with(&format!("devices/{name}/"))
                                || topic.starts_with("fleet/broadcast/"),
                            "{name:?} may subscribe to {topic:?}"
                        );
                    }
                }
            }
        }
    }
}
