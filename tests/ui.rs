//! Unsupported `#[grain]` signatures fail to compile, with the error at the offending span.
//! The expected messages are in `tests/ui/*.stderr` (refresh with `TRYBUILD=overwrite`).

#[test]
fn unsupported_signatures_are_compile_errors() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
