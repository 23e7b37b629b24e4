//! The accept loop under the api and admin routers: how many connections, from whom, and for how
//! long. Every connection has a deadline whatever it sends (one byte, an HTTP/2 preface, garbage):
//! with no request in flight, it must complete a request head within the header timeout of
//! connecting (or of the first byte of a later HTTP/1.1 request), and is closed after the
//! keep-alive timeout idle. `axum::serve` has none of these knobs; hyper-util's connection builder
//! has the HTTP/2 ones, and the rest is here. (hyper's own HTTP/1 header timer is not used: it
//! runs from the end of the previous response, so it would also cut idle keep-alive connections.)

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{PerKey, client_key};

/// Connection-level limits of a listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time from accept to a complete first request head, and from the first byte of a later
    /// HTTP/1.1 request to its complete head.
    pub header_read_timeout: Duration,
    /// Time a connection may sit with no request in flight after its first one.
    pub keep_alive_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Connections one client address (an IPv6 /64) may hold at once; more are closed at accept.
    pub max_connections_per_address: usize,
    /// Whether HTTP/2 (prior knowledge) is served besides HTTP/1.1.
    pub http2: bool,
}

/// HTTP/2 streams one connection may have open at once.
const MAX_STREAMS: u32 = 64;

/// HTTP/2 request headers, decoded, larger than this are refused (hyper's HTTP/1 default is alike).
const MAX_HEADER_LIST: u32 = 64 << 10;

/// How long, and for how many bytes, a connection the server ends is read and discarded before
/// the socket is closed (see [`linger`]).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 16 << 20;

/// How often a connection looks again at its deadline: a head begun, a request started or ended,
/// or bytes moved since the last look may have moved it.
const RECHECK: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `stop`; each connection holds one of `slots` until it ends.
/// Returns when the accept loop has ended; connections still open drain on their own (they
/// see `stop` and shut down gracefully), and the caller waits for their slots.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
    slots: Arc<tokio::sync::Semaphore>,
    stop: CancellationToken,
) {
    use hyper_util::rt::{TokioExecutor, TokioTimer};

    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST)
        // A peer that stops answering pings is gone, however patient its streams look.
        .keep_alive_interval(limits.header_read_timeout)
        .keep_alive_timeout(limits.header_read_timeout);
    if !limits.http2 {
        builder = builder.http1_only();
    }
    let per_address: PerKey<IpAddr> = PerKey::default();
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or the peer gave up: keep serving the others.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // A response goes out in several writes (head, body chunks): with Nagle's algorithm the
        // last small one waits for the client's delayed ACK, 40 ms on Linux, on every keep-alive
        // request after the first.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, "cannot set TCP_NODELAY: {e}");
        }
        let Some(held) = per_address.hold(&client_key(peer.ip()), limits.max_connections_per_address) else {
            tracing::debug!(%peer, "closed a connection over the per-address limit");
            crate::telemetry::connection_refused("per-address");
            continue;
        };
        let (app, builder, stop) = (app.clone(), builder.clone(), stop.clone());
        tokio::spawn(async move {
            serve_connection(stream, peer, app, &builder, limits, stop).await;
            drop((held, permit));
        });
    }
}

/// One connection, until it ends, is closed for idling, or has drained after `stop`.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: axum::Router,
    builder: &hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    limits: ConnectionLimits,
    stop: CancellationToken,
) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let activity = Arc::new(Mutex::new(Activity {
        in_flight: 0,
        served: 0,
        idle_since: Instant::now(),
        head_started: None,
        http2: false,
        last_progress: Instant::now(),
        cut: false,
    }));
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |mut request: axum::http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            // Held until the response body is sent (or dropped): a long download or event
            // stream is a request in flight, not an idle connection.
            let in_flight = InFlight::start(&activity, request.version() == axum::http::Version::HTTP_2);
            let app = app.clone();
            async move {
                let response = app.oneshot(request).await?;
                Ok::<_, std::convert::Infallible>(response.map(|body| {
                    axum::body::Body::new(body.map_frame(move |frame| {
                        let _ = &in_flight;
                        frame
                    }))
                }))
            }
        })
    };
    let io = Watched { inner: Some(stream), activity: activity.clone() };
    let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut draining = false;
    loop {
        let deadline = activity.lock().unwrap_or_else(|p| p.into_inner()).deadline(&limits);
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
                return;
            }
            () = stop.cancelled(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(deadline.min(Instant::now() + RECHECK)) => {
                let mut activity = activity.lock().unwrap_or_else(|p| p.into_inner());
                if activity.deadline(&limits) <= Instant::now() {
                    let reason = match (activity.served, activity.in_flight) {
                        (0, _) => "no request head in time",
                        // A client that stopped reading its response (or sending its body, past
                        // the body timeout): its slot is worth more to the others.
                        (_, 1..) => "a request in flight moved no byte",
                        _ => "idle, or a head too slow",
                    };
                    tracing::debug!(%peer, served = activity.served, "closed a connection: {reason}");
                    if activity.served == 0 {
                        crate::telemetry::connection_refused("header-timeout");
                    }
                    activity.cut = true;
                    return;
                }
            }
        }
    }
}

