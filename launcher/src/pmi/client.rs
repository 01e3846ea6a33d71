//! Blocking PMI clients over the launcher's socket (`PMI_FD`), every wait
//! bounded by a deadline so that a rank that never starts turns into an error
//! instead of a hang.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::time::{Duration, Instant};

use super::pmi1::{self, Pmi1Decoder, Pmi1Message};
use super::pmi2::{self, FullInit, Pmi2Decoder, Pmi2Message};
use super::PmiError;

/// Why a wait for the fence probably failed, for the timeout message.
const FENCE_HINT: &str = "some ranks never reached the exchange (a task that failed to start, crashed, or runs a program that does not bootstrap Lumen); see srun's or mpiexec's output for the tasks that exited";

/// The socket, owned, with deadline-bounded reads.
#[derive(Debug)]
struct PmiSocket {
    file: File,
    rank: u32,
    timeout: Duration,
}

impl PmiSocket {
    /// Takes ownership of descriptor `fd` (checked to be open) and marks it
    /// close-on-exec so that programs the rank starts do not inherit it.
    fn adopt(fd: RawFd, rank: u32, timeout: Duration) -> Result<Self, PmiError> {
        // SAFETY: F_GETFD only queries descriptor flags; an invalid fd gives -1.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if fd < 0 || flags < 0 {
            return Err(PmiError::BadFd {
                value: fd.to_string(),
            });
        }
        // SAFETY: setting FD_CLOEXEC on an open descriptor has no other effect.
        unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
        // SAFETY: the launcher handed this open descriptor to this process for
        // PMI alone; nothing else in Lumen uses it, so owning it here is sound.
        let file = unsafe { File::from_raw_fd(fd) };
        Ok(PmiSocket {
            file,
            rank,
            timeout,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), PmiError> {
        self.file.write_all(bytes).map_err(|source| PmiError::Io {
            op: "write",
            source,
        })
    }

    /// Reads what is there, waiting until `deadline`; `Ok(None)` on timeout.
    fn read_some(
        &mut self,
        deadline: Instant,
        waiting_for: &str,
    ) -> Result<Option<Vec<u8>>, PmiError> {
        use std::os::fd::AsRawFd;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut poll = libc::pollfd {
                fd: self.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let millis = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
            // SAFETY: `poll` points to one valid pollfd for the duration of the call.
            let ready = unsafe { libc::poll(&mut poll, 1, millis) };
            if ready < 0 {
                let error = std::io::Error::last_os_error();
                if error.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(PmiError::Io {
                    op: "poll",
                    source: error,
                });
            }
            if ready == 0 {
                continue;
            }
            let mut buffer = [0u8; 4096];
            match self.file.read(&mut buffer) {
                Ok(0) => {
                    return Err(PmiError::Closed {
                        rank: self.rank,
                        waiting_for: waiting_for.to_owned(),
                    })
                }
                Ok(n) => return Ok(Some(buffer[..n].to_vec())),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(PmiError::Io { op: "read", source }),
            }
        }
    }

    fn timed_out(&self, waiting_for: &str, hint: &'static str) -> PmiError {
        PmiError::TimedOut {
            rank: self.rank,
            waiting_for: waiting_for.to_owned(),
            seconds: self.timeout.as_secs(),
            hint,
        }
    }
}

/// Reads one PMI-1 line from `socket` (used by both protocols' init).
fn read_pmi1(
    socket: &mut PmiSocket,
    decoder: &mut Pmi1Decoder,
    waiting_for: &str,
    hint: &'static str,
) -> Result<Pmi1Message, PmiError> {
    let deadline = Instant::now() + socket.timeout;
    loop {
        if let Some(message) = decoder.next_message()? {
            return Ok(message);
        }
        match socket.read_some(deadline, waiting_for)? {
            Some(bytes) => decoder.push(&bytes),
            None => return Err(socket.timed_out(waiting_for, hint)),
        }
    }
}

/// A PMI-2 client (`srun --mpi=pmi2`).
#[derive(Debug)]
pub(crate) struct Pmi2Client {
    socket: PmiSocket,
    decoder: Pmi2Decoder,
    jobid: String,
    init: FullInit,
}

impl Pmi2Client {
    /// Adopts the socket `fd` and runs the init handshake and `fullinit` for
    /// rank `rank` of PMI job `jobid`. `timeout` bounds every later wait.
    pub(crate) fn connect(
        fd: RawFd,
        jobid: &str,
        rank: u32,
        timeout: Duration,
    ) -> Result<Self, PmiError> {
        let mut socket = PmiSocket::adopt(fd, rank, timeout)?;
        socket.write(pmi2::INIT_LINE.as_bytes())?;
        // The init reply must be read before anything else is written: Slurm
        // reads the init line with one bounded read.
        let reply = read_pmi1(
            &mut socket,
            &mut Pmi1Decoder::new(),
            "response_to_init",
            "the PMI server did not answer init; is PMI_FD really a PMI-2 socket?",
        )?;
        reply.expect("response_to_init", "init")?;
        if reply.get("pmi_version") != Some("2") {
            return Err(PmiError::UnexpectedReply {
                expected: "response_to_init pmi_version=2",
                got: format!("{reply:?}"),
            });
        }
        let mut client = Pmi2Client {
            socket,
            decoder: Pmi2Decoder::new(),
            jobid: jobid.to_owned(),
            init: FullInit { rank, size: 0 },
        };
        let reply = client.request(
            &pmi2::fullinit(jobid, rank)?,
            "fullinit-response",
            "the PMI server did not answer fullinit",
        )?;
        client.init = pmi2::parse_fullinit(&reply)?;
        Ok(client)
    }

