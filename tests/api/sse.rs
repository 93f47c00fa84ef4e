//! A small, strict SSE client for the tests: parses frames as EventSource does.

use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::TestApp;

#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {}", self.data))
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<actix_web::web::Bytes>> + Send>>;

pub struct EventStream {
    stream: ByteStream,
    buffer: String,
    /// Bytes of a character the last chunk cut.
    partial: Vec<u8>,
    pub headers: reqwest::header::HeaderMap,
    /// The last `id:` seen, as EventSource keeps it for `Last-Event-ID`.
    pub last_id: Option<String>,
    pub comments: usize,
    pub ended: bool,
    /// How the transport failed, if it did: a stream that ends must end cleanly (for chunked
    /// HTTP, with the terminating chunk).
    pub failed: Option<String>,
}

impl TestApp {
    /// Opens `GET /events` on a new connection, resuming after `last_event_id` when given (as
    /// a header). Asserts that the front door served it (`connection: close`).
    pub async fn events(&self, token: &str, last_event_id: Option<&str>) -> EventStream {
        let request = self.fresh_client.get(self.url("/events"));
        let stream = Self::open_events(request, token, last_event_id).await;
        assert_eq!(
            stream.headers["connection"], "close",
            "served by the front door"
        );
        stream
    }

    /// A client whose one idle connection has carried a request: a stream it opens next goes
    /// out on that connection and is served by actix-web.
    pub async fn kept_alive_client(&self) -> reqwest::Client {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()
            .unwrap();
        let health = client.get(self.url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), StatusCode::OK);
        health.bytes().await.unwrap();
        client
    }

    /// Opens `GET /events` on a kept-alive connection; asserts that actix-web served it.
    pub async fn events_kept_alive(&self, token: &str) -> EventStream {
        let client = self.kept_alive_client().await;
        let stream = Self::open_events(client.get(self.url("/events")), token, None).await;
        assert!(
            stream.headers.get("connection").is_none(),
            "served by actix-web on the kept-alive connection"
        );
        stream
    }

    async fn open_events(
        request: reqwest::RequestBuilder,
        token: &str,
        last_event_id: Option<&str>,
    ) -> EventStream {
        match Self::try_open_events(request, token, last_event_id).await {
            Ok(stream) => stream,
            Err(refused) => panic!("the stream was refused: {refused}"),
        }
    }

    /// Opens `GET /events` on a new connection like [`TestApp::events`], but gives back what
    /// a refusal said instead of panicking (a client that retries).
    pub async fn try_events(
        &self,
        token: &str,
        last_event_id: Option<&str>,
    ) -> Result<EventStream, String> {
        let request = self.fresh_client.get(self.url("/events"));
        Self::try_open_events(request, token, last_event_id).await
    }

    async fn try_open_events(
        request: reqwest::RequestBuilder,
        token: &str,
        last_event_id: Option<&str>,
    ) -> Result<EventStream, String> {
        let mut request = request.bearer_auth(token).timeout(Duration::from_secs(120));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.map_err(|err| format!("{err:?}"))?;
        if response.status() != StatusCode::OK {
            let status = response.status();
            let retry_after = response.headers().contains_key("retry-after");
            let body = response.text().await.unwrap_or_default();
            return Err(format!("{status} (retry-after: {retry_after}) {body}"));
        }
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        assert_eq!(
            response.headers()["cache-control"],
            "no-cache, no-transform"
        );
        Ok(EventStream {
            headers: response.headers().clone(),
            stream: Box::pin(response.bytes_stream()),
            buffer: String::new(),
            partial: Vec::new(),
            last_id: last_event_id.map(str::to_owned),
            comments: 0,
            ended: false,
            failed: None,
        })
    }

    /// Opens the stream and waits for `ready`, so that everything posted afterwards is seen.
    pub async fn ready_events(&self, token: &str) -> EventStream {
        let mut stream = self.events(token, None).await;
        stream.expect("ready").await;
        stream
    }
}

impl EventStream {
    /// Whether the server ended the stream, well-formed.
    pub fn ended_cleanly(&self) -> bool {
        self.ended && self.failed.is_none()
    }

    /// The next event, or `None` when the stream ends or nothing comes within `bound`.
    pub async fn next_within(&mut self, bound: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = self.parse_block(&block) {
                    return Some(event);
                }
                continue;
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(Ok(chunk))) => {
                    // A character may be split across chunks: its first bytes wait for the rest.
                    self.partial.extend_from_slice(&chunk);
                    let whole = match std::str::from_utf8(&self.partial) {
                        Ok(text) => text.len(),
                        Err(err) if err.error_len().is_none() => err.valid_up_to(),
                        Err(err) => panic!("the stream is not UTF-8: {err}"),
                    };
                    let text: Vec<u8> = self.partial.drain(..whole).collect();
                    self.buffer.push_str(std::str::from_utf8(&text).unwrap());
                }
                Ok(Some(Err(err))) => {
                    self.failed = Some(format!("{err:?}"));
                    self.ended = true;
                }
                Ok(None) => self.ended = true,
                Err(_) => return None,
            }
        }
    }

    pub async fn next(&mut self) -> Option<SseEvent> {
        self.next_within(Duration::from_secs(10)).await
    }

    /// The next event of kind `event`, skipping others; panics if none comes.
    pub async fn expect(&mut self, event: &str) -> SseEvent {
        loop {
            match self.next().await {
                Some(e) if e.event == event => return e,
                Some(_) => {}
                None => panic!("no `{event}` event arrived"),
            }
        }
    }

    /// `n` message events, in arrival order (others skipped).
    pub async fn messages(&mut self, n: usize) -> Vec<SseEvent> {
        let mut found = Vec::new();
        while found.len() < n {
            match self.next().await {
                Some(e) if e.event == "message" => found.push(e),
                Some(_) => {}
                None => panic!("only {} of {n} messages arrived: {found:?}", found.len()),
            }
        }
        found
    }

    /// Asserts that no message arrives within `bound`.
    pub async fn assert_no_message_within(&mut self, bound: Duration) {
        let deadline = tokio::time::Instant::now() + bound;
        while let Some(event) = self
            .next_within(deadline - tokio::time::Instant::now())
            .await
        {
            assert_ne!(event.event, "message", "unexpected message: {event:?}");
        }
    }

    fn parse_block(&mut self, block: &str) -> Option<SseEvent> {
        let mut id = None;
        let mut event = "message".to_owned();
        let mut data = Vec::new();
        for line in block.lines().filter(|l| !l.is_empty()) {
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => id = Some(value.to_owned()),
                "event" => event = value.to_owned(),
                "data" => data.push(value.to_owned()),
                "retry" => assert!(value.parse::<u64>().is_ok(), "bad retry: {value}"),
                other => panic!("unknown SSE field {other:?} in {block:?}"),
            }
        }
        if let Some(id) = &id {
            self.last_id = Some(id.clone());
        }
        if data.is_empty() {
            return None;
        }
        Some(SseEvent {
            id,
            event,
            data: data.join("\n"),
        })
    }
}
