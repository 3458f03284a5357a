//! Each pattern of the lessons beside the raw library doing the same work; one table.
//!
//! `scripts/bench.sh` runs it (`--quick` for a CI-sized run; names such as `broker-memory tls`
//! run only those modules, e.g. under a profiler). Every row is a ratio taken side by side
//! in this one run; see `notes/performance.md` for what each one means.

mod api;
mod broker;
mod grpc;
mod health;
mod proxy;
mod retry;
mod sharding;
mod tls;
mod trace;
mod transport;
mod tunnel;

// The lessons' own code, from their packages, so the bench measures the code a reader reads.
use ::proxy as proxy_code;
use ::retry::policy;
use ::sharding::hashing;
use ::trace::{metrics, propagation};
use ::tunnel::link;
use micro_benches::{Effort, print_table};

fn main() {
    let effort = Effort::from_args();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let chosen: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wanted = |name: &str| {
        let wanted = chosen.is_empty() || chosen.iter().any(|c| name.starts_with(c.as_str()));
        if wanted {
            eprintln!("measuring {name}..."); // the table comes at the end
        }
        wanted
    };
    let mut rows = Vec::new();
    runtime.block_on(async {
        if wanted("api") {
            rows.extend(api::rows(effort).await);
        }
        if wanted("grpc") {
            rows.extend(grpc::rows(effort).await);
        }
        if wanted("broker-nats") {
            rows.extend(broker::nats_rows(effort).await);
        }
        if wanted("broker-memory") {
            rows.extend(broker::memory_rows(effort).await);
        }
        if wanted("tunnel") {
            rows.extend(tunnel::rows(effort).await);
        }
        if wanted("proxy") {
            rows.extend(proxy::rows(effort).await);
        }
        if wanted("tls") {
            rows.extend(tls::rows(effort).await);
        }
        if wanted("trace") {
            rows.extend(trace::rows(effort).await);
        }
        if wanted("health") {
            rows.extend(health::rows(effort).await);
        }
        if wanted("sharding") {
            rows.extend(sharding::rows(effort).await);
        }
        if wanted("transport") {
            rows.extend(transport::rows(effort).await);
        }
        if wanted("retry") {
            rows.extend(retry::rows(effort).await);
        }
    });
    print_table(&rows);
}