/// What one connection is doing, for its idle deadline.
struct Activity {
    /// Requests whose response is not yet sent.
    in_flight: usize,
    /// Requests it has had.
    served: u64,
    /// Since when nothing has been in flight (accept, or the end of the last response).
    idle_since: Instant,
    /// When the first byte arrived with nothing in flight: a request head has begun.
    head_started: Option<Instant>,
    /// Whether it speaks HTTP/2 (then bytes between requests are pings and settings, not heads).
    http2: bool,
    /// When a byte last moved either way.
    last_progress: Instant,
    /// Closed for its deadline: the socket is dropped at once, without [`linger`].
    cut: bool,
}

impl Activity {
    /// When the connection is to be closed if nothing changes: no complete head in time, idle
    /// too long, or a request in flight whose bytes stopped moving for the keep-alive timeout
    /// (longer than any long poll's silence or event stream's keep-alive).
    fn deadline(&self, limits: &ConnectionLimits) -> Instant {
        if self.in_flight > 0 {
            return self.last_progress + limits.keep_alive_timeout;
        }
        match self.head_started {
            _ if self.served == 0 => self.idle_since + limits.header_read_timeout,
            Some(started) if !self.http2 => started + limits.header_read_timeout,
            _ => self.idle_since + limits.keep_alive_timeout,
        }
    }
}

/// The connection's socket, telling its [`Activity`] when a request head begins and when bytes
/// move.
struct Watched {
    /// Taken on drop, to [`linger`].
    inner: Option<tokio::net::TcpStream>,
    activity: Arc<Mutex<Activity>>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        let cut = self.activity.lock().unwrap_or_else(|p| p.into_inner()).cut;
        if let (Some(stream), false) = (self.inner.take(), cut)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(linger(stream));
        }
    }
}

/// Ends a connection the server is done with: sends its end (the answer is complete), then reads
/// and discards what the client still sends, for [`LINGER`] or [`LINGER_BYTES`], before closing.
/// Closing a socket with unread input sends a reset, and a client still sending a refused upload
/// (a part header over 8 KiB is refused at its 8 KiB-th byte) would see "broken pipe" instead of
/// the 400 that says why.
async fn linger(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.shutdown().await;
    let mut sink = vec![0u8; 8 << 10];
    let mut left = LINGER_BYTES;
    let _ = tokio::time::timeout(LINGER, async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

impl Watched {
    fn stream(&mut self) -> std::pin::Pin<&mut tokio::net::TcpStream> {
        std::pin::Pin::new(self.inner.as_mut().expect("the stream is there until the connection is dropped"))
    }

    /// Notes a write that sent something.
    fn progressed(&self, polled: &std::task::Poll<std::io::Result<usize>>) {
        if matches!(polled, std::task::Poll::Ready(Ok(n)) if *n > 0) {
            self.activity.lock().unwrap_or_else(|p| p.into_inner()).last_progress = Instant::now();
        }
    }
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = self.stream().poll_read(cx, buf);
        if buf.filled().len() > before {
            let mut activity = self.activity.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            activity.last_progress = now;
            if activity.in_flight == 0 && activity.head_started.is_none() {
                activity.head_started = Some(now);
            }
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = self.stream().poll_write(cx, buf);
        self.progressed(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = self.stream().poll_write_vectored(cx, bufs);
        self.progressed(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }
}

/// A request in flight on a connection, from its head to the end of its response.
struct InFlight(Arc<Mutex<Activity>>);

impl InFlight {
    fn start(activity: &Arc<Mutex<Activity>>, http2: bool) -> InFlight {
        let mut a = activity.lock().unwrap_or_else(|p| p.into_inner());
        a.in_flight += 1;
        a.served += 1;
        a.head_started = None;
        a.http2 |= http2;
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut a = self.0.lock().unwrap_or_else(|p| p.into_inner());
        a.in_flight -= 1;
        a.idle_since = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(other));
        assert_eq!(client_key("::ffff:192.0.2.7".parse().unwrap()), "192.0.2.7".parse::<IpAddr>().unwrap());
        assert_eq!(client_key("192.0.2.7".parse().unwrap()), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn an_address_holds_at_most_its_share_and_gets_it_back() {
        let per: PerKey<IpAddr> = PerKey::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| per.hold(&ip, 3).expect("under the limit")).collect();
        assert!(per.hold(&ip, 3).is_none(), "a fourth connection is over the limit");
        let other = per.hold(&"192.0.2.2".parse().unwrap(), 3);
        assert!(other.is_some(), "another address is not");
        drop((held, other));
        assert_eq!(per.keys(), 0, "counts of closed connections are forgotten");
        assert!(per.hold(&ip, 3).is_some());
    }
}
