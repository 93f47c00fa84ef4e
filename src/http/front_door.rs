//! The listener. Every connection goes to actix-web, except one whose first request opens the
//! event stream (`GET /events`): that one is served here, straight on the socket.
//!
//! Why: an idle stream is what a chat server holds most of. actix-web keeps an 8 KiB read and
//! an 8 KiB write buffer per connection for as long as it lives, more than everything else a
//! stream needs; a stream served here holds the socket, the [`Pump`] and nothing else, and
//! writes the fan-out's shared frames to the socket without copying them. Streams opened on a
//! connection that already carried another request stay with actix-web, with the same
//! protocol (same [`Pump`]), so nothing depends on which path a client takes.
//!
//! The first read of a connection is classified: a complete `GET /events` head, HTTP/1.1, with
//! no body and nothing after it, is a stream; anything else, including a head split over
//! several reads, goes to actix-web together with the bytes already read. A stream request that
//! fails before it starts (bad token, malformed `Last-Event-ID`, Redis or MongoDB down) gets
//! the same error response actix-web would give (`ApiError::error_response`), then the
//! connection closes. A client that closes its side of the connection is gone: its stream ends
//! at once (EventSource and proxies close both sides; a half-closed client is not kept).

use std::future::Future;
use std::io::{self, IoSlice};
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_http::{HttpService, KeepAlive, Protocol, Request, Response};
use actix_server::Server;
use actix_service::{
    IntoServiceFactory, Service, ServiceFactory, ServiceFactoryExt, fn_factory, fn_service,
    map_config,
};
use actix_web::ResponseError;
use actix_web::body::{MessageBody, to_bytes};
use actix_web::dev::AppConfig;
use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::auth::{authenticate, token_from};
use crate::error::ApiError;
use crate::http::events::{EventsQuery, Pump, STREAM_HEADERS, parse_last_event_id};
use crate::http::{parse_query, request_log};
use crate::state::AppState;

/// How long a new connection may take to send its first bytes, and actix-web a request head
/// (its default).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The first read of a connection: a request head bigger than this goes to actix-web.
const FIRST_READ: usize = 4096;
/// Frames written with one system call at most.
const BATCH: usize = 64;
/// A stream whose client has not taken a write within this long is closed.
const STALLED_WRITE: Duration = Duration::from_secs(30);

/// Server-wide settings of [`serve`].
pub struct ServeOptions {
    /// Worker threads; 0 for one per core.
    pub workers: usize,
    /// How long shutdown waits for open connections.
    pub shutdown_timeout: Duration,
}

/// Serves `app` (an actix-web application factory, as given to `HttpServer::new`) on
/// `listener`, with event streams that open a connection served by this module. The server
/// is configured as `HttpServer` configures it by default, signals disabled.
pub fn serve<F, I, S, B>(
    listener: TcpListener,
    state: web::Data<AppState>,
    app: F,
    options: ServeOptions,
) -> io::Result<Server>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: std::fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    <S::Service as Service<Request>>::Future: 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    let addr = listener.local_addr()?;
    let mut builder = actix_server::Server::build()
        .disable_signals()
        .shutdown_timeout(options.shutdown_timeout.as_secs());
    if options.workers > 0 {
        builder = builder.workers(options.workers);
    }
    let graceful = builder.graceful_shutdown_signal();
    builder
        .listen("chat-api", listener, move || {
            let graceful = graceful.clone();
            let state = state.clone();
            let application = app()
                .into_factory()
                .map_err(|err| err.into().error_response());
            let http = HttpService::build()
                .graceful_shutdown_signal(move || {
                    let graceful = graceful.clone();
                    async move { graceful.notified().await }
                })
                .keep_alive(KeepAlive::default())
                .client_request_timeout(REQUEST_TIMEOUT)
                .client_disconnect_timeout(Duration::from_secs(1))
                .h1_allow_half_closed(true)
                .local_addr(addr)
                // The host and address of `AppConfig` only serve URL generation, unused here.
                .finish(map_config(application, |_| AppConfig::default()));
            fn_factory(move || {
                let handler = http.new_service(());
                let state = state.clone();
                async move {
                    let handler = handler.await.map_err(|err| {
                        tracing::error!(error = ?err, "the HTTP service of a worker did not start");
                    })?;
                    let handler = Rc::new(handler);
                    Ok::<_, ()>(fn_service(move |io: TcpStream| {
                        let connection = connection(io, Rc::clone(&handler), state.clone());
                        async move {
                            connection.await;
                            Ok::<_, ()>(())
                        }
                    }))
                }
            })
        })
        .map(|builder| builder.run())
}

