//! `mqtt-ingest --help` as a snapshot test (trycmd), so the documented
//! flags cannot drift. After a deliberate change,
//! `TRYCMD=overwrite cargo test -p mqtt-ingest --test cli_docs` rewrites
//! `tests/cmd/help.stdout`.

#[test]
fn the_help_text() {
    trycmd::TestCases::new()
        .register_bin(
            "mqtt-ingest",
            std::path::Path::new(env!("CARGO_BIN_EXE_mqtt-ingest")),
        )
        .case("tests/cmd/*.toml");
}
