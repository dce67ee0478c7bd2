//! `deb-package`: builds the project's Debian packages from compiled
//! binaries (what `cargo xtask dist` runs after the release build):
//!
//! ```text
//! deb-package --bin-dir target/release --source-dir . --out target/dist
//! ```
//!
//! Writes the `.deb` files, the stripped binaries in `OUT/bin/`, their
//! debug information in `OUT/debug/`, and prints each file's size.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let usage = "usage: deb-package --bin-dir DIR --source-dir DIR --out DIR [--fast]";
    let mut bin_dir = None;
    let mut source_dir = None;
    let mut out = None;
    let mut compress = true;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().map(PathBuf::from).ok_or(usage);
        match arg.to_str() {
            Some("--bin-dir") => bin_dir = Some(value()?),
            Some("--source-dir") => source_dir = Some(value()?),
            Some("--out") => out = Some(value()?),
            Some("--fast") => compress = false,
            _ => return Err(format!("unexpected {arg:?}\n{usage}")),
        }
    }
    let (Some(bin_dir), Some(source_dir), Some(out)) = (bin_dir, source_dir, out) else {
        return Err(usage.to_owned());
    };
    let inputs = deb_package::Inputs {
        bin_dir,
        source_dir,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        compress,
        separate_debug: true,
    };
    let built = deb_package::build_all(&inputs, &out).map_err(|e| e.to_string())?;
    let bin = out.join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    for package in &built {
        println!("{} ({} bytes)", package.deb.display(), size(&package.deb));
        for stripped in &package.elves {
            let name = stripped.file_name().unwrap_or_default();
            let copy = bin.join(name);
            std::fs::copy(stripped, &copy).map_err(|e| format!("{}: {e}", copy.display()))?;
            println!("  {} ({} bytes stripped)", copy.display(), size(&copy));
        }
        for debug in &package.debug {
            println!("  {} ({} bytes)", debug.display(), size(debug));
        }
    }
    Ok(())
}