/// One accepted connection, from its first read to its end.
async fn connection<H>(mut io: TcpStream, http: Rc<H>, state: web::Data<AppState>)
where
    H: Service<(Prefixed, Protocol, Option<SocketAddr>)>,
{
    let peer = io.peer_addr().ok();
    let mut head = BytesMut::with_capacity(FIRST_READ);
    let mut shutdown = state.shutdown.clone();
    let first_read = tokio::select! {
        read = tokio::time::timeout(REQUEST_TIMEOUT, io.read_buf(&mut head)) => read,
        _ = shutdown.wait_for(|&stopping| stopping) => return,
    };
    // Closed, failed, or silent for the whole request timeout: nothing to answer.
    if !matches!(first_read, Ok(Ok(read)) if read > 0) {
        return;
    }
    let head = head.freeze();
    let Some(request) = StreamRequest::parse(&head) else {
        let _ = Box::pin(http.call((Prefixed { prefix: head, io }, Protocol::Http1, peer))).await;
        return;
    };
    drop(head);
    let started = Instant::now();
    // The request's span (its id) covers opening the stream and its log line; a held stream
    // keeps no span, to stay small.
    let id = uuid::Uuid::new_v4().to_string();
    let span = request_log::request_span(&id);
    // Boxed, as what follows: the task of a connection is as big as the biggest state of this
    // function, and a held stream should not pay for the others.
    let opened = Box::pin(open(&state, request).instrument(span.clone())).await;
    drop(state);
    let status = opened
        .as_ref()
        .map_or_else(|err| err.status_code(), |_| StatusCode::OK);
    span.in_scope(|| request_log::logged("GET", "/events", "/events", status.as_u16(), started));
    match opened {
        Ok(pump) => {
            drop(span);
            Box::pin(stream(io, pump, id)).await;
        }
        // The refusal's own log line (a 503's warning) carries the request's id too.
        Err(err) => Box::pin(refuse(io, &err, &id).instrument(span)).await,
    }
}

/// What a stream request carries, owned, so that the head it was read from can go.
struct StreamRequest {
    authorization: Option<String>,
    cookies: Vec<String>,
    last_event_id: Option<String>,
    query: String,
}

