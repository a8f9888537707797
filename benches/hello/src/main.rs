//! hello PORT [BODY]: answers every request on 127.0.0.1:PORT with a fixed JSON
//! body (default `{"status":"pass"}`) over HTTP/1.1 keep-alive. Same shape as
//! clamgate's health endpoint (multi-thread tokio runtime with the default
//! worker count, one task per connection, hyper http1, the same headers),
//! minus the routing, limits, timeouts and building the body per request.
use http_body_util::Full;
use hyper::{Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).expect("usage: hello PORT");
    let body = Bytes::from(std::env::args().nth(2).unwrap_or_else(|| r#"{"status":"pass"}"#.into()));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let body = body.clone();
        tokio::spawn(async move {
            let service = service_fn(|_req| {
                let r = Response::builder().header("content-type", "application/health+json");
                let r = r.header("cache-control", "no-store");
                std::future::ready(Ok::<_, Infallible>(r.body(Full::new(body.clone())).unwrap()))
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
