//! The rendezvous store over real TCP on 127.0.0.1: many ranks, wrong
//! secrets, crashes, timeouts, and two jobs sharing a derived port sequence.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use lumen_launcher::rendezvous::{
    RendezvousClient, RendezvousError, RendezvousServer, DERIVED_PORTS,
};
use lumen_transport::auth::JobSecret;
use lumen_transport::frame::{encode_frame, FrameHeader, FrameKind};
use lumen_transport::handshake;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const LONG: Duration = Duration::from_secs(30);

fn any_port() -> SocketAddr {
    SocketAddr::new(LOCALHOST, 0)
}

fn server(job: &str, size: u32, secret: &JobSecret) -> RendezvousServer {
    match RendezvousServer::bind(any_port(), job, size, secret.clone()) {
        Ok(server) => server,
        Err(error) => panic!("bind: {error}"),
    }
}

fn client(server: &RendezvousServer, job: &str, rank: u32, secret: &JobSecret) -> RendezvousClient {
    match RendezvousClient::connect(server.local_addr(), job, rank, secret, LONG) {
        Ok(client) => client,
        Err(error) => panic!("rank {rank}: {error}"),
    }
}

/// Waits until `check` holds for the server's status.
fn wait_for(server: &RendezvousServer, check: impl Fn(&lumen_launcher::wire::StoreStatus) -> bool) {
    let deadline = Instant::now() + LONG;
    while !check(&server.status()) {
        assert!(
            Instant::now() < deadline,
            "condition never held: {:?}",
            server.status()
        );
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn eight_ranks_allgather_and_barrier() {
    let secret = JobSecret::random();
    let server = server("job-8", 8, &secret);
    let addr = server.local_addr();
    let threads: Vec<_> = (0..8u32)
        .map(|rank| {
            let secret = secret.clone();
            thread::spawn(move || -> Result<Vec<Vec<u8>>, RendezvousError> {
                let mut client = RendezvousClient::connect(addr, "job-8", rank, &secret, LONG)?;
                assert_eq!(client.size(), 8);
                let endpoint = format!("tcp://10.0.0.{rank}:{}", 5000 + rank);
                let table = client.allgather("endpoint", endpoint.as_bytes(), LONG)?;
                client.barrier(LONG)?;
                client.put(&format!("extra/{rank}"), b"x")?;
                client.barrier(LONG)?;
                let next = client.get(&format!("extra/{}", (rank + 1) % 8), LONG)?;
                assert_eq!(next, b"x");
                client.finalize()?;
                Ok(table)
            })
        })
        .collect();
    for (rank, thread) in threads.into_iter().enumerate() {
        let table = match thread.join() {
            Ok(Ok(table)) => table,
            Ok(Err(error)) => panic!("rank {rank}: {error}"),
            Err(_) => panic!("rank {rank} panicked"),
        };
        let expected: Vec<Vec<u8>> = (0..8)
            .map(|r| format!("tcp://10.0.0.{r}:{}", 5000 + r).into_bytes())
            .collect();
        assert_eq!(table, expected, "rank {rank}");
    }
    wait_for(&server, |status| status.finalized.len() == 8);
    assert!(server.status().departed.is_empty());
}

#[test]
fn wrong_secret_or_job_is_refused() {
    let secret = JobSecret::random();
    let server = server("job-s", 2, &secret);
    let wrong = JobSecret::random();
    let error = RendezvousClient::connect(server.local_addr(), "job-s", 0, &wrong, LONG)
        .err()
        .map(|error| error.to_string());
    let error = error.unwrap_or_default();
    assert!(
        error.contains("could not authenticate") && error.contains("LUMEN_JOB_SECRET"),
        "{error}"
    );
    let error = RendezvousClient::connect(server.local_addr(), "job-other", 0, &secret, LONG)
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
    assert!(error.contains("belongs to job job-s"), "{error}");
    // Neither attempt registered a rank.
    assert!(server.status().connected.is_empty());
}

#[test]
fn duplicate_rank_is_refused_and_the_first_keeps_working() {
    let secret = JobSecret::random();
    let server = server("job-d", 2, &secret);
    let mut first = client(&server, "job-d", 1, &secret);
    let second = RendezvousClient::connect(server.local_addr(), "job-d", 1, &secret, LONG);
    match second {
        Err(RendezvousError::Refused { rank: 1, reason }) => {
            assert!(reason.contains("already connected"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let out_of_range = RendezvousClient::connect(server.local_addr(), "job-d", 2, &secret, LONG);
    assert!(matches!(
        out_of_range,
        Err(RendezvousError::Refused { rank: 2, .. })
    ));
    assert!(first.put("k", b"v").is_ok());
    assert_eq!(server.status().connected, vec![1]);
}

#[test]
fn crash_mid_barrier_fails_the_others_fast() {
    let secret = JobSecret::random();
    let server = server("job-c", 4, &secret);
    let addr = server.local_addr();
    let waiters: Vec<_> = (0..3u32)
        .map(|rank| {
            let secret = secret.clone();
            thread::spawn(move || {
                let mut client = RendezvousClient::connect(addr, "job-c", rank, &secret, LONG)?;
                let started = Instant::now();
                client.barrier(LONG).map(|()| started.elapsed())?;
                Ok::<Duration, RendezvousError>(started.elapsed())
            })
        })
        .collect();
    let crasher = client(&server, "job-c", 3, &secret);
    wait_for(&server, |status| {
        status
            .barriers
            .first()
            .is_some_and(|barrier| barrier.ranks.len() == 3)
    });
    let crashed_at = Instant::now();
    drop(crasher);
    for (rank, waiter) in waiters.into_iter().enumerate() {
        match waiter.join() {
            Ok(Err(RendezvousError::Failed {
                rank: failed,
                reason,
            })) => {
                assert_eq!(failed as usize, rank);
                assert_eq!(
                    reason,
                    "rank 3 left the rendezvous before the barrier: it probably crashed; see its output"
                );
            }
            Ok(other) => panic!("rank {rank}: expected a failure, got {other:?}"),
            Err(_) => panic!("rank {rank} panicked"),
        }
    }
    assert!(
        crashed_at.elapsed() < Duration::from_secs(5),
        "{:?}",
        crashed_at.elapsed()
    );
    // The waiters dropped their clients too; rank 3 was the first to go.
    assert!(server.status().departed.contains(&3));
}

#[test]
fn timeout_names_the_ranks_that_never_arrived() {
    let secret = JobSecret::random();
    let server = server("job-t", 6, &secret);
    let addr = server.local_addr();
    let short = Duration::from_millis(500);
    let waiters: Vec<_> = [0u32, 1, 3, 4]
        .into_iter()
        .map(|rank| {
            let secret = secret.clone();
            thread::spawn(move || {
                let mut client = RendezvousClient::connect(addr, "job-t", rank, &secret, LONG)?;
                let result = client.barrier(short);
                // Keep the connection open: a rank that gives up and leaves
                // would make the others fail with its rank instead.
                Ok::<_, RendezvousError>((client, result))
            })
        })
        .collect();
    let mut clients = Vec::new();
    for waiter in waiters {
        let (client, result) = match waiter.join() {
            Ok(Ok(done)) => done,
            other => panic!("{other:?}"),
        };
        clients.push(client);
        match result {
            Err(error @ RendezvousError::TimedOut { .. }) => {
                let text = error.to_string();
                assert!(
                    text.starts_with(
                        "rendezvous timed out after 0.5 s: ranks [2, 5] never arrived (of 6)"
                    ),
                    "{text}"
                );
                assert!(
                    matches!(error, RendezvousError::TimedOut { missing, .. } if missing == vec![2, 5])
                );
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }
}

#[test]
fn get_times_out_and_the_connection_stays_usable() {
    let secret = JobSecret::random();
    let server = server("job-g", 2, &secret);
    let mut zero = client(&server, "job-g", 0, &secret);
    let mut one = client(&server, "job-g", 1, &secret);
    let error = zero
        .get("late", Duration::from_millis(200))
        .err()
        .map(|e| e.to_string());
    let error = error.unwrap_or_default();
    assert!(
        error.contains("all 2 ranks arrived, but no rank put the key"),
        "{error}"
    );
    // The late answer to the timed-out get must not be taken for the next reply.
    one.put("late", b"1").ok();
    one.put("other", b"2").ok();
    assert_eq!(zero.get("other", LONG).ok(), Some(b"2".to_vec()));
    assert_eq!(zero.status().map(|s| s.connected).ok(), Some(vec![0, 1]));
}

#[test]
fn client_waits_for_a_server_that_starts_late() {
    let port = {
        let probe = TcpListener::bind(any_port()).expect("ephemeral port");
        probe.local_addr().expect("address").port()
    };
    let addr = SocketAddr::new(LOCALHOST, port);
    let secret = JobSecret::random();
    let for_client = secret.clone();
    let waiter = thread::spawn(move || {
        let mut client = RendezvousClient::connect(addr, "job-late", 0, &for_client, LONG)?;
        client.allgather("x", b"y", LONG)
    });
    thread::sleep(Duration::from_millis(300));
    let _server =
        RendezvousServer::bind(addr, "job-late", 1, secret).expect("bind the reserved port");
    match waiter.join() {
        Ok(Ok(table)) => assert_eq!(table, vec![b"y".to_vec()]),
        other => panic!("{other:?}"),
    }
    let nobody = RendezvousClient::connect(
        SocketAddr::new(LOCALHOST, port.wrapping_add(1).max(1)),
        "job-none",
        4,
        &JobSecret::random(),
        Duration::from_millis(300),
    );
    let error = nobody.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        error.starts_with("rank 4 could not reach the rendezvous"),
        "{error}"
    );
}

#[test]
fn two_jobs_on_colliding_derived_ports_never_meet() {
    // Pick a base whose sequence is free now (other tests use ephemeral ports).
    let base = (DERIVED_PORTS.start..DERIVED_PORTS.end)
        .step_by(97)
        .skip(usize::from(std::process::id() as u16 % 50))
        .find(|&port| (port..port + 4).all(|p| TcpListener::bind((LOCALHOST, p)).is_ok()))
        .expect("a free port range");
    let (secret_a, secret_b) = (JobSecret::random(), JobSecret::random());
    let server_a = RendezvousServer::bind_from_port(LOCALHOST, base, "job-a", 2, secret_a.clone())
        .expect("job a binds");
    let server_b = RendezvousServer::bind_from_port(LOCALHOST, base, "job-b", 2, secret_b.clone())
        .expect("job b binds");
    assert_eq!(server_a.local_addr().port(), base);
    assert!(server_b.local_addr().port() > base);
    let ranks: Vec<_> = [("job-a", secret_a), ("job-b", secret_b)]
        .into_iter()
        .flat_map(|(job, secret)| (0..2u32).map(move |rank| (job, secret.clone(), rank)))
        .map(|(job, secret, rank)| {
            thread::spawn(move || {
                let mut client =
                    RendezvousClient::connect_from_port(LOCALHOST, base, job, rank, &secret, LONG)?;
                let port = client.server_addr().port();
                let table = client.allgather("who", job.as_bytes(), LONG)?;
                client.finalize()?;
                Ok::<_, RendezvousError>((job, port, table))
            })
        })
        .collect();
    for rank in ranks {
        let (job, port, table) = match rank.join() {
            Ok(Ok(result)) => result,
            other => panic!("{other:?}"),
        };
        let expected = if job == "job-a" { &server_a } else { &server_b };
        assert_eq!(port, expected.local_addr().port(), "{job}");
        assert_eq!(table, vec![job.as_bytes().to_vec(); 2], "{job}");
    }
    wait_for(&server_a, |status| status.finalized == vec![0, 1]);
    wait_for(&server_b, |status| status.finalized == vec![0, 1]);
}

#[test]
fn malformed_request_closes_only_that_connection() {
    let secret = JobSecret::random();
    let server = server("job-m", 2, &secret);
    let mut good = client(&server, "job-m", 0, &secret);
    let mut raw = TcpStream::connect(server.local_addr()).expect("connect");
    handshake::initiate(&mut raw, "job-m", 1, &secret).expect("handshake");
    let garbage = [0xffu8; 40];
    let header = FrameHeader::control(FrameKind::Store, 1, garbage.len() as u32);
    std::io::Write::write_all(&mut raw, &encode_frame(&header, &garbage)).expect("write");
    raw.set_read_timeout(Some(LONG)).expect("timeout");
    // Welcome, then an error, then the close.
    let mut frames = 0;
    while handshake::read_frame(&mut raw, 1 << 20).is_ok() {
        frames += 1;
    }
    assert_eq!(frames, 2);
    wait_for(&server, |status| status.departed == vec![1]);
    assert!(good.put("still", b"fine").is_ok());
}

#[test]
fn shutdown_releases_waiting_clients() {
    let secret = JobSecret::random();
    let mut server = server("job-x", 2, &secret);
    let mut waiting = client(&server, "job-x", 0, &secret);
    let waiter = thread::spawn(move || waiting.get("never", LONG));
    wait_for(&server, |status| status.connected == vec![0]);
    thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    server.shutdown();
    match waiter.join() {
        Ok(Err(RendezvousError::Io { rank: 0, .. })) => {}
        other => panic!("expected a broken connection, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    server.shutdown();
}

/// An observer (`lumen status`) reads what ranks put, is answered at once
/// when a key is missing, may not write, is not counted among the ranks,
/// and leaving (even abruptly) fails nobody's barrier; one without the
/// secret is refused.
#[test]
fn observers_read_keys_without_joining_the_job() {
    let secret = JobSecret::random();
    let server = server("job-obs", 2, &secret);
    let mut rank0 = client(&server, "job-obs", 0, &secret);
    rank0.put("lumen.status", b"addr").unwrap();
    let mut observer =
        RendezvousClient::observe(server.local_addr(), "job-obs", &secret, LONG).unwrap();
    assert_eq!(observer.size(), 2);
    assert_eq!(observer.get("lumen.status", LONG).unwrap(), b"addr");
    let started = Instant::now();
    let missing = observer.get("nothing", LONG).unwrap_err().to_string();
    assert!(missing.contains("no rank of this job has put"), "{missing}");
    assert!(started.elapsed() < LONG, "a missing key must not wait");
    let refused = observer
        .put("lumen.status", b"other")
        .unwrap_err()
        .to_string();
    assert!(refused.contains("only read"), "{refused}");
    // A second observer at the same time, then both go away abruptly.
    let second = RendezvousClient::observe(server.local_addr(), "job-obs", &secret, LONG).unwrap();
    assert_eq!(server.status().connected, vec![0]);
    drop(observer);
    drop(second);
    // The job goes on: rank 1 arrives and both pass a barrier.
    let secret1 = secret.clone();
    let addr = server.local_addr();
    let rank1 = thread::spawn(move || {
        let mut rank1 = RendezvousClient::connect(addr, "job-obs", 1, &secret1, LONG).unwrap();
        rank1.barrier(LONG).unwrap();
        rank1.finalize().unwrap();
    });
    rank0.barrier(LONG).unwrap();
    rank1.join().unwrap();
    rank0.finalize().unwrap();
    // Without the secret: refused.
    let wrong = JobSecret::random();
    let error = RendezvousClient::observe(server.local_addr(), "job-obs", &wrong, LONG)
        .unwrap_err()
        .to_string();
    assert!(error.contains("authenticate"), "{error}");
}