    /// Rank and size as the server gave them.
    pub(crate) fn init(&self) -> FullInit {
        self.init
    }

    fn request(
        &mut self,
        frame: &[u8],
        waiting_for: &'static str,
        hint: &'static str,
    ) -> Result<Pmi2Message, PmiError> {
        self.socket.write(frame)?;
        let deadline = Instant::now() + self.socket.timeout;
        loop {
            if let Some(message) = self.decoder.next_message()? {
                return Ok(message);
            }
            match self.socket.read_some(deadline, waiting_for)? {
                Some(bytes) => self.decoder.push(&bytes),
                None => return Err(self.socket.timed_out(waiting_for, hint)),
            }
        }
    }

    /// `kvs-put`: publishes `key` at the next fence.
    pub(crate) fn put(&mut self, key: &str, value: &str) -> Result<(), PmiError> {
        let frame = pmi2::encode("kvs-put", &[("key", key), ("value", value)])?;
        self.request(
            &frame,
            "kvs-put-response",
            "the PMI server did not answer a put",
        )?
        .expect("kvs-put-response", "kvs-put")
    }

    /// `kvs-fence`: waits until every rank has fenced.
    pub(crate) fn fence(&mut self) -> Result<(), PmiError> {
        let frame = pmi2::encode("kvs-fence", &[])?;
        self.request(&frame, "kvs-fence-response", FENCE_HINT)?
            .expect("kvs-fence-response", "kvs-fence")
    }

    /// `kvs-get` of a key published before the last fence.
    pub(crate) fn get(&mut self, key: &str) -> Result<String, PmiError> {
        let jobid = self.jobid.clone();
        let frame = pmi2::encode(
            "kvs-get",
            &[("jobid", &jobid), ("srcid", "-1"), ("key", key)],
        )?;
        let reply = self.request(
            &frame,
            "kvs-get-response",
            "the PMI server did not answer a get",
        )?;
        reply.expect("kvs-get-response", "kvs-get")?;
        match (reply.get("found"), reply.get("value")) {
            (Some(found), Some(value)) if found.eq_ignore_ascii_case("TRUE") => {
                Ok(value.to_owned())
            }
            _ => Err(PmiError::NotFound {
                key: key.to_owned(),
            }),
        }
    }

