//! The range of every duration and size.
//!
//! Each key a user may set to a length of time or an amount has a range, checked when any
//! command loads the config: a value outside it is a config error on its line, never a panic,
//! an allocation abort or an arithmetic overflow hours later. The ranges are wide enough for any
//! deployment we can think of; the ends say why. Documented in each field's doc comment,
//! config/full.toml and the README's configuration reference.

use std::time::Duration;

/// The values a key accepts, both ends included, and why those ends.
#[derive(Debug, Clone, Copy)]
pub struct Limit<T> {
    /// The smallest value accepted.
    pub min: T,
    /// The largest value accepted.
    pub max: T,
    /// Why those ends (shown in the error).
    pub why: &'static str,
}

/// A value a [`Limit`] bounds, spelt as a config writes it.
pub trait Bounded: PartialOrd + Copy {
    /// `"30days"`, `500000`.
    fn spelt(self) -> String;
}

impl Bounded for Duration {
    fn spelt(self) -> String {
        format!("\"{}\"", humantime::format_duration(self))
    }
}

macro_rules! bounded_numbers {
    ($($t:ty),*) => {$(
        impl Bounded for $t {
            fn spelt(self) -> String {
                self.to_string()
            }
        }
    )*};
}
bounded_numbers!(usize, u32, i64);

const SECOND: u64 = 1;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
const MIB: i64 = 1024 * 1024;

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// `[source] streams`.
pub const STREAMS: Limit<usize> = Limit {
    min: 1,
    max: 16,
    why:
        "each is a streaming pull and a task; one stream carries far more than one process decodes",
};

/// `[source] max_outstanding_messages`, per stream.
pub const OUTSTANDING_MESSAGES: Limit<i64> = Limit {
    min: 1,
    max: 100_000,
    why: "leased messages wait in memory and are redelivered after a crash; with streams it sizes the processor's queue",
};

/// `[source] max_outstanding_bytes`, per stream.
pub const OUTSTANDING_BYTES: Limit<i64> = Limit {
    min: MIB,
    max: 1024 * MIB,
    why: "at least one entry of the largest size read (1 MiB); leased bytes are held in memory",
};

/// `[source] lease_extension`.
pub const LEASE_EXTENSION: Limit<Duration> = Limit {
    min: secs(10 * SECOND),
    max: secs(10 * MINUTE),
    why: "Pub/Sub's ack deadline range",
};

/// `[scheduler_api] cache_ttl`.
pub const CACHE_TTL: Limit<Duration> = Limit {
    min: secs(10 * SECOND),
    max: secs(DAY),
    why: "shorter costs a call for nearly every failure of a job; a config older than a day may describe a job since fixed",
};

/// `[scheduler_api] error_ttl`.
pub const ERROR_TTL: Limit<Duration> = Limit {
    min: secs(SECOND),
    max: secs(HOUR),
    why: "shorter retries a refused look-up for nearly every entry; longer hides a granted role for hours",
};

/// `[scheduler_api] timeout`.
pub const API_TIMEOUT: Limit<Duration> = Limit {
    min: secs(SECOND),
    max: secs(MINUTE),
    why: "a look-up holds the entries behind it: past a minute the API is down, not slow",
};

/// `[incidents] min_failures`.
pub const MIN_FAILURES: Limit<u32> = Limit {
    min: 1,
    max: 10_000,
    why: "a job retrying every 10 seconds fails about 8,600 times a day: more would never fire",
};

/// `[incidents] repeat_interval`, and a route's.
pub const REPEAT_INTERVAL: Limit<Duration> = Limit {
    min: secs(MINUTE),
    max: secs(30 * DAY),
    why: "a job runs at most once a minute, so shorter notifies at nearly every failure; a reminder a month later reminds nobody",
};

/// `[incidents] pending_expiry`.
pub const PENDING_EXPIRY: Limit<Duration> = Limit {
    min: secs(MINUTE),
    max: secs(3650 * DAY),
    why: "longer than the slowest job's period, or its repeated failures never add up; past ten years nothing is pending any more",
};

/// `[incidents] max_tracked_jobs`.
pub const MAX_TRACKED_JOBS: Limit<usize> = Limit {
    min: 1,
    max: 10_000_000,
    why: "each open incident is held in memory; ten million are about 4.5 GiB",
};

/// `[server] max_connections`.
pub const MAX_CONNECTIONS: Limit<usize> = Limit {
    min: 1,
    max: 65_536,
    why: "each connection holds up to 40 KiB before its token is checked: past 64 Ki the bound no longer bounds the memory (2.5 GiB)",
};

/// `[state] unhealthy_after`.
pub const UNHEALTHY_AFTER: Limit<Duration> = Limit {
    min: Duration::ZERO,
    max: secs(DAY),
    why: "0 gives up at the first failure; past a day a stuck process serves nothing for too long",
};

/// `[dedup] capacity`.
pub const DEDUP_CAPACITY: Limit<usize> = Limit {
    min: 1_000,
    max: 10_000_000,
    why: "fewer forget a redelivery within seconds on a busy feed; two generations of 10 million keys take about 300 MiB, allocated at start",
};

/// `[state] commit_interval`.
pub const COMMIT_INTERVAL: Limit<Duration> = Limit {
    min: Duration::from_millis(1),
    max: secs(MINUTE),
    why: "each commit is an fsync; longer delays every alert and ack by as much",
};

/// `[state] commit_max_messages`.
pub const COMMIT_MAX_MESSAGES: Limit<usize> = Limit {
    min: 1,
    max: 100_000,
    why: "a batch is held in memory until it commits; more than streams × max_outstanding_messages never gathers",
};

/// `[state] shutdown_timeout`.
pub const SHUTDOWN_TIMEOUT: Limit<Duration> = Limit {
    min: secs(SECOND),
    max: secs(10 * MINUTE),
    why: "Cloud Run gives 10s and Kubernetes 30s by default; unacked messages come back after their lease anyway",
};

/// `[state.postgres] pool_size`.
pub const POOL_SIZE: Limit<usize> = Limit {
    min: 1,
    max: 100,
    why: "PostgreSQL allows 100 connections by default, shared by every replica",
};

/// `[state.postgres] dedup_retention`.
pub const DEDUP_RETENTION: Limit<Duration> = Limit {
    min: secs(SECOND),
    max: secs(31 * DAY),
    why: "Pub/Sub keeps a message at most 31 days, so no redelivery comes later",
};

/// `[state.postgres] outbox_lease`.
pub const OUTBOX_LEASE: Limit<Duration> = Limit {
    min: secs(5 * SECOND),
    max: secs(HOUR),
    why: "renewed every lease/3, so shorter is taken over from a live replica under load; longer delays a dead replica's alerts",
};

/// A receiver's `timeout` (Slack, webhook, PagerDuty, email).
pub const RECEIVER_TIMEOUT: Limit<Duration> = Limit {
    min: secs(SECOND),
    max: secs(5 * MINUTE),
    why:
        "a receiver's round trip takes a fraction of a second; past 5m a retry later beats waiting",
};
