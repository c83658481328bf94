//! Running a load: connections, the pacer or the closed loops, and what they record.

use crate::client::{Answer, Sender};
use crate::histogram::LatencyHistogram;
use crate::schedule::Schedule;
use crate::timer::PreciseTimer;
use crate::{Config, Load, LoadgenError, Report};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// The first request is due this long after the connections are up, so that it is not
/// late merely because setting up took a moment.
const LEAD_IN: Duration = Duration::from_millis(5);

/// A request released by the pacer to a connection.
#[derive(Clone, Copy, Debug)]
struct Ticket {
    intended: Instant,
    /// False during the warm-up: sent, not counted.
    counted: bool,
}

/// What the connections record, shared by all of them. The generator runs on one thread,
/// so the lock is never contended; it costs tens of nanoseconds per request.
#[derive(Default)]
struct Recorder {
    latency: LatencyHistogram,
    service_time: LatencyHistogram,
    send_delay: LatencyHistogram,
    responses: u64,
    warmup_responses: u64,
    bad_status: u64,
    transport_errors: u64,
    timeouts: u64,
    unsent: u64,
    first_error: Option<String>,
}

type SharedRecorder = Arc<Mutex<Recorder>>;

/// Everything a connection's requests need to know.
struct Plan {
    config: Config,
    recorder: SharedRecorder,
    /// Past this, nothing more is sent and requests still in flight are abandoned.
    hard_deadline: Instant,
}

// === impl Recorder ===

impl Recorder {
    fn note_error(&mut self, message: impl FnOnce() -> String) {
        if self.first_error.is_none() {
            self.first_error = Some(message());
        }
    }
}

fn lock(recorder: &SharedRecorder) -> std::sync::MutexGuard<'_, Recorder> {
    recorder.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `config` to completion on the current tokio runtime (which needs I/O and time
/// enabled). Fails only if the target cannot be reached at the start.
pub async fn run(config: Config) -> Result<Report, LoadgenError> {
    config.validate()?;
    let mut senders = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        senders.push(Sender::connect(&config.target, config.protocol).await?);
    }
    match config.load {
        Load::OpenLoop { rate_per_second } => open_loop(config, senders, rate_per_second).await,
        Load::ClosedLoop { in_flight_per_connection } => {
            Ok(closed_loop(config, senders, in_flight_per_connection).await)
        }
    }
}

/// Runs `config` on a current-thread runtime of its own, in the calling thread: the way
/// to give the generator a core of its own (pin the thread) and keep it out of the
/// caller's runtime.
pub fn run_blocking(config: Config) -> Result<Report, LoadgenError> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(LoadgenError::Runtime)?;
    runtime.block_on(run(config))
}

async fn open_loop(config: Config, senders: Vec<Sender>, rate: f64) -> Result<Report, LoadgenError> {
    let schedule = Schedule::new(rate, config.warmup + config.duration, config.connections);
    // Requests before this index belong to the warm-up.
    let first_counted = Schedule::new(rate, config.warmup, 1).total();
    let start = Instant::now() + LEAD_IN;
    let plan = Arc::new(Plan {
        hard_deadline: start + config.warmup + config.duration + config.request_timeout,
        config,
        recorder: SharedRecorder::default(),
    });

    let mut workers = JoinSet::new();
    let mut queues = Vec::with_capacity(senders.len());
    for sender in senders {
        // Unbounded, but never longer than the schedule: requests wait here only while an
        // HTTP/1.1 connection is busy with an earlier one.
        let (queue, tickets) = mpsc::unbounded_channel();
        queues.push(queue);
        workers.spawn(connection_worker(sender, tickets, plan.clone()));
    }

    let mut timer = PreciseTimer::new().map_err(LoadgenError::Timer)?;
    let mut pacing_lag = LatencyHistogram::new();
    let mut next = 0;
    while next < schedule.total() {
        timer.sleep_until(start + schedule.offset(next)).await.map_err(LoadgenError::Timer)?;
        let woke = Instant::now();
        let due = schedule.due(next, woke.saturating_duration_since(start));
        for index in due.clone() {
            let ticket = Ticket { intended: start + schedule.offset(index), counted: index >= first_counted };
            if ticket.counted {
                pacing_lag.record(woke.saturating_duration_since(ticket.intended));
            }
            // A worker only goes away when the run is over.
            let _ = queues[schedule.connection(index)].send(ticket);
        }
        // Empty only if the timer returned a hair early (it rounds below a microsecond):
        // sleep again rather than skip a request.
        next = due.end;
    }
    drop(queues);
    while workers.join_next().await.is_some() {}

    let plan = Arc::into_inner(plan).expect("the workers have finished");
    let recorder = plan.recorder.lock().unwrap_or_else(|e| e.into_inner());
    let mut report = Report::from_recorder(&plan.config, &recorder, plan.config.duration);
    report.pacing_lag = Some(pacing_lag);
    report.send_delay = Some(recorder.send_delay.clone());
    Ok(report)
}

