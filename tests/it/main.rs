//! schedwatch's integration tests, one binary organised by area. Helpers in `common` start
//! real processes and servers on free ports.

mod common;

mod bad_input;
mod cli;
mod deploy_docs;
mod endpoints;
mod examples;
mod fixes;
mod incident_bounds;
mod postgres_store;
mod postgres_tls;
mod properties;
mod pubsub;
mod push;
mod receivers;
mod scenarios;
mod scheduler_api;
mod shared_store;
mod store_faults;
