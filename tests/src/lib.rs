//! Helpers shared by the cross-check suites: external tools and temp files.
