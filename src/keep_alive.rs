//! HTTP/1.1 connections: the express lane first, hyper for the rest, and
//! the parking of idle keep-alive ones.
//!
//! Between two requests, while no hyper connection runs, the connection
//! waits for the client here (readiness of the socket, the drain, and
//! `ClientIo`'s head timer) and gives what arrives to the express lane
//! (`express.rs`), which answers a plain hit itself; whatever it leaves is
//! replayed to a new hyper connection, parked as below once at rest.
//!
//! hyper gives every HTTP/1 connection an 8 KiB read buffer and an 8 KiB
//! head buffer that it keeps while it waits for the next request, and
//! neither can be configured smaller; and while hyper's connection runs,
//! the express lane does not. So hyper's connection is *parked* once it is
//! at rest (`ConnectionWatch::is_at_rest`: every answer out, nothing of a
//! next request read): it is ended without touching the socket
//! (`graceful_shutdown` on an idle hyper connection writes nothing;
//! `poll_without_shutdown` and `into_parts` give the stream back), and only
//! the stream, with [`ClientIo`]'s small state, is kept until the client
//! sends again. Then the express lane reads the next request first, and a
//! new hyper connection starts for what it leaves, with the same service,
//! answering as the old one would have: hyper's answers do not depend on
//! what an earlier request on the connection was.
//!
//! When depends on why hyper was started:
//! - for a request of the lane's kind that was not answered at once (a
//!   miss, the admin API, a refusal), it is parked as soon as it is at
//!   rest: the next request is likely a hit, the lane's. A miss then costs
//!   the lane's attempt and a hyper connection of its own (14k instructions
//!   more, about 3 µs, on an answer the backend takes seconds to give), and
//!   the hits after it are the lane's at once: before, a connection hyper
//!   served under steady traffic stayed hyper's, at 20.5k instructions per
//!   hit against the lane's 15k;
//! - for anything else (`Range`, a precondition, HTTP/1.0, a head of 8 KiB
//!   or a request over 32 KiB, a body still arriving), its client will
//!   likely send more of the same: it is parked once it has been quiet and
//!   at rest for
//!   `park_after`, checked by a tick every `park_after / 2` that compares
//!   the connection's I/O counter with the previous tick's.
//!
//! At rest costs the request path a few relaxed stores in `ClientIo` per
//! read or write, and the first case one more poll after each answer
//! (hyper reads for the next request only when polled after an answer).
//!
//! What holds for an unparked connection holds for a parked one:
//! - it is closed when it has been idle for `header_read_timeout` since its
//!   last answer, the moment `ClientIo`'s head deadline would have closed
//!   it, and a head begun while parked must be complete by then too;
//! - the drain (SIGTERM) closes it at once, as hyper closes an idle one;
//! - it keeps its `max_connections` slot;
//! - `ClientIo` (the framing guard, the body and send deadlines) carries
//!   over whole: parking happens only between two requests, and bytes hyper
//!   had read but not used are replayed to the next hyper connection.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tracing::debug;

use crate::client_io::{ClientIo, ConnectionWatch};
use crate::connection::{ClientStream, ProxyService, Settings};
use crate::drain::DrainWatch;
use crate::express::{self, Express};

type Http1<IO> = http1::Connection<TokioIo<ClientIo<IO>>, ProxyService>;
type Parts<IO> = http1::Parts<TokioIo<ClientIo<IO>>, ProxyService>;

/// How a run of one hyper connection ended.
// Returned once per park and moved straight into the caller's locals: a box
// would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Run<IO> {
    /// The connection is over (closed, failed, timed out or drained).
    Ended,
    /// hyper's connection ended at rest; the stream is still open.
    Parked(Parts<IO>),
}

