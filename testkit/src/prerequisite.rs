//! Tests that need something from outside (a broker, a database, a tool) skip without it, saying
//! why, unless the run is strict: `TRIBUTARY_TEST_STRICT=1`, which `scripts/test.sh` sets, turns a
//! missing prerequisite into a failure so that a green run means every test ran.

/// The environment variable that makes a missing prerequisite fail its test.
pub const STRICT_ENV: &str = "TRIBUTARY_TEST_STRICT";

/// Whether this run is strict (see the module documentation).
pub fn strict() -> bool {
    std::env::var(STRICT_ENV).as_deref() == Ok("1")
}

/// `test` cannot run because `missing`: prints a skip line, or panics in a strict run.
pub fn skip(test: &str, missing: &str) {
    assert!(!strict(), "{test}: {missing} ({STRICT_ENV}=1)");
    eprintln!("skipping {test}: {missing}");
}

/// The value of environment variable `name` when set and not empty; otherwise `None`, after
/// [`skip`]ping `test`.
pub fn required_env(test: &str, name: &str) -> Option<String> {
    let value = std::env::var(name).ok().filter(|value| !value.is_empty());
    if value.is_none() {
        skip(test, &format!("{name} is not set (scripts/test.sh sets it)"));
    }
    value
}
