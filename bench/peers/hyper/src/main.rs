//! Our demo app's work on hyper 0.14 and a current-thread tokio runtime: the bench's compiled-language peer.
//!
//! `GET /` is the hello world; `/json` and `/users/{id}` (ASCII digits only, anything else a 404) send our
//! phases' bytes, routed by a `match` on the path, as a hand-written hyper service does; `/static/NAME` sends
//! the file NAME of --static-dir (none without it), read whole per request. The method is not looked at.
//!
//! Usage: hello-hyper --host 127.0.0.1 --port 8080 --static-dir DIR [--threads N] (port 0 picks a free one;
//! N > 1 runs a multi-thread runtime with N worker threads, the bench's `--workers N`). Prints
//! `listening on HOST:PORT` as its first line, like every other bench target, so the harness learns the port
//! the same way.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::{make_service_fn, service_fn};
use hyper::{Body, Request, Response, Server, StatusCode};

fn answer(status: StatusCode, content_type: &'static str, body: impl Into<Body>) -> Response<Body> {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn not_found() -> Response<Body> {
    answer(StatusCode::NOT_FOUND, "text/plain", "Not Found\n")
}

async fn respond(request: Request<Body>, static_dir: Arc<PathBuf>) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path();
    let response = match path {
        "/" => answer(StatusCode::OK, "text/plain", "Hello, World!"),
        "/json" => answer(StatusCode::OK, "application/json", r#"{"message":"Hello, World!"}"#),
        _ => {
            if let Some(digits) = path.strip_prefix("/users/") {
                match digits.parse::<u64>() {
                    // parse() alone would take "+7"; our router takes digits only.
                    Ok(id) if digits.bytes().all(|byte| byte.is_ascii_digit()) => {
                        answer(StatusCode::OK, "application/json", format!(r#"{{"id": {id}}}"#))
                    }
                    _ => not_found(),
                }
            } else if let Some(name) = path.strip_prefix("/static/") {
                static_file(&static_dir, name)
            } else {
                not_found()
            }
        }
    };
    Ok(response)
}

// Static files at their simplest: one file name (no directories, so nothing outside the directory can be
// named), read whole into memory. The costs: the body is copied through user space, where nginx and our
// phases use sendfile; and the read blocks the runtime's thread, so a file missing the page cache stalls
// every connection while it is read (our phases' handlers accept the same).
fn static_file(directory: &Path, name: &str) -> Response<Body> {
    let plain = !directory.as_os_str().is_empty()
        && !name.starts_with('.')
        && !name.is_empty()
        && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"._-".contains(&byte));
    if !plain {
        return not_found();
    }
    match std::fs::read(directory.join(name)) {
        Ok(contents) => answer(StatusCode::OK, media_type(name), contents),
        Err(_) => not_found(),
    }
}

// The types of the bench's static files, as bench/targets.py expects them.
fn media_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, extension)| extension) {
        Some("css") => "text/css",
        Some("js") => "text/javascript",
        Some("svg") => "image/svg+xml",
        Some("jpg") => "image/jpeg",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
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
    let static_dir = Arc::new(PathBuf::from(option(args, "--static-dir", "")));

    let make_service = make_service_fn(move |_connection| {
        let static_dir = static_dir.clone();
        async move {
            Ok::<_, Infallible>(service_fn(move |request| respond(request, static_dir.clone())))
        }
    });
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
