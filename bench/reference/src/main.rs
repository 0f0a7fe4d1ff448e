//! The benchmark's reference: a compiled tonic 0.14 server of bench/protos, written as a tonic user
//! would write it. Usage: `bench-reference ADDR` (e.g. 127.0.0.1:0); prints `listening on ADDR` once
//! the socket is bound, as protodrop does.

use std::pin::Pin;

use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

pub mod helloworld {
    tonic::include_proto!("helloworld");
}
pub mod complex {
    tonic::include_proto!("complex");
}
pub mod bench {
    tonic::include_proto!("bench");
}

/// Scenario 1: `helloworld.Greeter/SayHello` answers "Hello " + name.
#[derive(Default)]
struct Hello;

#[tonic::async_trait]
impl helloworld::greeter_server::Greeter for Hello {
    async fn say_hello(
        &self,
        request: Request<helloworld::HelloRequest>,
    ) -> Result<Response<helloworld::HelloReply>, Status> {
        let name = request.into_inner().name;
        Ok(Response::new(helloworld::HelloReply {
            message: format!("Hello {name}"),
        }))
    }
}

/// Scenarios 2 and 3: `complex.Greeter/SayHello` echoes the request's `request` as `response`.
#[derive(Default)]
struct Echo;

#[tonic::async_trait]
impl complex::greeter_server::Greeter for Echo {
    async fn say_hello(
        &self,
        request: Request<complex::HelloRequest>,
    ) -> Result<Response<complex::HelloReply>, Status> {
        Ok(Response::new(complex::HelloReply {
            response: request.into_inner().request,
        }))
    }
}

/// Scenario 4: `bench.Stream/Fetch` (1,000 items per call) and `bench.Stream/Echo` (bidi echo).
#[derive(Default)]
struct Streams;

/// How many items `Fetch` answers per call.
const FETCH_COUNT: i32 = 1000;

type ItemStream = Pin<Box<dyn Stream<Item = Result<bench::Item, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl bench::stream_server::Stream for Streams {
    type FetchStream = ItemStream;
    type EchoStream = ItemStream;

    async fn fetch(
        &self,
        request: Request<bench::FetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        let name = request.into_inner().name;
        let items = (0..FETCH_COUNT).map(move |index| {
            Ok(bench::Item {
                index,
                name: name.clone(),
            })
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn echo(
        &self,
        request: Request<Streaming<bench::Item>>,
    ) -> Result<Response<Self::EchoStream>, Status> {
        let incoming = request.into_inner();
        Ok(Response::new(Box::pin(incoming.map(|item| item))))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The strongest tonic a user would write for one core: tokio's current-thread scheduler (the one
    // protodrop runs on one core) and TCP_NODELAY (below). REFERENCE_RUNTIME=multi_thread gives what
    // `#[tokio::main]` builds instead (one worker thread on one core, plus the hand-off to it), the
    // reference of the results before 2026-12-06.
    let runtime = match std::env::var("REFERENCE_RUNTIME").as_deref() {
        Ok("multi_thread") => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    }
    .enable_all()
    .build()?;
    runtime.block_on(serve())
}

async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50051".to_string());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(helloworld::greeter_server::GreeterServer::new(Hello))
        .add_service(complex::greeter_server::GreeterServer::new(Echo))
        .add_service(bench::stream_server::StreamServer::new(Streams))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}
