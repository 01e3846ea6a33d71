//! What a rank uses to reach the store: blocking calls with deadlines.
//!
//! Every request carries an id that its reply echoes. A call that times out
//! leaves its request pending at the server; a late reply to it is recognised
//! by its id and dropped, so the connection stays usable, but a timed-out
//! barrier still counts as entered at the server: treat a timeout as fatal
//! for the bootstrap.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use lumen_transport::auth::JobSecret;
use lumen_transport::frame::{Frame, FrameDecoder, FrameKind};
use lumen_transport::handshake::{self, HandshakeError};

use super::{
    derived_job_id, derived_port, port_sequence, RendezvousError, Seconds, MAX_FRAME,
    OBSERVER_RANK, SERVER_RANK,
};
use crate::wire::{Reply, ReplyFrame, Request, RequestFrame, StoreStatus};

/// How long one connection attempt may take before the next is tried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest pause between rounds of connection attempts while the server is
/// not up. The pause starts at [`FIRST_RETRY_PAUSE`] and doubles: under
/// `srun` every rank starts at once and the hosting rank is usually a few
/// milliseconds from listening, so a fixed 50 ms pause would add 50 ms to
/// most launches.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// First pause between connection rounds.
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(2);
/// How long a status query after a timeout may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// Room for the message around a Put's key and value.
const PUT_OVERHEAD: usize = 256;

/// A rank's connection to the rendezvous store.
///
/// Dropping the client without [`finalize`](Self::finalize) tells the server
/// that this rank crashed: every other rank waiting in a barrier then fails.
/// See [`RendezvousServer`](super::RendezvousServer) for an example.
#[derive(Debug)]
pub struct RendezvousClient {
    stream: TcpStream,
    decoder: FrameDecoder,
    ready: VecDeque<Frame>,
    server: SocketAddr,
    rank: u32,
    size: u32,
    next_id: u64,
    next_epoch: u64,
    timeout: Duration,
}

/// Why one connection attempt did not give a client.
enum AttemptError {
    /// Nothing answered, or the connection broke: try again later.
    Unreachable(String),
    /// Something answered that is not this job's store.
    OtherServer(String),
    /// Give up: the error is final.
    Fatal(RendezvousError),
}