    /// `finalize`: tells the server this rank is done with PMI.
    pub(crate) fn finalize(mut self) -> Result<(), PmiError> {
        let frame = pmi2::encode("finalize", &[])?;
        self.request(
            &frame,
            "finalize-response",
            "the PMI server did not answer finalize",
        )?
        .expect("finalize-response", "finalize")
    }
}

/// A PMI-1 client (MPICH Hydra's `mpiexec`, over `PMI_FD`).
#[derive(Debug)]
pub(crate) struct Pmi1Client {
    socket: PmiSocket,
    decoder: Pmi1Decoder,
    kvsname: String,
    max_value: usize,
}

impl Pmi1Client {
    /// Adopts `fd`, runs init, and asks for the limits and the KVS name.
    pub(crate) fn connect(fd: RawFd, rank: u32, timeout: Duration) -> Result<Self, PmiError> {
        let socket = PmiSocket::adopt(fd, rank, timeout)?;
        let mut client = Pmi1Client {
            socket,
            decoder: Pmi1Decoder::new(),
            kvsname: String::new(),
            max_value: pmi1::DEFAULT_MAX_VALUE,
        };
        client.socket.write(pmi1::INIT_LINE.as_bytes())?;
        client
            .read(
                "response_to_init",
                "the PMI server did not answer init; is PMI_FD really a PMI socket?",
            )?
            .expect("response_to_init", "init")?;
        let maxes = client.request(&pmi1::encode("get_maxes", &[])?, "maxes")?;
        maxes.expect("maxes", "get_maxes")?;
        if let Some(max) = maxes
            .get("vallen_max")
            .and_then(|v| v.parse::<usize>().ok())
        {
            client.max_value = max.clamp(16, pmi1::MAX_LINE - 128);
        }
        let name = client.request(&pmi1::encode("get_my_kvsname", &[])?, "my_kvsname")?;
        name.expect("my_kvsname", "get_my_kvsname")?;
        client.kvsname = name
            .get("kvsname")
            .ok_or_else(|| PmiError::Malformed {
                message: format!("{name:?}"),
                reason: "my_kvsname without kvsname",
            })?
            .to_owned();
        Ok(client)
    }

    /// Longest value the server takes.
    pub(crate) fn max_value(&self) -> usize {
        self.max_value
    }

    fn read(
        &mut self,
        waiting_for: &'static str,
        hint: &'static str,
    ) -> Result<Pmi1Message, PmiError> {
        read_pmi1(&mut self.socket, &mut self.decoder, waiting_for, hint)
    }

    fn request(&mut self, line: &str, waiting_for: &'static str) -> Result<Pmi1Message, PmiError> {
        self.socket.write(line.as_bytes())?;
        let hint = if waiting_for == "barrier_out" {
            FENCE_HINT
        } else {
            "the PMI server did not answer"
        };
        self.read(waiting_for, hint)
    }

    /// `put` into this job's KVS.
    pub(crate) fn put(&mut self, key: &str, value: &str) -> Result<(), PmiError> {
        let kvsname = self.kvsname.clone();
        let line = pmi1::encode(
            "put",
            &[("kvsname", &kvsname), ("key", key), ("value", value)],
        )?;
        self.request(&line, "put_result")?
            .expect("put_result", "put")
    }

    /// `barrier_in`/`barrier_out`: waits for every rank.
    pub(crate) fn barrier(&mut self) -> Result<(), PmiError> {
        self.request(&pmi1::encode("barrier_in", &[])?, "barrier_out")?
            .expect("barrier_out", "barrier_in")
    }

    /// `get` from this job's KVS.
    pub(crate) fn get(&mut self, key: &str) -> Result<String, PmiError> {
        let kvsname = self.kvsname.clone();
        let line = pmi1::encode("get", &[("kvsname", &kvsname), ("key", key)])?;
        let reply = self.request(&line, "get_result")?;
        if reply.cmd == "get_result" && reply.get("rc").is_some_and(|rc| rc != "0") {
            return Err(PmiError::NotFound {
                key: key.to_owned(),
            });
        }
        reply.expect("get_result", "get")?;
        reply
            .get("value")
            .map(str::to_owned)
            .ok_or_else(|| PmiError::NotFound {
                key: key.to_owned(),
            })
    }

