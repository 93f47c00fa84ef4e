//! The Redis connection every command goes through, timing each one and counting its
//! outcome for the metrics (only when a recorder is installed).

use std::time::Instant;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Arg, Cmd, ErrorKind, Pipeline, RedisFuture, RedisResult, ServerErrorKind, Value};

use crate::telemetry::metrics;

/// A [`ConnectionManager`] whose commands are measured.
#[derive(Clone)]
pub struct Measured(pub ConnectionManager);

/// The commands the service sends, as metric labels (a fixed set, whatever a caller sends).
const COMMANDS: [&str; 12] = [
    "EVALSHA",
    "EVAL",
    "SCRIPT",
    "XREAD",
    "XRANGE",
    "XREVRANGE",
    "LRANGE",
    "PING",
    "GET",
    "SET",
    "DEL",
    "EXPIRE",
];

fn command_name(cmd: &Cmd) -> &'static str {
    match cmd.args_iter().next() {
        Some(Arg::Simple(name)) => COMMANDS
            .into_iter()
            .find(|known| known.as_bytes().eq_ignore_ascii_case(name))
            .unwrap_or("other"),
        _ => "other",
    }
}

/// Whether a reply counts as a failure: a script not loaded yet is loaded and run again at
/// once by the client, not an error of the service.
fn failed<T>(result: &RedisResult<T>) -> bool {
    result
        .as_ref()
        .is_err_and(|err| err.kind() != ErrorKind::Server(ServerErrorKind::NoScript))
}

impl ConnectionLike for Measured {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        // Without a recorder, the manager's own future, not a wrapper around it.
        if !metrics::enabled() {
            return self.0.req_packed_command(cmd);
        }
        Box::pin(async move {
            let started = Instant::now();
            let result = self.0.req_packed_command(cmd).await;
            metrics::redis_command(command_name(cmd), started.elapsed(), failed(&result));
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        if !metrics::enabled() {
            return self.0.req_packed_commands(pipeline, offset, count);
        }
        Box::pin(async move {
            let started = Instant::now();
            let result = self.0.req_packed_commands(pipeline, offset, count).await;
            metrics::redis_command("pipeline", started.elapsed(), failed(&result));
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}