/// Serves an HTTP/1 connection to its end: each request read by the
/// express lane first (`express.rs`), and a hyper connection started for
/// the first one it leaves, parked again whenever it is idle.
/// `first_deadline` bounds the first request head.
///
/// The stream and service come boxed: an async fn keeps its arguments for
/// its whole life next to the locals they are moved to, so a large argument
/// would be stored twice in every connection's task.
pub(crate) async fn serve<IO: ClientStream>(
    start: Box<(ClientIo<IO>, ProxyService)>,
    first_deadline: Instant,
    settings: &Settings,
    mut drain: DrainWatch,
    client: SocketAddr,
) {
    let (mut io, mut service) = *start;
    let watch = io.watch().clone();
    let mut woken = false;
    loop {
        let idle_until = match watch.requests() {
            0 => first_deadline,
            _ => watch.rested_at() + settings.idle_timeout,
        };
        // No hyper connection here: a client that sends nothing holds only
        // the stream and `ClientIo` (bytes replayed are read at once). The
        // wait uses the connection's one head timer, not one per request.
        if !io.has_replay() {
            let woke = poll_fn(|cx| {
                if drain.poll_started(cx).is_ready() {
                    return Poll::Ready(Wake::Drain);
                }
                if io.poll_idle_deadline(cx).is_ready() {
                    return Poll::Ready(Wake::Deadline);
                }
                io.get_ref().poll_readable(cx).map(Wake::Readable)
            })
            .await;
            match woke {
                Wake::Readable(Ok(())) => {}
                Wake::Drain => {
                    debug!(client = %client, "shutting down: closing an idle connection");
                    return;
                }
                Wake::Deadline => {
                    debug!(client = %client, "idle keep-alive connection reached header_read_timeout; closing");
                    return;
                }
                Wake::Readable(Err(err)) => {
                    debug!(client = %client, error = %err, "idle connection failed");
                    return;
                }
            }
        }
        // After a request of the lane's kind, hyper's connection is parked
        // as soon as it is at rest: the next request is likely a hit.
        let park_at_rest = match express::answer(&mut io, &service, &drain, client).await {
            Express::Answered | Express::Nothing => continue,
            Express::Closed => return,
            Express::Hyper => false,
            Express::NotAtOnce => true,
        };
        // The head the hyper connection reads must be done when the express
        // lane's would have been (`ClientIo` keeps that clock too).
        let mut head_due = Some((idle_until, watch.requests()));
        // Both boxed: parked, the task keeps only their pointers' slots, not
        // hyper's connection or the state of driving it.
        let conn = Box::new(settings.http1.serve_connection(TokioIo::new(io), service));
        let run = Box::pin(run(
            conn,
            &watch,
            &mut head_due,
            settings,
            &mut drain,
            Rest {
                woken,
                park_at_rest,
            },
            client,
        ));
        let parts = match run.await {
            Run::Ended => return,
            Run::Parked(parts) => parts,
        };
        // Taken apart at once: even empty, `read_buf` holds hyper's 8 KiB
        // read buffer, which must not stay with a parked connection.
        let http1::Parts {
            io: parked,
            read_buf,
            service: kept,
            ..
        } = parts;
        io = parked.into_inner();
        service = kept;
        debug!(client = %client, "idle connection parked");
        // Not expected at rest, but those bytes are the client's next
        // request: read at once.
        io.replay(read_buf);
        woken = true;
    }
}

/// What ended a wait for the next request.
enum Wake {
    Readable(std::io::Result<()>),
    Drain,
    /// `header_read_timeout` since the last answer.
    Deadline,
}

