//! Integration tests of `NetnsCluster`: real namespaces, real traffic, and
//! cleanup on drop, on panic and after a crashed run.
//!
//! Every test that needs namespaces skips (passing, with the reason printed on
//! stderr) where `can_create_netns` is false, e.g. when not running as root.

use std::error::Error;
use std::io::Read;
use std::net::TcpListener;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lumen_testkit::{
    list_namespaces, netns_unavailable_reason, unique_prefix, NetnsCluster, NetnsError,
};

type TestResult = Result<(), Box<dyn Error>>;

/// `true` when namespaces can be created; otherwise prints why `test` skips.
fn netns_available(test: &str) -> bool {
    match netns_unavailable_reason() {
        None => true,
        Some(reason) => {
            eprintln!("skipping {test}: {reason}");
            false
        }
    }
}

fn namespaces_with_prefix(prefix: &str) -> Result<Vec<String>, NetnsError> {
    let with_dash = format!("{prefix}-");
    Ok(list_namespaces()?
        .into_iter()
        .filter(|name| name.starts_with(&with_dash))
        .collect())
}

fn program_exists(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Accepts one connection within `timeout` and returns everything it sent.
fn accept_and_read(listener: &TcpListener, timeout: Duration) -> Result<String, Box<dyn Error>> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    let (mut stream, _) = loop {
        match listener.accept() {
            Ok(accepted) => break accepted,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err("no connection arrived in time".into());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(error) => return Err(error.into()),
        }
    };
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut received = String::new();
    stream.read_to_string(&mut received)?;
    Ok(received)
}

#[test]
fn three_hosts_talk_over_the_bridge_and_drop_removes_them() -> TestResult {
    if !netns_available("three_hosts_talk_over_the_bridge_and_drop_removes_them") {
        return Ok(());
    }
    let prefix = unique_prefix("lumen-tk");
    let cluster = NetnsCluster::create(&prefix, 3)?;

    let subnet = cluster.subnet_cidr();
    let octets = cluster.host_addr(2).octets();
    assert_eq!(octets[0], 10);
    assert!((200..=250).contains(&octets[1]), "{subnet}");
    assert_eq!(subnet, format!("10.{}.0.0/24", octets[1]));
    assert_eq!(octets[2..], [0, 12]);
    assert_eq!(cluster.namespace(2), format!("{prefix}-h2"));
    let mut expected = vec![
        format!("{prefix}-br"),
        format!("{prefix}-h0"),
        format!("{prefix}-h1"),
        format!("{prefix}-h2"),
    ];
    let mut present = namespaces_with_prefix(&prefix)?;
    present.sort();
    expected.sort();
    assert_eq!(present, expected);

    // A command runs inside its host: it sees that host's eth0 address.
    let shown = cluster
        .command(0, "ip")
        .args(["-o", "-4", "addr", "show", "dev", "eth0"])
        .output()?;
    assert!(shown.status.success(), "{shown:?}");
    let shown = String::from_utf8(shown.stdout)?;
    assert!(
        shown.contains(&format!("{}/24", cluster.host_addr(0))),
        "{shown}"
    );

    if program_exists("ping") {
        let target = cluster.host_addr(2).to_string();
        let status = cluster
            .command(0, "ping")
            .args(["-c1", "-W1", &target])
            .status()?;
        assert!(status.success(), "ping host 0 -> host 2: {status}");
    } else {
        eprintln!("ping is not installed; checking reachability over TCP only");
    }

    // TCP from host 0 to a listener bound in host 2.
    let target = cluster.host_addr(2);
    let listener = cluster.run_in(2, move || TcpListener::bind((target, 0)))??;
    let port = listener.local_addr()?.port();
    let mut client = cluster
        .command(0, "timeout")
        .args([
            "10",
            "bash",
            "-c",
            &format!("echo hello-from-h0 > /dev/tcp/{target}/{port}"),
        ])
        .spawn()?;
    let received = accept_and_read(&listener, Duration::from_secs(10))?;
    let status = client.wait()?;
    assert!(status.success(), "client in host 0: {status}");
    assert_eq!(received.trim(), "hello-from-h0");

    // Host 2's address is not local to host 0: its loopback has no listener.
    let status = cluster
        .command(0, "timeout")
        .args([
            "5",
            "bash",
            "-c",
            &format!("echo x > /dev/tcp/127.0.0.1/{port}"),
        ])
        .stderr(Stdio::null())
        .status()?;
    assert!(
        !status.success(),
        "host 0 reached host 2's port on its own loopback"
    );

    drop(listener);
    drop(cluster);
    assert_eq!(namespaces_with_prefix(&prefix)?, Vec::<String>::new());
    Ok(())
}