/// Sends the tickets of one connection: in order on HTTP/1.1, concurrently on HTTP/2.
async fn connection_worker(sender: Sender, mut tickets: mpsc::UnboundedReceiver<Ticket>, plan: Arc<Plan>) {
    let mut sender = Some(sender);
    let mut in_flight = JoinSet::new();
    while let Some(ticket) = tickets.recv().await {
        if Instant::now() >= plan.hard_deadline {
            if ticket.counted {
                lock(&plan.recorder).unsent += 1;
            }
            continue;
        }
        let usable = match sender.take().filter(|s| !s.is_closed()) {
            Some(usable) => usable,
            None => match reconnect(&plan).await {
                Some(fresh) => fresh,
                None => {
                    if ticket.counted {
                        lock(&plan.recorder).transport_errors += 1;
                    }
                    continue;
                }
            },
        };
        if let Some(mut stream) = usable.another_stream() {
            let plan = plan.clone();
            in_flight.spawn(async move { send_one(&mut stream, ticket, &plan).await });
            sender = Some(usable);
        } else {
            let mut usable = usable;
            if send_one(&mut usable, ticket, &plan).await == Connection::Reusable {
                sender = Some(usable);
            }
        }
    }
    while in_flight.join_next().await.is_some() {}
}

async fn reconnect(plan: &Plan) -> Option<Sender> {
    match Sender::connect(&plan.config.target, plan.config.protocol).await {
        Ok(sender) => Some(sender),
        Err(e) => {
            lock(&plan.recorder).note_error(|| e.to_string());
            None
        }
    }
}

/// Whether a connection can carry the next request after [`send_one`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Connection {
    Reusable,
    /// An HTTP/1.1 request timed out or failed and may still be in the connection.
    Discard,
}

/// Sends one request and records it.
async fn send_one(sender: &mut Sender, ticket: Ticket, plan: &Plan) -> Connection {
    let sent = Instant::now();
    let deadline = (sent + plan.config.request_timeout).min(plan.hard_deadline);
    let result =
        tokio::time::timeout_at(deadline.into(), sender.send(&plan.config.target, plan.config.protocol))
            .await;
    let done = Instant::now();
    // HTTP/2 streams fail alone; the connection's own failure shows in `is_closed`.
    let after_failure = if sender.is_multiplexed() { Connection::Reusable } else { Connection::Discard };
    if !ticket.counted {
        if matches!(result, Ok(Ok(_))) {
            lock(&plan.recorder).warmup_responses += 1;
            return Connection::Reusable;
        }
        return after_failure;
    }
    let mut recorder = lock(&plan.recorder);
    recorder.send_delay.record(sent.saturating_duration_since(ticket.intended));
    match result {
        Ok(Ok(answer)) => {
            recorder.latency.record(done - ticket.intended);
            recorder.service_time.record(done - sent);
            recorder.responses += 1;
            count_answer(&mut recorder, answer);
            Connection::Reusable
        }
        Ok(Err(e)) => {
            recorder.transport_errors += 1;
            recorder.note_error(|| format!("request to {} failed: {e}", plan.config.target.addr));
            after_failure
        }
        Err(_elapsed) => {
            // Counted in the latency with the time it had waited, a lower bound: leaving it
            // out would hide exactly the stall a benchmark must show.
            recorder.latency.record(done - ticket.intended);
            recorder.timeouts += 1;
            recorder.note_error(|| format!("no response from {} in time", plan.config.target.addr));
            after_failure
        }
    }
}

fn count_answer(recorder: &mut Recorder, answer: Answer) {
    match answer {
        Answer::Success => {}
        Answer::BadStatus(status) => {
            recorder.bad_status += 1;
            recorder.note_error(|| format!("the target answered HTTP {status}"));
        }
        Answer::BadGrpcStatus(status) => {
            recorder.bad_status += 1;
            recorder.note_error(|| match status {
                Some(code) => format!("the target answered grpc-status {code}"),
                None => "the target's gRPC response had no grpc-status".to_string(),
            });
        }
    }
}

async fn closed_loop(config: Config, senders: Vec<Sender>, in_flight_per_connection: usize) -> Report {
    let start = Instant::now();
    let measure_from = start + config.warmup;
    let end = measure_from + config.duration;
    let plan = Arc::new(Plan {
        hard_deadline: end + config.request_timeout,
        config,
        recorder: SharedRecorder::default(),
    });
    let mut loops = JoinSet::new();
    for sender in senders {
        let mut streams: Vec<Sender> =
            (1..in_flight_per_connection).filter_map(|_| sender.another_stream()).collect();
        streams.push(sender);
        for sender in streams {
            let plan = plan.clone();
            loops.spawn(async move {
                let mut sender = Some(sender);
                while Instant::now() < end {
                    let Some(mut usable) = sender.take().filter(|s| !s.is_closed()) else {
                        sender = reconnect(&plan).await;
                        if sender.is_none() {
                            // Do not spin on a target that refuses connections.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        continue;
                    };
                    let now = Instant::now();
                    let ticket = Ticket { intended: now, counted: now >= measure_from };
                    if send_one(&mut usable, ticket, &plan).await == Connection::Reusable {
                        sender = Some(usable);
                    }
                }
            });
        }
    }
    while loops.join_next().await.is_some() {}
    let plan = Arc::into_inner(plan).expect("the loops have finished");
    let recorder = plan.recorder.lock().unwrap_or_else(|e| e.into_inner());
    Report::from_recorder(&plan.config, &recorder, plan.config.duration)
}

// === impl Report ===

impl Report {
    fn from_recorder(config: &Config, recorder: &Recorder, window: Duration) -> Self {
        Report {
            load: config.load,
            protocol: config.protocol,
            connections: config.connections,
            window,
            responses: recorder.responses,
            warmup_responses: recorder.warmup_responses,
            bad_status: recorder.bad_status,
            transport_errors: recorder.transport_errors,
            timeouts: recorder.timeouts,
            unsent: recorder.unsent,
            first_error: recorder.first_error.clone(),
            latency: recorder.latency.clone(),
            service_time: recorder.service_time.clone(),
            pacing_lag: None,
            send_delay: None,
        }
    }
}
