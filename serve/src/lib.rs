//! How every Gaia Fleet process serves HTTP (the control-plane API, game servers, admin
//! endpoints): HTTP/1.1, with reads bounded so that connections cannot be held open by
//! saying nothing (slowloris).
//!
//! - A request's head (request line and headers) must arrive within [`HEADER_TIMEOUT`]
//!   of the connection opening, or of the previous response on a kept-alive connection;
//!   else the connection is closed, without an answer.
//! - A request's body must arrive within [`BODY_TIMEOUT`]; else the handler's body
//!   extractor fails (400, the body timed out) and the connection is closed.
//!
//! WebSocket upgrades are served; the upgraded connection is the handler's from then on.
//! Each request carries its peer's address as [`axum::extract::ConnectInfo`].

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

mod metrics;
pub use metrics::{CONTENT_TYPE as METRICS_CONTENT_TYPE, metrics};

/// How long a client has to send a request's head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to send a request's body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown`, then waits for requests in flight to
/// finish (connections upgraded to WebSockets are their handlers' to close).
pub async fn serve<L>(mut listener: L, router: Router, shutdown: CancellationToken) -> std::io::Result<()>
where
    L: Listener,
    L::Addr: Clone + Send + Sync + 'static,
{
    let router = router.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(BODY_TIMEOUT));
    let connections = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    loop {
        let (io, addr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(addr.clone()));
            let router = router.clone();
            async move { Ok::<_, Infallible>(router.oneshot(request).await.unwrap_or_else(|e| match e {})) }
        });
        let connection = http.serve_connection(TokioIo::new(io), service).with_upgrades();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                _ = shutdown.cancelled() => {
                    // Finishes the request in flight, then closes.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    async fn server() -> (SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new()
            .route("/peer", get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }))
            .route("/echo", post(|body: String| async move { body }));
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(listener, router, shutdown.clone()));
        (addr, shutdown)
    }

    /// Everything the server sends until it closes the connection.
    async fn until_closed(stream: &mut TcpStream) -> String {
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_nothing_is_closed() {
        let (addr, _stop) = server().await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let opened = tokio::time::Instant::now();
        assert_eq!(until_closed(&mut stream).await, "");
        let held = opened.elapsed();
        assert!(held >= HEADER_TIMEOUT && held < HEADER_TIMEOUT + Duration::from_secs(1), "{held:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn half_a_head_is_cut_off() {
        let (addr, _stop) = server().await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let opened = tokio::time::Instant::now();
        assert_eq!(until_closed(&mut stream).await, "");
        let held = opened.elapsed();
        assert!(held >= HEADER_TIMEOUT && held < HEADER_TIMEOUT + Duration::from_secs(1), "{held:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn half_a_body_is_refused_and_closed() {
        let (addr, _stop) = server().await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhalf").await.unwrap();
        let opened = tokio::time::Instant::now();
        let answer = until_closed(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        let held = opened.elapsed();
        assert!(held >= BODY_TIMEOUT && held < BODY_TIMEOUT + Duration::from_secs(1), "{held:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_kept_alive_connection_is_closed_and_requests_see_their_peer() {
        let (addr, _stop) = server().await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut answer = vec![0; 1024];
        let n = stream.read(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("127.0.0.1"), "{answer}");
        let answered = tokio::time::Instant::now();
        assert_eq!(until_closed(&mut stream).await, "");
        assert!(answered.elapsed() >= HEADER_TIMEOUT);
    }

    #[tokio::test]
    async fn shutdown_stops_accepting() {
        let (addr, stop) = server().await;
        stop.cancel();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
