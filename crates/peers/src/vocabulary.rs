//! One vocabulary of flags across the project's binaries: a check that
//! walks a clap definition (every command and subcommand) and reports two
//! spellings of one concept. Each binary's unit tests run it on its own
//! `Command`; [`CONCEPTS`] is shared, so the binaries agree with each other
//! too. Old spellings may stay as hidden aliases (`#[arg(alias = ...)]`).

use std::collections::BTreeMap;

/// Each concept's one spelling, and spellings that mean the same and must
/// not be visible flags (they may be hidden aliases).
pub const CONCEPTS: &[(&str, &[&str])] = &[
    ("ca-dir", &["dir", "ca-folder", "ca-path", "ca-directory"]),
    (
        "cert",
        &["certificate", "cert-file", "cert-path", "client-cert"],
    ),
    (
        "key",
        &["key-file", "key-path", "private-key", "client-key"],
    ),
    ("ca", &["ca-cert", "ca-file", "cafile", "cacert", "root-ca"]),
    ("out", &["output", "out-dir", "output-dir"]),
    (
        "listen",
        &[
            "http",
            "http-listen",
            "http-addr",
            "metrics-listen",
            "health-listen",
        ],
    ),
    ("force", &["overwrite", "replace", "yes"]),
    ("host", &["broker", "broker-host", "hostname", "mqtt-host"]),
    ("port", &["broker-port", "mqtt-port"]),
    ("client-id", &["id", "clientid", "client"]),
    ("db", &["database", "database-url", "db-url"]),
    ("topic", &["topics", "filter", "filters"]),
    // The CA key's passphrase, and the identity's own key's.
    (
        "passphrase-env",
        &[
            "pass-env",
            "password-env",
            "passphrase-var",
            "pass-var",
            "ca-passphrase-env",
        ],
    ),
    (
        "key-passphrase-env",
        &[
            "client-passphrase-env",
            "identity-passphrase-env",
            "key-pass-env",
        ],
    ),
    ("crl-days", &["crl-validity-days", "crl-valid-days"]),
    ("crl-lifetime", &["lifetime", "crl-validity"]),
    (
        "key-type",
        &["algorithm", "alg", "key-algorithm", "key-alg"],
    ),
    ("log-format", &["log-style", "log-output", "log-json"]),
    (
        "insecure-db",
        &["db-insecure", "no-db-tls", "allow-insecure-db"],
    ),
    ("share-group", &["shared-group", "group"]),
    ("max-packet-size", &["packet-size", "max-packet"]),
    ("shutdown-timeout", &["stop-timeout", "grace-period"]),
    ("json", &["output-json", "format-json"]),
];

/// One visible long flag where it appears.
struct Flag {
    command: String,
    id: String,
    long: String,
    help: String,
}

/// Everything wrong with `command`'s vocabulary, one line each (empty: in
/// agreement):
/// - a visible flag spelled as a synonym in [`CONCEPTS`];
/// - one argument (the same clap id) spelled two ways in two commands;
/// - two spellings with the same help text (one concept, two names).
pub fn check(command: &clap::Command) -> Vec<String> {
    let mut flags = Vec::new();
    walk(command, command.get_name(), &mut flags);
    let mut problems = Vec::new();
    for flag in &flags {
        for (canonical, synonyms) in CONCEPTS {
            if synonyms.contains(&flag.long.as_str()) {
                problems.push(format!(
                    "`{}` spells {canonical:?} as --{} (use --{canonical}, keep --{} as a hidden alias)",
                    flag.command, flag.long, flag.long
                ));
            }
        }
    }
    let mut by_id: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
    let mut by_help: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
    for flag in &flags {
        by_id
            .entry(&flag.id)
            .or_default()
            .insert(&flag.long, &flag.command);
        if !flag.help.is_empty() {
            by_help
                .entry(&flag.help)
                .or_default()
                .insert(&flag.long, &flag.command);
        }
    }
    for (id, longs) in by_id.iter().filter(|(_, l)| l.len() > 1) {
        problems.push(format!("argument {id:?} has two spellings: {longs:?}"));
    }
    for (help, longs) in by_help.iter().filter(|(_, l)| l.len() > 1) {
        problems.push(format!(
            "one concept ({help:?}) has two spellings: {longs:?}"
        ));
    }
    problems
}

fn walk(command: &clap::Command, path: &str, flags: &mut Vec<Flag>) {
    for arg in command.get_arguments().filter(|a| !a.is_hide_set()) {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" || long == "version" {
            continue;
        }
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        // The first sentence names the concept; the rest is detail.
        let first = help.split(". ").next().unwrap_or("").trim_end_matches('.');
        flags.push(Flag {
            command: path.to_owned(),
            id: arg.get_id().to_string(),
            long: long.to_owned(),
            help: first.to_owned(),
        });
    }
    for sub in command.get_subcommands() {
        walk(sub, &format!("{path} {}", sub.get_name()), flags);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_spellings_are_found_three_ways() {
        let cmd = clap::Command::new("tool")
            .subcommand(
                clap::Command::new("a")
                    .arg(clap::Arg::new("dir").long("dir").help("The CA folder"))
                    .arg(clap::Arg::new("out").long("out").help("Output folder")),
            )
            .subcommand(
                clap::Command::new("b")
                    .arg(
                        clap::Arg::new("out")
                            .long("out-folder")
                            .help("Where to write"),
                    )
                    .arg(
                        clap::Arg::new("ca_dir")
                            .long("ca-dir")
                            .help("The CA folder"),
                    )
                    .arg(clap::Arg::new("old").long("ca-folder").hide(true)),
            );
        let problems = check(&cmd);
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[0].contains("`tool a` spells \"ca-dir\" as --dir"));
        assert!(problems[1].contains("argument \"out\" has two spellings"));
        assert!(problems[2].contains("\"The CA folder\""));
        // Hidden aliases and hidden flags are not spellings.
        let fine = clap::Command::new("tool").arg(
            clap::Arg::new("ca_dir")
                .long("ca-dir")
                .alias("dir")
                .help("The CA folder"),
        );
        assert!(check(&fine).is_empty());
    }
}