/// Drives one hyper connection until it ends or is parked.
async fn run<IO: ClientStream>(
    mut conn: Box<Http1<IO>>,
    watch: &Arc<ConnectionWatch>,
    head_due: &mut Option<(Instant, u64)>,
    settings: &Settings,
    drain: &mut DrainWatch,
    Rest {
        woken,
        park_at_rest,
    }: Rest,
    client: SocketAddr,
) -> Run<IO> {
    let tick = settings.park_after / 2;
    let mut next_tick = Instant::now() + tick;
    let mut seen = watch.io_events();
    let mut draining = false;
    let requests_at_start = watch.requests();
    // The request count at the last extra poll (see below).
    let mut nudged = requests_at_start;
    loop {
        let wake = match *head_due {
            Some((at, _)) => at.min(next_tick),
            None => next_tick,
        };
        let step = tokio::select! {
            biased;
            step = poll_fn(|cx| match conn.poll_without_shutdown(cx) {
                Poll::Ready(ended) => Poll::Ready(Step::Ended(ended)),
                Poll::Pending if !park_at_rest || draining => Poll::Pending,
                // Answered, and nothing of the next request read: that one
                // is the express lane's.
                Poll::Pending if watch.is_at_rest() => Poll::Ready(Step::AtRest),
                Poll::Pending => {
                    // hyper reads for the next request when it is polled
                    // after an answer ended, not in the poll that ended it:
                    // one more poll tells whether it is at rest.
                    let requests = watch.requests();
                    if watch.answers_pending() == 0 && nudged != requests {
                        nudged = requests;
                        cx.waker().wake_by_ref();
                    }
                    Poll::Pending
                }
            }) => step,
            () = drain.started(), if !draining => {
                // Closes an idle connection at once (writing nothing); an
                // answer in progress is finished with `Connection: close`.
                draining = true;
                Pin::new(&mut *conn).graceful_shutdown();
                Step::Wait
            }
            () = tokio::time::sleep_until(wake) => Step::Wait,
        };
        let park_now = match step {
            Step::Ended(ended) => {
                let unused = woken && watch.requests() == requests_at_start;
                return finish(conn, ended, unused, client).await;
            }
            Step::AtRest => true,
            Step::Wait => {
                let now = Instant::now();
                if let Some((at, requests)) = *head_due {
                    if now >= at {
                        if watch.requests() == requests {
                            debug!(client = %client, "no request within header_read_timeout; closing");
                            return Run::Ended;
                        }
                        *head_due = None;
                    }
                }
                if now < next_tick {
                    continue;
                }
                let events = watch.io_events();
                let quiet = events == seen && watch.is_at_rest();
                seen = events;
                next_tick = now + tick;
                quiet
            }
        };
        if park_now && !draining {
            match park(conn, client).await {
                Ok(parked) => return parked,
                Err(busy) => {
                    conn = busy;
                    draining = true;
                }
            }
        }
    }
}

/// How [`run`]'s hyper connection came to be and when it is parked.
struct Rest {
    /// Started on a parked connection.
    woken: bool,
    /// Parked as soon as it is at rest (after a request of the express
    /// lane's kind that was not a hit), not only once quiet.
    park_at_rest: bool,
}

/// What woke [`run`].
enum Step {
    /// hyper's connection ended by itself.
    Ended(hyper::Result<()>),
    /// hyper's connection is at rest between two requests.
    AtRest,
    /// A timer or the drain: see what is due.
    Wait,
}

/// Ends hyper's connection at rest, giving the stream back; the connection
/// back when it turns out busy (it then finishes its answer and closes).
async fn park<IO: ClientStream>(
    mut conn: Box<Http1<IO>>,
    client: SocketAddr,
) -> Result<Run<IO>, Box<Http1<IO>>> {
    // hyper is idle: this only closes its state, writing nothing.
    Pin::new(&mut *conn).graceful_shutdown();
    match poll_fn(|cx| Poll::Ready(conn.poll_without_shutdown(cx))).await {
        Poll::Ready(Ok(())) => Ok(Run::Parked(conn.into_parts())),
        Poll::Ready(Err(err)) => {
            debug!(client = %client, error = %err, "connection ended with an error");
            Ok(Run::Ended)
        }
        // Not idle after all: it finishes what it is doing, then closes.
        Poll::Pending => {
            debug!(client = %client, "connection busy when parked; closing after its answer");
            Err(conn)
        }
    }
}

/// A hyper connection that ended by itself: the stream is shut down as
/// hyper would have done (`poll_without_shutdown` leaves that to us).
async fn finish<IO: ClientStream>(
    conn: Box<Http1<IO>>,
    ended: hyper::Result<()>,
    unused: bool,
    client: SocketAddr,
) -> Run<IO> {
    match ended {
        Ok(()) => {
            let mut io = conn.into_parts().io.into_inner();
            // Bounded by send_timeout (ClientIo).
            let _ = io.shutdown().await;
        }
        // A client closing a woken connection before a new request: the
        // fresh hyper connection calls that incomplete; for the client it is
        // the end of an idle keep-alive, which hyper ends quietly.
        Err(err) if unused && err.is_incomplete_message() => {}
        Err(err) => debug!(client = %client, error = %err, "connection ended with an error"),
    }
    Run::Ended
}