impl RendezvousClient {
    /// Connects rank `rank` of job `job_id` to the store at `addr`, retrying
    /// until the server is up or `timeout` has passed. `timeout` also bounds
    /// [`put`](Self::put), [`status`](Self::status) and
    /// [`finalize`](Self::finalize).
    pub fn connect(
        addr: SocketAddr,
        job_id: &str,
        rank: u32,
        secret: &JobSecret,
        timeout: Duration,
    ) -> Result<RendezvousClient, RendezvousError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut pause = FIRST_RETRY_PAUSE;
        loop {
            let last_error = match attempt(addr, job_id, rank, secret, deadline, timeout) {
                Ok(client) => return Ok(client),
                Err(AttemptError::Fatal(error)) => return Err(error),
                Err(AttemptError::OtherServer(reason)) => {
                    return Err(RendezvousError::Refused { rank, reason })
                }
                Err(AttemptError::Unreachable(error)) => error,
            };
            if Instant::now() + RETRY_PAUSE >= deadline {
                return Err(RendezvousError::Unreachable {
                    rank,
                    target: addr.to_string(),
                    waited: Seconds(timeout),
                    last_error,
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(RETRY_PAUSE);
        }
    }

    /// Connects to the store of a job step whose server used
    /// [`RendezvousServer::bind_derived`](super::RendezvousServer::bind_derived)
    /// on `ip`: walks the derived ports, skipping servers of other jobs, until
    /// its own answers or `timeout` has passed.
    pub(crate) fn connect_derived(
        ip: IpAddr,
        job_id: &str,
        step_id: &str,
        rank: u32,
        secret: &JobSecret,
        timeout: Duration,
    ) -> Result<RendezvousClient, RendezvousError> {
        let base = derived_port(job_id, step_id);
        let job = derived_job_id(job_id, step_id);
        Self::connect_from_port(ip, base, &job, rank, secret, timeout)
    }

    /// Like `connect_derived` with an explicit first
    /// port and the handshake job id as given (the test hook matching
    /// [`RendezvousServer::bind_from_port`](super::RendezvousServer::bind_from_port)).
    pub fn connect_from_port(
        ip: IpAddr,
        base_port: u16,
        job_id: &str,
        rank: u32,
        secret: &JobSecret,
        timeout: Duration,
    ) -> Result<RendezvousClient, RendezvousError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut last_error = String::from("no port tried");
        let mut pause = FIRST_RETRY_PAUSE;
        loop {
            for port in port_sequence(base_port) {
                let addr = SocketAddr::new(ip, port);
                match attempt(addr, job_id, rank, secret, deadline, timeout) {
                    Ok(client) => return Ok(client),
                    Err(AttemptError::Fatal(error)) => return Err(error),
                    Err(AttemptError::OtherServer(error) | AttemptError::Unreachable(error)) => {
                        last_error = error;
                    }
                }
                if Instant::now() >= deadline {
                    break;
                }
            }
            if Instant::now() + RETRY_PAUSE >= deadline {
                let last = port_sequence(base_port).last().unwrap_or(base_port);
                return Err(RendezvousError::Unreachable {
                    rank,
                    target: format!("{ip} ports {base_port}..={last}"),
                    waited: Seconds(timeout),
                    last_error,
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(RETRY_PAUSE);
        }
    }

    /// Connects to the store at `addr` as an observer ([`OBSERVER_RANK`]):
    /// a tool such as `lumen status` that reads keys the ranks put
    /// ([`get`](Self::get) answers at once: the value, or an error when no
    /// rank put it) and is not one of the job's ranks. The handshake still
    /// proves knowledge of the job's secret; a store of another job, or the
    /// wrong secret, refuses it.
    pub fn observe(
        addr: SocketAddr,
        job_id: &str,
        secret: &JobSecret,
        timeout: Duration,
    ) -> Result<RendezvousClient, RendezvousError> {
        Self::connect(addr, job_id, OBSERVER_RANK, secret, timeout)
    }

    /// [`observe`](Self::observe) for the store of a job step that derived
    /// its address (plain `srun`: hosted on the step's first node, whose
    /// address is `ip`).
    pub fn observe_derived(
        ip: IpAddr,
        job_id: &str,
        step_id: &str,
        secret: &JobSecret,
        timeout: Duration,
    ) -> Result<RendezvousClient, RendezvousError> {
        Self::connect_derived(ip, job_id, step_id, OBSERVER_RANK, secret, timeout)
    }

    /// This client's rank.
    pub fn rank(&self) -> u32 {
        self.rank
    }

    /// Ranks in the job (as the server says).
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The server's address.
    pub fn server_addr(&self) -> SocketAddr {
        self.server
    }

    /// Stores `value` under `key`. Each key is written once; writing it again
    /// with the same value is harmless, with another value an error.
    pub fn put(&mut self, key: &str, value: &[u8]) -> Result<(), RendezvousError> {
        let started = Instant::now();
        self.put_until(key, value, started, started + self.timeout)
    }

    /// Fetches the value of `key`, waiting up to `timeout` for some rank to
    /// put it.
    pub fn get(&mut self, key: &str, timeout: Duration) -> Result<Vec<u8>, RendezvousError> {
        let started = Instant::now();
        self.get_until(key, started, started + timeout)
    }

    /// Waits until every rank of the job has entered this barrier (the
    /// ranks' n-th barrier calls meet), or `timeout` passes.
    pub fn barrier(&mut self, timeout: Duration) -> Result<(), RendezvousError> {
        let started = Instant::now();
        self.barrier_until(started, started + timeout)
    }

    /// Every rank contributes `value`; returns all contributions indexed by
    /// rank. Puts `"{name}/{rank}"`, then fetches every rank's key with one
    /// `Gather` (the store answers once all are there; a table larger than
    /// a frame takes a few), all within `timeout`.
    pub fn allgather(
        &mut self,
        name: &str,
        value: &[u8],
        timeout: Duration,
    ) -> Result<Vec<Vec<u8>>, RendezvousError> {
        let started = Instant::now();
        let deadline = started + timeout;
        self.put_until(&format!("{name}/{}", self.rank), value, started, deadline)?;
        // One request for the whole table (more only when it exceeds a
        // frame): a get per rank made start-up N² round trips to the store.
        let mut table = Vec::with_capacity(self.size as usize);
        while table.len() < self.size as usize {
            let from = table.len() as u32;
            let request = Request::Gather {
                prefix: name.to_string(),
                from,
            };
            match self.exchange(request, deadline)? {
                Some(Reply::Values { from: got, values })
                    if got == from
                        && !values.is_empty()
                        && table.len() + values.len() <= self.size as usize =>
                {
                    table.extend(values)
                }
                Some(other) => return Err(self.unexpected("gather", &other)),
                None => {
                    return Err(self.timed_out(
                        deadline - started,
                        format!("for the values of {name:?} from every rank"),
                        None,
                    ))
                }
            }
        }
        Ok(table)
    }

    /// Who is connected, gone and waiting in barriers.
    pub fn status(&mut self) -> Result<StoreStatus, RendezvousError> {
        let started = Instant::now();
        match self.exchange(Request::Status, started + self.timeout)? {
            Some(Reply::Status(status)) => Ok(status),
            Some(other) => Err(self.unexpected("status", &other)),
            None => Err(RendezvousError::TimedOut {
                rank: self.rank,
                waited: Seconds(self.timeout),
                during: "for a status report".into(),
                missing: Vec::new(),
                detail: "the rendezvous server did not answer".into(),
            }),
        }
    }

    /// Tells the server this rank is done, then closes the connection. After
    /// this, the rank's exit is not a failure for the others.
    pub fn finalize(mut self) -> Result<(), RendezvousError> {
        let started = Instant::now();
        match self.exchange(Request::Finalize, started + self.timeout)? {
            Some(Reply::Done) => Ok(()),
            Some(other) => Err(self.unexpected("finalize", &other)),
            None => Err(self.timed_out(self.timeout, "to finalize".into(), None)),
        }
    }

    fn put_until(
        &mut self,
        key: &str,
        value: &[u8],
        started: Instant,
        deadline: Instant,
    ) -> Result<(), RendezvousError> {
        let len = key.len() + value.len();
        if len + PUT_OVERHEAD > MAX_FRAME as usize {
            return Err(RendezvousError::TooLarge {
                rank: self.rank,
                key: key.to_string(),
                len,
            });
        }
        let request = Request::Put {
            key: key.to_string(),
            value: value.to_vec(),
        };
        match self.exchange(request, deadline)? {
            Some(Reply::Done) => Ok(()),
            Some(other) => Err(self.unexpected("put", &other)),
            None => Err(self.timed_out(deadline - started, format!("to store key {key:?}"), None)),
        }
    }

    fn get_until(
        &mut self,
        key: &str,
        started: Instant,
        deadline: Instant,
    ) -> Result<Vec<u8>, RendezvousError> {
        let request = Request::Get {
            key: key.to_string(),
        };
        match self.exchange(request, deadline)? {
            Some(Reply::Value { value, .. }) => Ok(value),
            Some(other) => Err(self.unexpected("get", &other)),
            None => Err(self.timed_out(deadline - started, format!("for key {key:?}"), None)),
        }
    }

    fn barrier_until(
        &mut self,
        started: Instant,
        deadline: Instant,
    ) -> Result<(), RendezvousError> {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        match self.exchange(Request::Barrier { epoch }, deadline)? {
            Some(Reply::BarrierDone { epoch: done }) if done == epoch => Ok(()),
            Some(other) => Err(self.unexpected("barrier", &other)),
            None => Err(self.timed_out(
                deadline - started,
                format!("in barrier {epoch}"),
                Some(epoch),
            )),
        }
    }

    /// Sends `request` and waits for its reply; `None` when `deadline` passed.
    fn exchange(
        &mut self,
        request: Request,
        deadline: Instant,
    ) -> Result<Option<Reply>, RendezvousError> {
        let id = self.next_id;
        self.next_id += 1;
        let payload = RequestFrame { id, request }.encode();
        self.stream
            .set_write_timeout(Some(self.timeout.max(Duration::from_millis(1))))
            .and_then(|()| {
                handshake::write_control(&mut self.stream, FrameKind::Store, self.rank, &payload)
            })
            .map_err(|source| self.io_error(source))?;
        loop {
            let Some(frame) = self.next_frame(deadline)? else {
                return Ok(None);
            };
            let reply = self.decode(&frame)?;
            match reply.reply {
                Reply::Error { reason } if reply.id == id || reply.id == 0 => {
                    return Err(RendezvousError::Failed {
                        rank: self.rank,
                        reason,
                    })
                }
                answer if reply.id == id => return Ok(Some(answer)),
                // A late answer to a request that timed out earlier.
                _ => continue,
            }
        }
    }

    /// The next frame from the server; `None` when `deadline` passed first.
    fn next_frame(&mut self, deadline: Instant) -> Result<Option<Frame>, RendezvousError> {
        let mut buffer = [0u8; 64 * 1024];
        loop {
            if let Some(frame) = self.ready.pop_front() {
                return Ok(Some(frame));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let wait = (deadline - now).max(Duration::from_millis(1));
            self.stream
                .set_read_timeout(Some(wait))
                .map_err(|source| self.io_error(source))?;
            match self.stream.read(&mut buffer) {
                Ok(0) => {
                    let closed = std::io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    );
                    return Err(self.io_error(closed));
                }
                Ok(read) => {
                    let ready = &mut self.ready;
                    self.decoder
                        .feed(&buffer[..read], |frame| ready.push_back(frame))
                        .map_err(|error| RendezvousError::Protocol {
                            rank: self.rank,
                            detail: error.to_string(),
                        })?;
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(source) => return Err(self.io_error(source)),
            }
        }
    }

    fn decode(&self, frame: &Frame) -> Result<ReplyFrame, RendezvousError> {
        if frame.header.kind != FrameKind::Store {
            return Err(RendezvousError::Protocol {
                rank: self.rank,
                detail: format!("a {:?} frame instead of a store reply", frame.header.kind),
            });
        }
        ReplyFrame::decode(&frame.payload).map_err(|error| RendezvousError::Protocol {
            rank: self.rank,
            detail: error.to_string(),
        })
    }

    /// The error for a wait that ran out of time, naming who is missing (as
    /// the server reports it).
    fn timed_out(
        &mut self,
        timeout: Duration,
        during: String,
        barrier: Option<u64>,
    ) -> RendezvousError {
        let waited = Seconds(timeout);
        let (missing, detail) =
            match self.exchange(Request::Status, Instant::now() + STATUS_TIMEOUT) {
                Ok(Some(Reply::Status(status))) => describe_missing(&status, barrier),
                _ => (
                    Vec::new(),
                    "the rendezvous server did not answer a status query either".to_string(),
                ),
            };
        RendezvousError::TimedOut {
            rank: self.rank,
            waited,
            during,
            missing,
            detail,
        }
    }

    fn unexpected(&self, asked: &'static str, got: &Reply) -> RendezvousError {
        RendezvousError::UnexpectedReply {
            rank: self.rank,
            asked,
            got: format!("{got:?}"),
        }
    }

    fn io_error(&self, source: std::io::Error) -> RendezvousError {
        RendezvousError::Io {
            rank: self.rank,
            addr: self.server,
            source,
        }
    }
}

/// Which ranks held things up, and the sentence saying so.
fn describe_missing(status: &StoreStatus, barrier: Option<u64>) -> (Vec<u32>, String) {
    let size = status.size;
    let never = status.never_arrived();
    if !never.is_empty() {
        let detail = format!("{} never arrived (of {size})", ranks_phrase(&never));
        return (never, detail);
    }
    let gone = if status.departed.is_empty() {
        String::new()
    } else {
        format!(
            "; {} left without finalizing",
            ranks_phrase(&status.departed)
        )
    };
    match barrier {
        Some(epoch) => {
            let missing = status.missing_from_barrier(epoch);
            let detail = format!(
                "all {size} ranks arrived, but {} never entered barrier {epoch}{gone}",
                ranks_phrase(&missing)
            );
            (missing, detail)
        }
        None => (
            Vec::new(),
            format!("all {size} ranks arrived, but no rank put the key{gone}"),
        ),
    }
}

/// "rank 2" or "ranks [2, 5]".
fn ranks_phrase(ranks: &[u32]) -> String {
    match ranks {
        [one] => format!("rank {one}"),
        many => format!("ranks {many:?}"),
    }
}

/// One try at connecting, authenticating and being welcomed.
fn attempt(
    addr: SocketAddr,
    job_id: &str,
    rank: u32,
    secret: &JobSecret,
    deadline: Instant,
    timeout: Duration,
) -> Result<RendezvousClient, AttemptError> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let per_try = remaining
        .min(ATTEMPT_TIMEOUT)
        .max(Duration::from_millis(10));
    let mut stream = TcpStream::connect_timeout(&addr, per_try)
        .map_err(|error| AttemptError::Unreachable(format!("{addr}: {error}")))?;
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(per_try))
        .and_then(|()| stream.set_write_timeout(Some(per_try)))
        .map_err(|error| AttemptError::Unreachable(format!("{addr}: {error}")))?;
    match handshake::initiate(&mut stream, job_id, rank, secret) {
        Ok(()) => {}
        Err(HandshakeError::Io(error)) => {
            return Err(AttemptError::Unreachable(format!("{addr}: {error}")))
        }
        Err(HandshakeError::Refused(reason)) => {
            return Err(AttemptError::OtherServer(format!(
                "{addr} refused: {reason}"
            )))
        }
        Err(source @ HandshakeError::Auth(_)) => {
            return Err(AttemptError::Fatal(RendezvousError::Authentication {
                rank,
                addr,
                source,
            }))
        }
        Err(error) => {
            return Err(AttemptError::OtherServer(format!(
                "{addr} is not a Lumen rendezvous: {error}"
            )))
        }
    }
    let mut client = RendezvousClient {
        stream,
        decoder: FrameDecoder::new(MAX_FRAME),
        ready: VecDeque::new(),
        server: addr,
        rank,
        size: 0,
        next_id: 1,
        next_epoch: 0,
        timeout,
    };
    let frame = match client.next_frame(Instant::now() + per_try) {
        Ok(Some(frame)) => frame,
        Ok(None) => {
            return Err(AttemptError::Unreachable(format!(
                "{addr} did not welcome rank {rank}"
            )))
        }
        Err(error) => return Err(AttemptError::Unreachable(error.to_string())),
    };
    if frame.header.src != SERVER_RANK {
        return Err(AttemptError::OtherServer(format!(
            "{addr} is not a rendezvous server"
        )));
    }
    match client.decode(&frame).map_err(AttemptError::Fatal)?.reply {
        Reply::Welcome { size } => {
            client.size = size;
            Ok(client)
        }
        Reply::Error { reason } => Err(AttemptError::Fatal(RendezvousError::Refused {
            rank,
            reason,
        })),
        other => Err(AttemptError::Fatal(client.unexpected("welcome", &other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::PendingBarrier;

    #[test]
    fn missing_ranks_are_named() {
        let status = StoreStatus {
            size: 6,
            connected: vec![0, 1, 3, 4],
            ..StoreStatus::default()
        };
        assert_eq!(
            describe_missing(&status, Some(0)),
            (vec![2, 5], "ranks [2, 5] never arrived (of 6)".to_string())
        );
        let status = StoreStatus {
            size: 3,
            connected: vec![0, 1, 2],
            barriers: vec![PendingBarrier {
                epoch: 1,
                ranks: vec![0, 2],
            }],
            ..StoreStatus::default()
        };
        assert_eq!(
            describe_missing(&status, Some(1)),
            (
                vec![1],
                "all 3 ranks arrived, but rank 1 never entered barrier 1".to_string()
            )
        );
        assert!(describe_missing(&status, None)
            .1
            .contains("no rank put the key"));
    }
}
