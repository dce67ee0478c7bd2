//! The project's Debian packages, built from binaries already compiled:
//!
//! - `mqtt-mtls-provision`: `/usr/bin/provision`, its man page, the
//!   `provision-serve.service`, `provision-crl.service` and
//!   `provision-crl.timer` units, the `mqtt-mtls` system user, and
//!   `/etc/mqtt-mtls/provision-serve.env`;
//! - `mqtt-mtls-ingest`: `/usr/bin/mqtt-ingest`, the `mqtt-ingest@.service`
//!   template (one instance per `/etc/mqtt-ingest/NAME.toml`), the
//!   `mqtt-ingest` system user, an example configuration;
//! - `mqtt-mtls-mosquitto-plugin`: the broker plugin,
//!   `/usr/lib/mqtt-mtls/libmqtt_mtls_auth.so`, where `provision
//!   broker-config` looks for it.
//!
//! Every ELF file is stripped; its debug information goes beside the
//! packages as `NAME.debug` (linked with `.gnu_debuglink`). Units, the
//! environment file and the example come from `packaging/` in the source
//! tree. The tools are Debian's: `objcopy`, `dpkg-shlibdeps` (the `Depends`
//! on libc), `gzip`, `dpkg-deb`.
//!
//! Used by `cargo xtask dist` (release binaries) and by the packaging tests
//! (the test build, then `lintian` and `systemd-analyze` on the result).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the packages are built from.
#[derive(Clone, Debug)]
pub struct Inputs {
    /// The folder with `provision`, `mqtt-ingest` and
    /// `libmqtt_mtls_auth.so` (`target/release`, or `target/debug`).
    pub bin_dir: PathBuf,
    /// The source tree's root (for `packaging/`).
    pub source_dir: PathBuf,
    /// The packages' version (the workspace's).
    pub version: String,
    /// xz-compress the packages (`dist`); else gzip at its fastest (the
    /// tests: Debian requires compression of some kind).
    pub compress: bool,
    /// Keep each stripped file's debug information beside the packages
    /// (`dist`); the tests only strip.
    pub separate_debug: bool,
}

/// One package built.
#[derive(Clone, Debug)]
pub struct Built {
    /// The package's name.
    pub package: String,
    /// The `.deb` file.
    pub deb: PathBuf,
    /// Each stripped file's separate debug information.
    pub debug: Vec<PathBuf>,
    /// The systemd units it installs, as files in the staging tree.
    pub units: Vec<PathBuf>,
    /// The staging tree the package was made from (what it installs).
    pub root: PathBuf,
    /// Its stripped ELF files (binaries, the plugin), in the staging tree.
    pub elves: Vec<PathBuf>,
}

/// What can go wrong building the packages.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file cannot be read, written or copied.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A tool failed or is missing.
    #[error("{command} failed: {detail}")]
    Tool {
        /// The command line.
        command: String,
        /// Its exit status and standard error, or why it did not start.
        detail: String,
    },
}

