//! Subscription → a consumer Deployment, its dead-letter topic and its autoscaler.

#[cfg(test)]
mod broker_tests;
