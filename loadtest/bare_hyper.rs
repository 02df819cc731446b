//! The HTTP ceiling for `loadtest/peak.sh`: hyper on tokio, set up like vigil's listener
//! (auto HTTP/1.1 + h2c builder, keep-alive, TCP_NODELAY, multi-thread runtime), answering every
//! request with the same response bytes and header set vigil sends, without parsing anything.
//! A POST body is read (and dropped) so the POST figure is a ceiling for vigil's POST too.
//!
//! `cargo run --release --example bare_hyper -- RESPONSE.der [127.0.0.1:0]` prints
//! `bare-hyper listening on http://ADDR/` and serves until SIGTERM or SIGINT.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, EXPIRES, LAST_MODIFIED};
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let body_path = args
        .next()
        .ok_or("usage: bare_hyper RESPONSE.der [LISTEN_ADDR]")?;
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let body = Bytes::from(std::fs::read(&body_path)?);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(body, &listen))
}

async fn serve(body: Bytes, listen: &str) -> Result<(), Error> {
    let listener = TcpListener::bind(listen).await?;
    println!("bare-hyper listening on http://{}/", listener.local_addr()?);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .keep_alive(true)
        .max_buf_size(64 * 1024);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(_) => continue,
            },
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let body = body.clone();
            async move {
                // Read and drop a POST body; nothing is parsed.
                let _ = req.into_body().collect().await;
                Ok::<_, Infallible>(respond(body))
            }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        tokio::spawn(conn);
    }
}

fn respond(body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/ocsp-response"),
    );
    h.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("max-age=172500, public, no-transform, must-revalidate"),
    );
    h.insert(
        ETAG,
        HeaderValue::from_static("\"c42fc0cc2598e97b6a0fb1b4c1e87d3b\""),
    );
    h.insert(
        LAST_MODIFIED,
        HeaderValue::from_static("Wed, 25 Nov 2026 18:48:19 GMT"),
    );
    h.insert(
        EXPIRES,
        HeaderValue::from_static("Sun, 29 Nov 2026 18:48:19 GMT"),
    );
    r
}
