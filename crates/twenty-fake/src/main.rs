//! Runs the fake Twenty server standalone, e.g. for manual checks of the
//! CLI: `twenty-fake --port 3000 --api-key dev --rate-limit 100 --window-ms 60000`.

use std::time::Duration;

use clap::Parser;
use contact_sync_twenty_fake::{FakeConfig, FakeTwenty, RateLimit};

/// A stateful fake Twenty CRM server (REST, metadata, signed webhooks).
#[derive(Parser, Debug)]
#[command(name = "twenty-fake", version)]
struct Args {
    /// Port on 127.0.0.1 (0 = random).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// API key to accept as `Authorization: Bearer <key>`.
    #[arg(
        long,
        env = "TWENTY_FAKE_API_KEY",
        default_value = "fake-twenty-api-key"
    )]
    api_key: String,
    /// Requests allowed per window (omit for no limit; Twenty's default is 100).
    #[arg(long)]
    rate_limit: Option<u32>,
    /// Rate-limit window in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    window_ms: u64,
    /// Requests allowed per short window (omit for none; Twenty's default
    /// is 100 per 1000 ms).
    #[arg(long)]
    short_rate_limit: Option<u32>,
    /// Short rate-limit window in milliseconds.
    #[arg(long, default_value_t = 1_000)]
    short_window_ms: u64,
    /// Simulate the new-workspace workflow that links a company to each new
    /// person after this many milliseconds.
    #[arg(long)]
    workflow_ms: Option<u64>,
    /// Run the fake's clock this many seconds ahead of this machine's
    /// (negative: behind): the `Date` header, record and webhook timestamps.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    clock_skew_secs: i64,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let fake = FakeTwenty::start(FakeConfig {
        api_key: args.api_key,
        rate_limit: args.rate_limit.map(|requests| RateLimit {
            requests,
            window: Duration::from_millis(args.window_ms),
        }),
        short_rate_limit: args.short_rate_limit.map(|requests| RateLimit {
            requests,
            window: Duration::from_millis(args.short_window_ms),
        }),
        workflow_delay: args.workflow_ms.map(Duration::from_millis),
        port: args.port,
        clock_skew: chrono::TimeDelta::seconds(args.clock_skew_secs),
        ..FakeConfig::default()
    })
    .await?;
    println!("{}", fake.base_url());
    tokio::signal::ctrl_c().await?;
    fake.stop().await;
    Ok(())
}
