//! The bare subscribe-and-ack loop: the peer schedwatch is measured against in
//! `scripts/bench_pubsub`.
//!
//! Usage: `pubsub_bare projects/P/subscriptions/S N`
//!
//! The same crate (`google-cloud-pubsub`), the same client set-up (`PUBSUB_EMULATOR_HOST` →
//! `http://HOST` with anonymous credentials, as in `src/source/pubsub.rs`) and the same flow
//! control as schedwatch's defaults (one stream, 1,000 messages / 64 MiB outstanding, 20 s
//! lease extension). It does no work: each message is acked as it arrives, and when N have been
//! acked it prints one line (`acked N messages (B bytes) in S s: R messages/s`, timed from the
//! start of `main`), flushes the pending acks (for at most 5 s) and exits 0. It is what
//! schedwatch's source would cost if the pipeline, the store and the alerts were free.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use google_cloud_pubsub::client::Subscriber;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let start = Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [subscription, n] = args.as_slice() else {
        bail!("usage: pubsub_bare projects/P/subscriptions/S N");
    };
    let n: u64 = n.parse().context("N must be a positive integer")?;

    let mut builder = Subscriber::builder();
    if let Some(host) = std::env::var("PUBSUB_EMULATOR_HOST")
        .ok()
        .filter(|h| !h.is_empty())
    {
        let endpoint = if host.starts_with("http") {
            host
        } else {
            format!("http://{host}")
        };
        builder = builder
            .with_endpoint(endpoint)
            .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build());
    }
    let client = builder.build().await?;

    let mut stream = client
        .subscribe(subscription.clone())
        .set_max_outstanding_messages(1000)
        .set_max_outstanding_bytes(64 * 1024 * 1024)
        .set_max_lease_extension(Duration::from_secs(20))
        .build();

    let (mut acked, mut bytes) = (0u64, 0usize);
    while acked < n {
        match stream.next().await {
            Some(Ok((message, handler))) => {
                bytes += message.data.len();
                handler.ack();
                acked += 1;
            }
            Some(Err(e)) => bail!("the stream failed after {acked} messages: {e}"),
            None => bail!("the stream ended after {acked} messages"),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "acked {acked} messages ({bytes} bytes) in {elapsed:.3} s: {:.0} messages/s",
        acked as f64 / elapsed
    );

    // Send the acks still queued in the client before leaving.
    let token = stream.shutdown_token();
    drop(stream);
    if tokio::time::timeout(Duration::from_secs(5), token.shutdown())
        .await
        .is_err()
    {
        eprintln!("pubsub_bare: pending acks not flushed within 5 s");
    }
    Ok(())
}