type Result<T> = std::result::Result<T, Error>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where a packaged file comes from.
enum Source {
    /// A compiled file in [`Inputs::bin_dir`], stripped.
    Elf(&'static str),
    /// A file of the source tree.
    Tree(&'static str),
    /// `provision man`'s output, gzipped.
    ManPage(&'static str),
    /// An empty folder (where the operator puts configuration).
    Dir,
}

struct Entry {
    dest: String,
    source: Source,
    mode: u32,
}

struct Spec {
    name: &'static str,
    summary: &'static str,
    description: &'static str,
    extra_depends: &'static [&'static str],
    files: Vec<Entry>,
    /// The system user the services run as: (name, home, comment).
    user: Option<(&'static str, &'static str, &'static str)>,
}

fn entry(dest: impl Into<String>, source: Source, mode: u32) -> Entry {
    Entry {
        dest: dest.into(),
        source,
        mode,
    }
}

fn specs() -> Vec<Spec> {
    let unit = |name: &'static str, path: &'static str| {
        entry(
            format!("usr/lib/systemd/system/{name}"),
            Source::Tree(path),
            0o644,
        )
    };
    vec![
        Spec {
            name: "mqtt-mtls-provision",
            summary: "certificates for MQTT over mutual TLS: CA, devices, brokers",
            description: "provision creates a CA, issues and renews device, service and\n\
                          broker certificates, revokes them and keeps the CRL current,\n\
                          writes Mosquitto configuration, and answers enrollment and\n\
                          renewal requests over MQTT (provision-serve.service). The CRL\n\
                          timer re-signs the CRL before it lapses.",
            extra_depends: &["adduser"],
            files: vec![
                entry("usr/bin/provision", Source::Elf("provision"), 0o755),
                entry(
                    "usr/share/man/man1/provision.1.gz",
                    Source::ManPage("provision"),
                    0o644,
                ),
                unit(
                    "provision-serve.service",
                    "packaging/systemd/provision-serve.service",
                ),
                unit(
                    "provision-crl.service",
                    "packaging/systemd/provision-crl.service",
                ),
                unit(
                    "provision-crl.timer",
                    "packaging/systemd/provision-crl.timer",
                ),
                // 0600: it holds the CA key's passphrase once configured.
                entry(
                    "etc/mqtt-mtls/provision-serve.env",
                    Source::Tree("packaging/etc/provision-serve.env"),
                    0o600,
                ),
                entry(
                    "usr/share/lintian/overrides/mqtt-mtls-provision",
                    Source::Tree("packaging/lintian/mqtt-mtls-provision"),
                    0o644,
                ),
            ],
            user: Some(("mqtt-mtls", "/var/lib/mqtt-mtls", "MQTT mTLS CA")),
        },
        Spec {
            name: "mqtt-mtls-ingest",
            summary: "stores every MQTT message, acknowledged after commit",
            description: "mqtt-ingest subscribes over mutual TLS and stores every message in\n\
                          SQLite or PostgreSQL, acknowledging it to the broker only after\n\
                          the commit, and serves the messages over HTTP(S). One\n\
                          mqtt-ingest@NAME.service per /etc/mqtt-ingest/NAME.toml.",
            extra_depends: &["adduser"],
            files: vec![
                entry("usr/bin/mqtt-ingest", Source::Elf("mqtt-ingest"), 0o755),
                // NAME.toml and NAME.env of each instance go here.
                entry("etc/mqtt-ingest", Source::Dir, 0o755),
                unit(
                    "mqtt-ingest@.service",
                    "packaging/systemd/mqtt-ingest@.service",
                ),
                entry(
                    "usr/share/doc/mqtt-mtls-ingest/examples/mqtt-ingest.example.toml",
                    Source::Tree("packaging/etc/mqtt-ingest.example.toml"),
                    0o644,
                ),
            ],
            user: Some(("mqtt-ingest", "/var/lib/mqtt-ingest", "MQTT mTLS ingest")),
        },
        Spec {
            name: "mqtt-mtls-mosquitto-plugin",
            summary: "Mosquitto plugin enforcing MQTT mTLS identities",
            description: "A Mosquitto 2.0 plugin: the broker checks each client's\n\
                          certificate role and topics itself (publish and subscribe),\n\
                          and refuses revoked certificates. Load it with\n\
                          `plugin` in mosquitto.conf (provision broker-config writes it).",
            extra_depends: &["mosquitto (>= 2.0)"],
            files: vec![entry(
                "usr/lib/mqtt-mtls/libmqtt_mtls_auth.so",
                Source::Elf("libmqtt_mtls_auth.so"),
                0o644,
            )],
            user: None,
        },
    ]
}

/// Runs `cmd`; its standard output, or [`Error::Tool`].
fn run(cmd: &mut Command) -> Result<Vec<u8>> {
    let command = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let out = cmd.output().map_err(|e| Error::Tool {
        command: command.clone(),
        detail: format!("cannot start it: {e} (Debian: apt-get install dpkg-dev binutils)"),
    })?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(Error::Tool {
            command,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).trim().to_owned()
}

/// Builds every package into `out` (created), from `inputs`.
///
/// # Errors
/// A missing input file, a failing tool (named with its output).
pub fn build_all(inputs: &Inputs, out: &Path) -> Result<Vec<Built>> {
    std::fs::create_dir_all(out).map_err(io(out))?;
    let arch = text(run(Command::new("dpkg").arg("--print-architecture"))?);
    let mut built = Vec::new();
    for spec in specs() {
        built.push(build_one(inputs, out, &arch, &spec)?);
    }
    Ok(built)
}

fn build_one(inputs: &Inputs, out: &Path, arch: &str, spec: &Spec) -> Result<Built> {
    let root = out.join(format!("{}-root", spec.name));
    if root.exists() {
        std::fs::remove_dir_all(&root).map_err(io(&root))?;
    }
    let debug_dir = out.join("debug");
    if inputs.separate_debug {
        std::fs::create_dir_all(&debug_dir).map_err(io(&debug_dir))?;
    }
    let mut debug = Vec::new();
    let mut elves = Vec::new();
    let mut units = Vec::new();
    let mut conffiles = String::new();
    for file in &spec.files {
        let dest = root.join(&file.dest);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        if matches!(file.source, Source::Dir) {
            std::fs::create_dir_all(&dest).map_err(io(&dest))?;
            set_mode(&dest, file.mode)?;
            continue;
        }
        match &file.source {
            Source::Elf(name) => {
                let from = inputs.bin_dir.join(name);
                let mut strip = Command::new("objcopy");
                strip.args([
                    "--strip-unneeded",
                    "--remove-section=.comment",
                    "--remove-section=.note",
                ]);
                if inputs.separate_debug {
                    let symbols = debug_dir.join(format!("{name}.debug"));
                    run(Command::new("objcopy")
                        .arg("--only-keep-debug")
                        .arg(&from)
                        .arg(&symbols))?;
                    strip.arg(format!("--add-gnu-debuglink={}", symbols.display()));
                    debug.push(symbols);
                }
                run(strip.arg(&from).arg(&dest))?;
                elves.push(dest.clone());
            }
            Source::Tree(path) => {
                let from = inputs.source_dir.join(path);
                std::fs::copy(&from, &dest).map_err(io(&from))?;
            }
            Source::Dir => {}
            Source::ManPage(name) => {
                let page = run(Command::new(inputs.bin_dir.join(name)).arg("man"))?;
                std::fs::write(&dest, gzip(&page, &dest)?).map_err(io(&dest))?;
            }
        }
        set_mode(&dest, file.mode)?;
        if file.dest.starts_with("usr/lib/systemd/system/") {
            units.push(dest.clone());
        }
        if file.dest.starts_with("etc/") {
            let _ = writeln!(conffiles, "/{}", file.dest);
        }
    }
    let doc = root.join("usr/share/doc").join(spec.name);
    std::fs::create_dir_all(&doc).map_err(io(&doc))?;
    write(&doc.join("copyright"), &copyright(), 0o644)?;
    let changelog = doc.join("changelog.gz");
    let log = gzip(
        changelog_text(spec.name, &inputs.version)?.as_bytes(),
        &changelog,
    )?;
    std::fs::write(&changelog, log).map_err(io(&changelog))?;
    set_mode(&changelog, 0o644)?;
    if let Some((user, home, comment)) = spec.user {
        let sysusers = root.join(format!("usr/lib/sysusers.d/{}.conf", spec.name));
        if let Some(parent) = sysusers.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        write(
            &sysusers,
            &format!("u {user} - \"{comment}\" {home}\n"),
            0o644,
        )?;
    }

    let control_dir = root.join("DEBIAN");
    std::fs::create_dir_all(&control_dir).map_err(io(&control_dir))?;
    let mut depends = shlib_depends(out, &elves)?;
    depends.extend(spec.extra_depends.iter().map(|d| (*d).to_owned()));
    let control = format!(
        "Package: {name}\nVersion: {version}\nArchitecture: {arch}\n\
         Maintainer: MQTT mTLS maintainers <maintainers@example.invalid>\n\
         Installed-Size: {size}\nDepends: {depends}\nSection: net\nPriority: optional\n\
         Homepage: https://example.invalid/mqtt-mtls\n\
         Description: {summary}\n{description}\n",
        name = spec.name,
        version = inputs.version,
        size = installed_kib(&root)?,
        depends = depends.join(", "),
        summary = spec.summary,
        description = spec
            .description
            .lines()
            .map(|l| format!(" {}", l.trim()))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    write(&control_dir.join("control"), &control, 0o644)?;
    if !conffiles.is_empty() {
        write(&control_dir.join("conffiles"), &conffiles, 0o644)?;
    }
    // The units by name, a template's instances as a pattern.
    let unit_names: Vec<String> = units
        .iter()
        .filter_map(|u| u.file_name().and_then(|n| n.to_str()))
        .map(|n| n.replace("@.", "@*."))
        .collect();
    if spec.user.is_some() || !unit_names.is_empty() {
        write(
            &control_dir.join("postinst"),
            &postinst(spec.name, spec.user, &unit_names),
            0o755,
        )?;
    }
    if !unit_names.is_empty() {
        write(&control_dir.join("prerm"), &prerm(&unit_names), 0o755)?;
        write(&control_dir.join("postrm"), &postrm(&unit_names), 0o755)?;
    }
    write(&control_dir.join("md5sums"), &md5sums(&root)?, 0o644)?;

    let deb = out.join(format!("{}_{}_{arch}.deb", spec.name, inputs.version));
    let compression: &[&str] = if inputs.compress {
        &["-Zxz", "-z6"]
    } else {
        &["-Zgzip", "-z1"]
    };
    run(Command::new("dpkg-deb")
        .arg("--root-owner-group")
        .args(compression)
        .arg("--build")
        .arg(&root)
        .arg(&deb))?;
    Ok(Built {
        package: spec.name.to_owned(),
        deb,
        debug,
        units,
        root,
        elves,
    })
}

fn write(path: &Path, body: &str, mode: u32) -> Result<()> {
    std::fs::write(path, body).map_err(io(path))?;
    set_mode(path, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))
}

/// `gzip -9n` of `bytes` (no name or time stamp: reproducible).
fn gzip(bytes: &[u8], for_path: &Path) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .args(["-9n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(io(for_path))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(bytes).map_err(io(for_path))?;
    }
    let out = child.wait_with_output().map_err(io(for_path))?;
    if !out.status.success() {
        return Err(Error::Tool {
            command: format!("gzip for {}", for_path.display()),
            detail: out.status.to_string(),
        });
    }
    Ok(out.stdout)
}

/// The libraries the ELF files need, as `Depends` entries
/// (`dpkg-shlibdeps`, which wants a `debian/control` to run in).
fn shlib_depends(out: &Path, elves: &[PathBuf]) -> Result<Vec<String>> {
    if elves.is_empty() {
        return Ok(Vec::new());
    }
    let work = out.join("shlibdeps");
    let debian = work.join("debian");
    std::fs::create_dir_all(&debian).map_err(io(&debian))?;
    write(
        &debian.join("control"),
        "Source: mqtt-mtls\n\nPackage: mqtt-mtls\nArchitecture: any\n",
        0o644,
    )?;
    let mut cmd = Command::new("dpkg-shlibdeps");
    cmd.current_dir(&work).args(["-O", "--warnings=0"]);
    for elf in elves {
        cmd.arg(format!("-e{}", elf.display()));
    }
    let said = text(run(&mut cmd)?);
    Ok(said
        .lines()
        .filter_map(|l| l.strip_prefix("shlibs:Depends="))
        .flat_map(|d| d.split(", ").map(str::to_owned).collect::<Vec<_>>())
        .collect())
}

fn installed_kib(root: &Path) -> Result<u64> {
    let mut bytes = 0;
    for file in files_under(root)? {
        bytes += std::fs::metadata(&file).map_err(io(&file))?.len();
    }
    Ok(bytes.div_ceil(1024))
}

/// Every regular file under `root`, but not in `DEBIAN/`, sorted.
fn files_under(root: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for item in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let item = item.map_err(io(&dir))?;
            let path = item.path();
            let kind = item.file_type().map_err(io(&path))?;
            if kind.is_dir() {
                if path != root.join("DEBIAN") {
                    stack.push(path);
                }
            } else if kind.is_file() {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

fn md5sums(root: &Path) -> Result<String> {
    let files = files_under(root)?;
    let mut cmd = Command::new("md5sum");
    cmd.current_dir(root);
    for file in &files {
        if let Ok(relative) = file.strip_prefix(root) {
            cmd.arg(relative);
        }
    }
    Ok(String::from_utf8_lossy(&run(&mut cmd)?).into_owned())
}

fn copyright() -> String {
    "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
     Upstream-Name: mqtt-mtls\n\
     Source: https://example.invalid/mqtt-mtls\n\
     \n\
     Files: *\n\
     Copyright: 2026 The mqtt-mtls authors\n\
     License: MIT or Apache-2.0\n\
     \n\
     License: MIT\n \
     Permission is hereby granted, free of charge, to any person obtaining a copy\n \
     of this software and associated documentation files (the \"Software\"), to deal\n \
     in the Software without restriction, including without limitation the rights\n \
     to use, copy, modify, merge, publish, distribute, sublicense, and/or sell\n \
     copies of the Software, and to permit persons to whom the Software is\n \
     furnished to do so, subject to the following conditions:\n \
     .\n \
     The above copyright notice and this permission notice shall be included in\n \
     all copies or substantial portions of the Software.\n \
     .\n \
     THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR\n \
     IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,\n \
     FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE\n \
     AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER\n \
     LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,\n \
     OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE\n \
     SOFTWARE.\n\
     \n\
     License: Apache-2.0\n \
     On Debian systems, the full text of the Apache License, Version 2.0 is in\n \
     /usr/share/common-licenses/Apache-2.0.\n"
        .to_owned()
}

/// A one-entry Debian changelog, dated by `SOURCE_DATE_EPOCH` when set.
fn changelog_text(name: &str, version: &str) -> Result<String> {
    let mut date = Command::new("date");
    date.args(["-R", "-u"]);
    if let Ok(epoch) = std::env::var("SOURCE_DATE_EPOCH") {
        date.arg("-d").arg(format!("@{epoch}"));
    }
    let date = text(run(&mut date)?);
    Ok(format!(
        "{name} ({version}) unstable; urgency=medium\n\n  \
         * Built from the mqtt-mtls source tree (cargo xtask dist).\n\n \
         -- MQTT mTLS maintainers <maintainers@example.invalid>  {date}\n"
    ))
}

/// At configure time: the package's system user (`systemd-sysusers` from
/// its `sysusers.d` file, else `adduser`); systemd told of the units, and
/// on an upgrade (`$2`, the version before) the running ones restarted on
/// the new binary. Nothing is enabled: the operator configures first.
fn postinst(package: &str, user: Option<(&str, &str, &str)>, units: &[String]) -> String {
    let mut script = String::from("#!/bin/sh\nset -e\nif [ \"$1\" = configure ]; then\n");
    if let Some((user, home, _)) = user {
        let _ = write!(
            script,
            "    if command -v systemd-sysusers >/dev/null 2>&1; then\n        \
                     systemd-sysusers {package}.conf\n    \
                 elif ! getent passwd {user} >/dev/null; then\n        \
                     adduser --system --group --home {home} --no-create-home {user}\n    \
                 fi\n"
        );
    }
    if !units.is_empty() {
        let _ = write!(
            script,
            "    if [ -d /run/systemd/system ]; then\n        \
                     systemctl --system daemon-reload >/dev/null || true\n        \
                     if [ -n \"$2\" ] && command -v deb-systemd-invoke >/dev/null 2>&1; then\n            \
                         deb-systemd-invoke try-restart {units} >/dev/null || true\n        \
                     fi\n    \
                 fi\n",
            units = quoted(units)
        );
    }
    script.push_str("fi\n");
    script
}

/// On removal (not on upgrade): the package's services stopped.
fn prerm(units: &[String]) -> String {
    format!(
        "#!/bin/sh\nset -e\n\
         if [ \"$1\" = remove ] && [ -d /run/systemd/system ] \
             && command -v deb-systemd-invoke >/dev/null 2>&1; then\n    \
             deb-systemd-invoke stop {units} >/dev/null || true\n\
         fi\n",
        units = quoted(units)
    )
}

/// After removal: systemd told; on purge, the units' enablement links gone.
fn postrm(units: &[String]) -> String {
    let plain: Vec<String> = units.iter().filter(|u| !u.contains('*')).cloned().collect();
    let mut script = String::from(
        "#!/bin/sh\nset -e\n\
         if [ -d /run/systemd/system ]; then\n    \
             systemctl --system daemon-reload >/dev/null || true\n\
         fi\n",
    );
    if !plain.is_empty() {
        let _ = write!(
            script,
            "if [ \"$1\" = purge ] && command -v deb-systemd-helper >/dev/null 2>&1; then\n    \
                 deb-systemd-helper purge {units} >/dev/null || true\n\
             fi\n",
            units = quoted(&plain)
        );
    }
    script
}

/// Unit names for a shell command line, each in single quotes (a template
/// pattern must reach systemctl unexpanded).
fn quoted(units: &[String]) -> String {
    units
        .iter()
        .map(|u| format!("'{u}'"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_unit_and_file_the_specs_name_is_in_the_tree() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        for spec in specs() {
            for file in &spec.files {
                if let Source::Tree(path) = file.source {
                    assert!(root.join(path).is_file(), "{path} is missing");
                }
            }
        }
    }

    #[test]
    fn the_maintainer_scripts_make_the_user_and_keep_systemd_told() {
        let units = [
            "provision-serve.service".to_owned(),
            "mqtt-ingest@*.service".to_owned(),
        ];
        let script = postinst(
            "mqtt-mtls-provision",
            Some(("mqtt-mtls", "/var/lib/mqtt-mtls", "CA")),
            &units,
        );
        assert!(script.starts_with("#!/bin/sh\nset -e\nif [ \"$1\" = configure ]; then\n"));
        assert!(script.contains("systemd-sysusers mqtt-mtls-provision.conf"));
        assert!(script.contains("--home /var/lib/mqtt-mtls --no-create-home mqtt-mtls"));
        assert!(script.contains(
            "deb-systemd-invoke try-restart 'provision-serve.service' 'mqtt-ingest@*.service'"
        ));
        assert!(script.ends_with("fi\n"));
        assert!(prerm(&units).contains("[ \"$1\" = remove ]"));
        let postrm = postrm(&units);
        assert!(postrm.contains("deb-systemd-helper purge 'provision-serve.service' >"));
        // Each parses as a shell script.
        for script in [script, prerm(&units), postrm] {
            let out = Command::new("sh")
                .args(["-n", "-c", &script])
                .output()
                .unwrap();
            assert!(out.status.success(), "{script}");
        }
    }
}