    /// `finalize`, answered by `finalize_ack`.
    pub(crate) fn finalize(mut self) -> Result<(), PmiError> {
        self.request(&pmi1::encode("finalize", &[])?, "finalize_ack")?
            .expect("finalize_ack", "finalize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;
    use std::os::unix::net::UnixStream;

    /// A PMI-2 frame: length prefix and body.
    fn f(body: &str) -> Vec<u8> {
        format!("{:<6}{body}", body.len()).into_bytes()
    }

    /// A scripted PMI server on the other end of a socketpair.
    fn serve(
        mut server: UnixStream,
        script: Vec<(&'static str, Vec<u8>)>,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let mut received = Vec::new();
            for (expect, reply) in script {
                while !String::from_utf8_lossy(&received).contains(expect) {
                    let mut buffer = [0u8; 1024];
                    let n = server.read(&mut buffer).unwrap();
                    assert!(n > 0, "client hung up before {expect:?}");
                    received.extend_from_slice(&buffer[..n]);
                }
                received.clear();
                server.write_all(&reply).unwrap();
            }
        })
    }

    #[test]
    fn pmi2_session_against_a_scripted_server() {
        let (client_end, server_end) = UnixStream::pair().unwrap();
        let server = serve(
            server_end,
            vec![
                (
                    "cmd=init pmi_version=2 pmi_subversion=0\n",
                    b"cmd=response_to_init rc=0 pmi_version=2 pmi_subversion=0\n".to_vec(),
                ),
                (
                    "threaded=FALSE;",
                    f("cmd=fullinit-response;rc=0;pmi-version=2;rank=1;size=2;appnum=-1;"),
                ),
                ("value=abc;", f("cmd=kvs-put-response;rc=0;")),
                ("cmd=kvs-fence;", f("cmd=kvs-fence-response;rc=0;")),
                (
                    "key=k1;",
                    f("cmd=kvs-get-response;rc=0;found=TRUE;value=abc;"),
                ),
                ("key=none;", f("cmd=kvs-get-response;rc=0;found=FALSE;")),
                ("cmd=finalize;", f("cmd=finalize-response;rc=0;")),
            ],
        );
        let fd = client_end.into_raw_fd();
        let mut client = Pmi2Client::connect(fd, "5.0", 1, Duration::from_secs(5)).unwrap();
        assert_eq!(client.init(), FullInit { rank: 1, size: 2 });
        client.put("k1", "abc").unwrap();
        client.fence().unwrap();
        assert_eq!(client.get("k1").unwrap(), "abc");
        assert!(matches!(client.get("none"), Err(PmiError::NotFound { .. })));
        client.finalize().unwrap();
        server.join().unwrap();
    }

    #[test]
    fn a_silent_server_times_out_and_a_closed_one_is_reported() {
        let (client_end, server_end) = UnixStream::pair().unwrap();
        let error =
            Pmi2Client::connect(client_end.into_raw_fd(), "1", 0, Duration::from_millis(200))
                .unwrap_err();
        assert!(matches!(error, PmiError::TimedOut { .. }), "{error}");
        drop(server_end);

        let (client_end, server_end) = UnixStream::pair().unwrap();
        drop(server_end);
        let error =
            Pmi1Client::connect(client_end.into_raw_fd(), 0, Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(error, PmiError::Closed { .. } | PmiError::Io { .. }),
            "{error}"
        );
        assert!(matches!(
            Pmi2Client::connect(-1, "1", 0, Duration::from_secs(1)),
            Err(PmiError::BadFd { .. })
        ));
    }

    #[test]
    fn pmi1_session_against_a_scripted_server() {
        let (client_end, server_end) = UnixStream::pair().unwrap();
        let server = serve(
            server_end,
            vec![
                (
                    "cmd=init pmi_version=1 pmi_subversion=1\n",
                    b"cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0\n".to_vec(),
                ),
                (
                    "cmd=get_maxes\n",
                    b"cmd=maxes kvsname_max=256 keylen_max=64 vallen_max=1024\n".to_vec(),
                ),
                (
                    "cmd=get_my_kvsname\n",
                    b"cmd=my_kvsname kvsname=kvs_9_0\n".to_vec(),
                ),
                (
                    "cmd=put kvsname=kvs_9_0 key=a value=0f\n",
                    b"cmd=put_result rc=0\n".to_vec(),
                ),
                ("cmd=barrier_in\n", b"cmd=barrier_out\n".to_vec()),
                (
                    "cmd=get kvsname=kvs_9_0 key=a\n",
                    b"cmd=get_result rc=0 value=0f\n".to_vec(),
                ),
                (
                    "cmd=get kvsname=kvs_9_0 key=b\n",
                    b"cmd=get_result rc=-1 msg=key_b_not_found\n".to_vec(),
                ),
                ("cmd=finalize\n", b"cmd=finalize_ack\n".to_vec()),
            ],
        );
        let mut client =
            Pmi1Client::connect(client_end.into_raw_fd(), 0, Duration::from_secs(5)).unwrap();
        assert_eq!(client.max_value(), 1024 - 128);
        client.put("a", "0f").unwrap();
        client.barrier().unwrap();
        assert_eq!(client.get("a").unwrap(), "0f");
        assert!(matches!(client.get("b"), Err(PmiError::NotFound { .. })));
        client.finalize().unwrap();
        server.join().unwrap();
    }
}