#[test]
fn a_panicking_test_still_cleans_up() -> TestResult {
    if !netns_available("a_panicking_test_still_cleans_up") {
        return Ok(());
    }
    let prefix = unique_prefix("lumen-tk");
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let cluster = NetnsCluster::create(&prefix, 2).expect("cluster is created");
        let present = namespaces_with_prefix(&prefix).expect("namespaces are listed");
        assert_eq!(present.len(), 3, "{present:?}");
        let _ = cluster.host_addr(1);
        panic!("deliberate panic while cluster {prefix} is alive");
    }));
    assert!(outcome.is_err(), "the closure was meant to panic");
    assert_eq!(namespaces_with_prefix(&prefix)?, Vec::<String>::new());
    Ok(())
}

#[test]
fn processes_still_running_in_a_host_are_killed_on_drop() -> TestResult {
    if !netns_available("processes_still_running_in_a_host_are_killed_on_drop") {
        return Ok(());
    }
    let prefix = unique_prefix("lumen-tk");
    let cluster = NetnsCluster::create(&prefix, 2)?;
    let mut sleeper = cluster.command(1, "sleep").arg("600").spawn()?;
    std::thread::sleep(Duration::from_millis(50));
    assert!(sleeper.try_wait()?.is_none(), "sleep exited early");

    let started = Instant::now();
    cluster.destroy()?;
    let status = sleeper.wait()?;
    assert!(!status.success(), "{status}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(namespaces_with_prefix(&prefix)?, Vec::<String>::new());
    Ok(())
}

#[test]
fn cleanup_stale_removes_only_namespaces_of_dead_processes() -> TestResult {
    if !netns_available("cleanup_stale_removes_only_namespaces_of_dead_processes") {
        return Ok(());
    }
    let tag = "lumen-tkstale";
    // A process id that certainly belonged to a process that has exited.
    let mut exited = Command::new("true").spawn()?;
    let dead_pid = exited.id();
    exited.wait()?;
    let leftover = format!("{tag}-{dead_pid}-0-h0");
    let added = Command::new("ip")
        .args(["netns", "add", &leftover])
        .output()?;
    assert!(added.status.success(), "{added:?}");

    let live = NetnsCluster::create(&unique_prefix(tag), 1)?;
    let removed = NetnsCluster::cleanup_stale(tag)?;

    let remaining = list_namespaces()?;
    // A concurrent run of this test may sweep our leftover first, so it need
    // not be in `removed`; it must be gone.
    assert!(
        removed.iter().all(|name| name.starts_with(tag)),
        "{removed:?}"
    );
    assert!(!remaining.contains(&leftover), "{remaining:?}");
    assert!(
        remaining.iter().any(|name| name == live.namespace(0)),
        "a live cluster was swept: {remaining:?}"
    );
    assert!(remaining.iter().any(|name| name == live.bridge_namespace()));
    Ok(())
}

#[test]
fn bad_arguments_are_rejected_before_touching_the_system() {
    assert!(matches!(
        NetnsCluster::create("", 2),
        Err(NetnsError::InvalidPrefix { .. })
    ));
    assert!(matches!(
        NetnsCluster::create("a/b-1-0", 2),
        Err(NetnsError::InvalidPrefix { .. })
    ));
    assert!(matches!(
        NetnsCluster::create("lumen-tk-1-0", 0),
        Err(NetnsError::HostCount { .. })
    ));
    assert!(matches!(
        NetnsCluster::create("lumen-tk-1-0", 246),
        Err(NetnsError::HostCount { .. })
    ));
    assert!(matches!(
        NetnsCluster::cleanup_stale(""),
        Err(NetnsError::InvalidPrefix { .. })
    ));
}
