//! Hello world on hyper 0.14 and a current-thread tokio runtime: the compiled-language peer of the bench.
//!
//! Usage: hello-hyper --host 127.0.0.1 --port 8080 [--threads N] (port 0 picks a free one; N > 1 runs a
//! multi-thread runtime with N worker threads, the bench's `--workers N`). Prints `listening on HOST:PORT`
//! as its first line, like every other bench target, so the harness learns the port the same way.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;

use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::{make_service_fn, service_fn};
use hyper::{Body, Request, Response, Server};

async fn hello(_request: Request<Body>) -> Result<Response<Body>, Infallible> {
    let mut response = Response::new(Body::from("Hello, World!"));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(response)
}

fn option(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|arg| arg == name)
        .and_then(|index| args.get(index + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

// One thread by default, like the Python targets: the comparison is per core, not per machine.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = option(&args, "--threads", "1").parse().expect("--threads: not a number");
    let mut runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    let runtime = runtime.enable_all().build().expect("tokio runtime");
    runtime.block_on(serve(&args));
}

async fn serve(args: &[String]) {
    let host = option(args, "--host", "127.0.0.1");
    let port = option(args, "--port", "8080");
    let address: SocketAddr = format!("{host}:{port}").parse().expect("--host/--port: not an address");

    let make_service = make_service_fn(|_connection| async { Ok::<_, Infallible>(service_fn(hello)) });
    // As a production deployment would: no Nagle delay on small responses, and responses to pipelined
    // requests flushed together (without it, each batch of 16 waits on delayed ACKs).
    let server = Server::bind(&address)
        .tcp_nodelay(true)
        .http1_pipeline_flush(true)
        .serve(make_service);

    let bound = server.local_addr();
    println!("listening on {}:{}", bound.ip(), bound.port());
    std::io::stdout().flush().expect("stdout");

    if let Err(error) = server.await {
        eprintln!("server error: {error}");
    }
}
