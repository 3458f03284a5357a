//! The services behind the gateway in the story: the proxy topic's Calculator (from its
//! `calc.proto`) and two revisions of a Stock service. Each serves health and reflection over
//! its own descriptors, which is all the gateway ever learns about it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::StreamExt;
use microkit::health::Health;
use microkit::server::RunningServer;
use tonic::service::Routes;
use tonic::{Request, Response, Status};

/// Generated from `../proxy/calc.proto` by `build.rs`.
pub mod calc {
    include!(concat!(env!("OUT_DIR"), "/calc/calc.v1.rs"));
    pub const DESCRIPTORS: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/calc/descriptors.bin"));
}

/// Generated from `proto/v1/stock.proto`.
pub mod stock_v1 {
    include!(concat!(env!("OUT_DIR"), "/stock-v1/stock.v1.rs"));
    pub const DESCRIPTORS: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/stock-v1/descriptors.bin"));
}

/// Generated from `proto/v2/stock.proto`: the same service, each message with a field more.
pub mod stock_v2 {
    include!(concat!(env!("OUT_DIR"), "/stock-v2/stock.v1.rs"));
    pub const DESCRIPTORS: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/stock-v2/descriptors.bin"));
}

pub const CALCULATOR: &str = "calc.v1.Calculator";
pub const STOCK: &str = "stock.v1.Stock";
/// The most a `Count` may ask for: a bound on what one request can make a node send.
const MAX_COUNT: u32 = 100_000;

/// Serves `routes` with health, and reflection over `descriptors` (and the health service).
async fn serve(
    routes: Routes,
    service: &str,
    descriptors: &'static [u8],
) -> anyhow::Result<RunningServer> {
    Ok(RunningServer::start_describing(routes, Health::new(&[service]), descriptors).await?)
}

/// A Calculator node named `node`.
pub async fn calculator(node: &str) -> anyhow::Result<RunningServer> {
    let service =
        calc::calculator_server::CalculatorServer::new(Calculator { node: node.to_owned() });
    serve(Routes::new(service), CALCULATOR, calc::DESCRIPTORS).await
}

struct Calculator {
    node: String,
}

#[tonic::async_trait]
impl calc::calculator_server::Calculator for Calculator {
    async fn add(
        &self,
        request: Request<calc::AddRequest>,
    ) -> Result<Response<calc::AddReply>, Status> {
        let sum = request.into_inner().terms.iter().fold(0i64, |a, t| a.wrapping_add(*t));
        Ok(Response::new(calc::AddReply { sum, node: self.node.clone() }))
    }

    async fn count(
        &self,
        request: Request<calc::CountRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<calc::CountReply>>, Status> {
        let up_to = request.into_inner().up_to;
        if up_to > MAX_COUNT {
            return Err(Status::invalid_argument(format!("up_to may be at most {MAX_COUNT}")));
        }
        let node = self.node.clone();
        let replies = futures::stream::iter(1..=up_to)
            .map(move |n| Ok(calc::CountReply { n, node: node.clone() }));
        Ok(Response::new(Box::pin(replies)))
    }
}

/// A Stock node's switch and count: while `failing`, it answers every call UNAVAILABLE (a
/// backend that has lost its database); `reached` counts the calls that got to it at all.
#[derive(Debug, Default)]
pub struct Switch {
    pub failing: AtomicBool,
    pub reached: AtomicU64,
}

impl Switch {
    fn enter(&self) -> Result<(), Status> {
        self.reached.fetch_add(1, Ordering::Relaxed);
        if self.failing.load(Ordering::Relaxed) {
            return Err(Status::unavailable("the stock database is unreachable"));
        }
        Ok(())
    }
}

/// What the story's stock holds: three of everything.
const IN_STOCK: u32 = 3;

/// A Stock node of the first revision.
pub async fn stock_v1(node: &str, switch: Arc<Switch>) -> anyhow::Result<RunningServer> {
    let service =
        stock_v1::stock_server::StockServer::new(StockV1 { node: node.to_owned(), switch });
    serve(Routes::new(service), STOCK, stock_v1::DESCRIPTORS).await
}

/// A Stock node of the second revision.
pub async fn stock_v2(node: &str, switch: Arc<Switch>) -> anyhow::Result<RunningServer> {
    let service =
        stock_v2::stock_server::StockServer::new(StockV2 { node: node.to_owned(), switch });
    serve(Routes::new(service), STOCK, stock_v2::DESCRIPTORS).await
}

struct StockV1 {
    node: String,
    switch: Arc<Switch>,
}

#[tonic::async_trait]
impl stock_v1::stock_server::Stock for StockV1 {
    async fn get(
        &self,
        request: Request<stock_v1::GetRequest>,
    ) -> Result<Response<stock_v1::Item>, Status> {
        self.switch.enter()?;
        let sku = request.into_inner().sku;
        Ok(Response::new(stock_v1::Item { sku, count: IN_STOCK, node: self.node.clone() }))
    }
}

struct StockV2 {
    node: String,
    switch: Arc<Switch>,
}

#[tonic::async_trait]
impl stock_v2::stock_server::Stock for StockV2 {
    async fn get(
        &self,
        request: Request<stock_v2::GetRequest>,
    ) -> Result<Response<stock_v2::Item>, Status> {
        self.switch.enter()?;
        let stock_v2::GetRequest { sku, warehouse } = request.into_inner();
        let warehouse = if warehouse.is_empty() { "main".to_owned() } else { warehouse };
        Ok(Response::new(stock_v2::Item {
            sku,
            count: IN_STOCK,
            node: self.node.clone(),
            warehouse,
        }))
    }
}