impl StreamRequest {
    /// The request in `head` if it is exactly one complete `GET /events` head that this
    /// module serves.
    fn parse(head: &[u8]) -> Option<Self> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(head) {
            Ok(httparse::Status::Complete(len)) if len == head.len() => {}
            _ => return None,
        }
        if request.method != Some("GET") || request.version != Some(1) {
            return None;
        }
        let target = request.path?;
        // actix-web refuses a target that is not visible ASCII: so does this path.
        if !target.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        if path != "/events" {
            return None;
        }
        let mut parsed = StreamRequest {
            authorization: None,
            cookies: Vec::new(),
            last_event_id: None,
            query: query.to_owned(),
        };
        for header in request.headers.iter() {
            let value = visible_ascii(header.value);
            let name = header.name;
            if name.eq_ignore_ascii_case("authorization") {
                // Like actix-web: the first one counts, and one that is not text is empty.
                parsed
                    .authorization
                    .get_or_insert_with(|| value.unwrap_or_default().to_owned());
            } else if name.eq_ignore_ascii_case("cookie") {
                parsed.cookies.extend(value.map(str::to_owned));
            } else if name.eq_ignore_ascii_case("last-event-id") {
                parsed
                    .last_event_id
                    .get_or_insert_with(|| value.unwrap_or("\u{0}").to_owned());
            } else if name.eq_ignore_ascii_case("content-length") {
                if value.map(str::trim) != Some("0") {
                    return None;
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                || name.eq_ignore_ascii_case("upgrade")
                || name.eq_ignore_ascii_case("expect")
            {
                return None;
            }
        }
        Some(parsed)
    }
}

/// A header value as text if it is visible ASCII (or tabs), as `HeaderValue::to_str` has it.
fn visible_ascii(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (32..127).contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// Authenticates the request and opens its stream, in the order the actix-web handler's
/// extractors take: token, query, `Last-Event-ID`.
async fn open(state: &web::Data<AppState>, request: StreamRequest) -> Result<Pump, ApiError> {
    let cookies = request.cookies.iter().map(String::as_str);
    let token = token_from(
        request.authorization.as_deref(),
        true,
        cookies,
        &request.query,
    )?;
    let user = authenticate(state, &token).await?;
    let query: EventsQuery = parse_query(&request.query)?;
    let last = request.last_event_id.as_deref();
    let last = parse_last_event_id(last.or(query.last_event_id.as_deref()))?;
    Pump::open(state.clone().into_inner(), user, last).await
}

/// Answers a stream request that cannot be served with the API's error response, then closes.
async fn refuse(mut io: TcpStream, err: &ApiError, id: &str) {
    let mut response = err.error_response();
    if let Ok(id) = actix_web::http::header::HeaderValue::from_str(id) {
        response.headers_mut().insert(request_log::REQUEST_ID, id);
    }
    let status = response.status();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default()
    )
    .into_bytes();
    for (name, value) in response.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    let body = to_bytes(response.into_body()).await.unwrap_or_default();
    let date = http_date();
    let length = body.len();
    head.extend_from_slice(
        format!("content-length: {length}\r\nconnection: close\r\ndate: {date}\r\n\r\n").as_bytes(),
    );
    head.extend_from_slice(&body);
    if within(STALLED_WRITE, io.write_all(&head)).await {
        let _ = io.shutdown().await;
    }
}

/// Now, as the `Date` header has it.
fn http_date() -> impl std::fmt::Display {
    chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT")
}

/// Writes the response head, then the stream's frames as HTTP/1.1 chunks, each batch of
/// frames already waiting in one system call, until the stream or the client ends.
async fn stream(mut io: TcpStream, mut pump: Pump, id: String) {
    // Frames are small and must go at once.
    let _ = io.set_nodelay(true);
    let mut head = String::from("HTTP/1.1 200 OK\r\n");
    for (name, value) in STREAM_HEADERS {
        for part in [name, ": ", value, "\r\n"] {
            head.push_str(part);
        }
    }
    head.push_str(&format!(
        "{}: {id}\r\ntransfer-encoding: chunked\r\nconnection: close\r\ndate: {}\r\n\r\n",
        request_log::REQUEST_ID,
        http_date()
    ));
    drop(id);
    if !within(STALLED_WRITE, io.write_all(head.as_bytes())).await {
        return;
    }
    drop(head);
    loop {
        let next = tokio::select! {
            frame = pump.next_frame() => frame,
            () = client_gone(&io) => return,
        };
        let Some(first) = next else { break };
        // Under load several frames are waiting: they go together. Only then is there a list
        // to allocate (per write, not per frame), so that an idle stream holds none.
        let mut more = Vec::new();
        while more.len() < BATCH - 1
            && let Some(frame) = pump.ready_frame()
        {
            if more.is_empty() {
                // Once, rather than growing it by doubling up to 5 times.
                more.reserve_exact(BATCH - 1);
            }
            more.push(frame);
        }
        if !within(STALLED_WRITE, write_chunk(&io, &first, &more)).await {
            return;
        }
    }
    if within(STALLED_WRITE, io.write_all(b"0\r\n\r\n")).await {
        let _ = io.shutdown().await;
    }
}

/// Whether `write` completed within `bound`.
async fn within(bound: Duration, write: impl Future<Output = io::Result<()>>) -> bool {
    matches!(tokio::time::timeout(bound, write).await, Ok(Ok(())))
}

/// Resolves when the client has closed the connection (or it failed). What a client sends
/// on a stream is read and ignored, here, so that the stream's own future is never dropped
/// half-way (it may be refreshing presence).
async fn client_gone(io: &TcpStream) {
    loop {
        if io.readable().await.is_err() {
            return;
        }
        let mut scratch = [0u8; 64];
        match io.try_read(&mut scratch) {
            Ok(0) => return,
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// Writes `first` and `more` (at most `BATCH` frames in all) as one chunk: size line, the
/// frames' shared bytes, CRLF. The list of slices for the system call is built anew for
/// each attempt, so that it is not part of a waiting stream's state.
async fn write_chunk(io: &TcpStream, first: &Bytes, more: &[Bytes]) -> io::Result<()> {
    let more = &more[..more.len().min(BATCH - 1)];
    let len = first.len() + more.iter().map(Bytes::len).sum::<usize>();
    let mut size = [0u8; 20];
    let size = chunk_size_line(len, &mut size);
    let total = size.len() + len + 2;
    let mut written = 0;
    while written < total {
        io.writable().await?;
        match write_from(io, [size, first, b"\r\n"], more, written) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// One vectored write of size line, `first`, `more` and CRLF (`[size, first, crlf]`), from
/// byte `skip` on.
fn write_from(io: &TcpStream, parts: [&[u8]; 3], more: &[Bytes], skip: usize) -> io::Result<usize> {
    let mut slices = [IoSlice::new(&[]); BATCH + 2];
    let count = fill_slices(parts, more, skip, &mut slices);
    io.try_write_vectored(&slices[..count])
}

/// Points `slices` at size line, `first`, `more` and CRLF from byte `skip` on, and returns how
/// many it used (at most `more.len() + 3`, which must fit).
fn fill_slices<'a>(
    [size, first, crlf]: [&'a [u8]; 3],
    more: &'a [Bytes],
    mut skip: usize,
    slices: &mut [IoSlice<'a>],
) -> usize {
    debug_assert!(more.len() + 3 <= slices.len(), "more frames than slices");
    let parts = [size, first]
        .into_iter()
        .chain(more.iter().map(|frame| &frame[..]))
        .chain([crlf]);
    let mut count = 0;
    for part in parts {
        if skip >= part.len() {
            skip -= part.len();
            continue;
        }
        let Some(slice) = slices.get_mut(count) else {
            break;
        };
        *slice = IoSlice::new(&part[skip..]);
        skip = 0;
        count += 1;
    }
    count
}

/// `len` in hexadecimal followed by CRLF, written into `buf`.
fn chunk_size_line(len: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut rest = &mut buf[..];
    // At most 16 digits and CRLF: it always fits.
    let _ = io::Write::write_fmt(&mut rest, format_args!("{len:x}\r\n"));
    let written = 20 - rest.len();
    &buf[..written]
}

/// A connection handed to actix-web: the bytes already read, then the socket.
pub struct Prefixed {
    prefix: Bytes,
    io: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix[..n]);
        // Release the first read's buffer as soon as it has been handed over.
        this.prefix = if n == this.prefix.len() {
            Bytes::new()
        } else {
            this.prefix.slice(n..)
        };
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_resumes_at_any_byte_of_the_chunk() {
        let more = [Bytes::from_static(b"cd"), Bytes::from_static(b"efg")];
        let parts: [&[u8]; 3] = [b"7\r\n", b"ab", b"\r\n"];
        let whole = b"7\r\nabcdefg\r\n";
        for skip in 0..=whole.len() {
            let mut slices = [IoSlice::new(&[]); BATCH + 2];
            let count = fill_slices(parts, &more, skip, &mut slices);
            let rest: Vec<u8> = slices[..count].iter().flat_map(|s| s.to_vec()).collect();
            assert_eq!(rest, &whole[skip..], "from byte {skip}");
            assert!(slices[..count].iter().all(|s| !s.is_empty()));
        }
    }

    fn parse(head: &str) -> Option<StreamRequest> {
        StreamRequest::parse(head.as_bytes())
    }

    #[test]
    fn only_a_complete_stream_request_is_served_here() {
        let stream = parse(
            "GET /events?last_event_id=a-1-0&access_token=t HTTP/1.1\r\nHost: x\r\n\
             Authorization: Bearer abc\r\nCookie: a=1\r\nCookie: access_token=c\r\n\
             Last-Event-ID: e-2-0\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(stream.authorization.as_deref(), Some("Bearer abc"));
        assert_eq!(stream.cookies, ["a=1", "access_token=c"]);
        assert_eq!(stream.last_event_id.as_deref(), Some("e-2-0"));
        assert_eq!(stream.query, "last_event_id=a-1-0&access_token=t");
        assert!(parse("GET /events HTTP/1.1\r\nHost: x\r\n\r\n").is_some());

        for other in [
            "GET /events HTTP/1.1\r\nHost: x\r\n", // head not complete
            "GET /events HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n", // pipelined
            "GET /events HTTP/1.0\r\n\r\n",
            "HEAD /events HTTP/1.1\r\n\r\n",
            "POST /events HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
            "GET /events HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
            "GET /events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /events HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "GET /events/ HTTP/1.1\r\n\r\n",
            "GET /eventsx HTTP/1.1\r\n\r\n",
            "GET /healthz HTTP/1.1\r\n\r\n",
            "not http at all\r\n\r\n",
        ] {
            assert!(parse(other).is_none(), "{other:?}");
        }
    }

    #[test]
    fn header_values_that_are_not_text_read_as_actix_web_reads_them() {
        let mut head = b"GET /events HTTP/1.1\r\nAuthorization: Bearer ".to_vec();
        head.extend_from_slice(
            b"\xff\r\nLast-Event-ID: \xfe\r\nAuthorization: Bearer second\r\n\r\n",
        );
        let stream = StreamRequest::parse(&head).unwrap();
        assert_eq!(stream.authorization.as_deref(), Some(""));
        assert_eq!(stream.last_event_id.as_deref(), Some("\u{0}"));
        // actix-web refuses a target that is not ASCII; it answers that one.
        assert!(StreamRequest::parse(b"GET /events?x=\xc3\xa9 HTTP/1.1\r\n\r\n").is_none());
    }

    #[test]
    fn chunk_sizes_are_hexadecimal_lines() {
        let mut buf = [0u8; 20];
        assert_eq!(chunk_size_line(0, &mut buf), b"0\r\n");
        assert_eq!(chunk_size_line(10, &mut buf), b"a\r\n");
        assert_eq!(chunk_size_line(4096, &mut buf), b"1000\r\n");
        assert_eq!(
            chunk_size_line(usize::MAX, &mut buf),
            b"ffffffffffffffff\r\n"
        );
    }
}
