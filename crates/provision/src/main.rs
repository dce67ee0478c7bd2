//! `provision`: the command line. Dispatch only: the definitions are in
//! `cli::args`, each command's work in `cli::commands` (which calls the
//! library), and its outcome (`cli::outcomes`) prints as text or, with `--json`, as JSON.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

mod cli;

use cli::args::{Cli, Command, IssueCommand};
use cli::commands as run;
use cli::enrollment;
use cli::outcomes::print;
use pki_core::Profile;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The service logs what it does; other commands print their outcome
    // and log only warnings (a lost broker link, a retried write).
    let default_filter = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    if let Err(e) = service_log::init(cli.log_format, default_filter) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let format = cli.log_format;
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`provision list | head`): nothing to say.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            service_log::fatal(format, &one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let json = cli.json;
    match cli.command {
        Command::InitCa(args) if args.intermediate => print(&run::init_intermediate(args)?, json),
        Command::InitCa(args) => print(&run::init_ca(args)?, json),
        Command::Issue(IssueCommand::Client(a)) => print(&run::issue(Profile::Client, a)?, json),
        Command::Issue(IssueCommand::Server(a)) => print(&run::issue(Profile::Server, a)?, json),
        Command::Issue(IssueCommand::Claim(a)) => print(&enrollment::issue_claim(a)?, json),
        Command::Serve(args) => enrollment::serve(args),
        Command::Enroll(args) => print(&enrollment::enroll(args)?, json),
        Command::Renew(args) => print(&enrollment::renew(args)?, json),
        Command::Csr(args) => print(&run::csr(args)?, json),
        Command::Sign(args) => print(&run::sign(args)?, json),
        Command::Inspect(args) => print(&run::inspect(args)?, json),
        Command::Verify(args) => print(&run::verify(args)?, json),
        Command::List(args) => run::list(args, json),
        // A revocation committed but not in every broker folder: printed,
        // then exit 1, so that a script or timer sees it.
        Command::Revoke(args) => {
            let revoked = run::revoke(args)?;
            print(&revoked, json)?;
            revoked.brokers.in_step()
        }
        Command::Crl(args) => {
            let written = run::crl(args)?;
            print(&written, json)?;
            written.brokers.in_step()
        }
        Command::Fleet(args) if args.dry_run => print(&run::fleet_plan(args)?, json),
        Command::Fleet(args) => print(&run::fleet(args)?, json),
        Command::BrokerConfig(args) => print(&run::broker_config(args)?, json),
        Command::Pub(args) => print(&run::publish(args)?, json),
        Command::Sub(args) => run::subscribe(args, json),
        Command::Audit(args) => {
            let audited = run::audit(args)?;
            print(&audited, json)?;
            match audited.findings() {
                0 => Ok(()),
                n => anyhow::bail!("the audit found {n} thing(s) to look at"),
            }
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "provision",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(())
        }
    }
}

/// The error and its causes on one line, leaving out causes whose text the
/// message already includes.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// One spelling for each concept on every command, the same as
    /// `mqtt-ingest`'s (`peers::vocabulary::CONCEPTS`); old spellings stay
    /// as hidden aliases.
    #[test]
    fn every_command_speaks_one_vocabulary() {
        let problems = peers::vocabulary::check(&super::Cli::command());
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}
