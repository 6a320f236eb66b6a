//! Test helpers of the processor's integration tests; the stack itself is `devstack::testkit`.

#![allow(dead_code)]

pub use devstack::testkit::*;

/// Start the stack with this crate's processor binary.
pub async fn stack() -> Stack {
    Stack::start(env!("CARGO_BIN_EXE_processor")).await
}

/// Start the stack with extra processor environment.
pub async fn stack_with(env: Vec<(&str, &str)>) -> Stack {
    Stack::start_with(env!("CARGO_BIN_EXE_processor"), env).await
}

/// Validate an event against its checked-in JSON Schema.
pub fn assert_matches_schema(schema: &str, event: &serde_json::Value) {
    let schema: serde_json::Value = serde_json::from_str(schema).unwrap();
    let v = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = v.iter_errors(event).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "event violates its schema: {errors:?}\n{event}"
    );
}
