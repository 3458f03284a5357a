//! The roles, one per process over a shared NATS: the gateway, and nodes of the services it
//! converts for; and `token`, which signs a token for curl.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use api::backends::{self, CALCULATOR, STOCK, Switch};
use api::edge::{Claims, Keys};
use api::{Gateway, Settings};
use clap::{Args, Subcommand};
use registry::{Registered, Registry};

/// The Greeter's name in gRPC paths, the name its nodes register under.
pub const GREETER: &str = "greeter.v1.Greeter";

/// How long a node stays listed after its last heartbeat.
pub const TTL: Duration = Duration::from_secs(5);

#[derive(Subcommand, Debug)]
pub(crate) enum Role {
    /// Convert HTTP/JSON calls to gRPC for every registered service, until stopped (needs NATS_URL).
    Gateway {
        /// Where to listen (port 0: any free port, printed).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// The secret tokens are signed with (HS256).
        #[arg(long, env = "API_SECRET", hide_env_values = true)]
        secret: String,
        /// Calls a client may make at once...
        #[arg(long, default_value_t = Settings::default().burst, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        burst: u32,
        /// ...and per second after that.
        #[arg(long, default_value_t = Settings::default().per_second)]
        per_second: f64,
        /// Failures in a row that open a service's breaker.
        #[arg(long, default_value_t = Settings::default().breaker_threshold, value_parser = clap::value_parser!(u32).range(1..=1000))]
        breaker_threshold: u32,
        /// How long an open breaker refuses calls before it lets a trial through.
        #[arg(long, default_value_t = Settings::default().breaker_pause.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
        breaker_pause_ms: u64,
    },
    /// Serve the Greeter and stay registered until stopped (needs NATS_URL).
    Greeter {
        #[arg(long)]
        id: String,
    },
    /// Serve the proxy topic's Calculator and stay registered until stopped (needs NATS_URL).
    Calc {
        #[arg(long)]
        id: String,
    },
    /// Serve Stock, revision 1 or 2 of its proto, until stopped (needs NATS_URL).
    Stock {
        #[arg(long)]
        id: String,
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
        revision: u8,
        /// Answer every call UNAVAILABLE, to trip the gateway's breaker.
        #[arg(long)]
        failing: bool,
    },
    /// Print a signed token for `curl -H "authorization: Bearer <token>"` (no NATS needed).
    Token(Token),
}

#[derive(Args, Debug)]
pub(crate) struct Token {
    #[arg(long, env = "API_SECRET", hide_env_values = true)]
    secret: String,
    /// Who the token speaks for: the rate limit's client.
    #[arg(long)]
    sub: String,
    /// Space-separated scopes: `<service>` or `<service>/<method>`.
    #[arg(long)]
    scope: String,
    /// Seconds until it expires.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    valid_s: u64,
}

impl Token {
    pub(crate) fn print(&self) -> anyhow::Result<()> {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_secs();
        let claims =
            Claims { sub: self.sub.clone(), scope: self.scope.clone(), exp: now + self.valid_s };
        println!("{}", Keys::new(self.secret.as_bytes()).sign(&claims));
        Ok(())
    }
}

/// One role in this process, until it is stopped.
pub(crate) async fn run(role: Role, registry: Arc<dyn Registry>) -> anyhow::Result<()> {
    match role {
        Role::Gateway {
            listen,
            secret,
            burst,
            per_second,
            breaker_threshold,
            breaker_pause_ms,
        } => {
            anyhow::ensure!(
                per_second > 0.0 && per_second.is_finite(),
                "--per-second must be above 0"
            );
            let breaker_pause = Duration::from_millis(breaker_pause_ms);
            let settings = Settings {
                burst,
                per_second,
                breaker_threshold,
                breaker_pause,
                ..Settings::default()
            };
            let print = |service: &str, t: api::edge::Transition| {
                println!("breaker of {service}: {} -> {}", t.from, t.to);
            };
            let gateway =
                Gateway::new(registry, secret.as_bytes(), settings).on_transition(Box::new(print));
            let gateway = Arc::new(gateway);
            let server = microkit_http::start_on(
                listen,
                gateway.clone().router(),
                microkit::health::Health::default(),
            )
            .await?;
            let stop = microkit::signal::stop_requested();
            println!("gateway listening on {}; ctrl-c stops it", server.url());
            microkit::signal::stopping(stop.await, "draining the calls in flight")?;
            server.shutdown().await?;
            let called = gateway.called.load(Ordering::Relaxed);
            let refused = gateway.refused.load(Ordering::Relaxed);
            println!(
                "gateway stopped: {called} calls sent to a node, {refused} answered by the gateway"
            );
        }
        Role::Greeter { id } => {
            let node =
                Registered::new(&registry, microkit::greeter::serve(&id).await?, GREETER, &id, TTL)
                    .await?;
            serve_until_stopped(node, GREETER, &id).await?;
        }
        Role::Calc { id } => {
            let node =
                Registered::new(&registry, backends::calculator(&id).await?, CALCULATOR, &id, TTL)
                    .await?;
            serve_until_stopped(node, CALCULATOR, &id).await?;
        }
        Role::Stock { id, revision, failing } => {
            let switch = Arc::new(Switch::default());
            switch.failing.store(failing, Ordering::Relaxed);
            let server = match revision {
                1 => backends::stock_v1(&id, switch.clone()).await?,
                _ => backends::stock_v2(&id, switch.clone()).await?,
            };
            let node = Registered::new(&registry, server, STOCK, &id, TTL).await?;
            serve_until_stopped(node, STOCK, &id).await?;
            println!("{id} was reached by {} calls", switch.reached.load(Ordering::Relaxed));
        }
        Role::Token(token) => token.print()?,
    }
    Ok(())
}

async fn serve_until_stopped(node: Registered, service: &str, id: &str) -> anyhow::Result<()> {
    let stop = microkit::signal::stop_requested();
    println!("{id} serving {service} on {}", node.addr());
    microkit::signal::stopping(stop.await, "deregistering, then draining")?;
    node.stop().await?;
    println!("{id} deregistered and stopped");
    Ok(())
}
