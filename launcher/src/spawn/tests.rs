//! Unit tests of the spawner's pure parts: host lists, layouts, rank
//! variables, launch agents, exit causes, output lines.

use std::collections::HashMap;
use std::net::SocketAddr;

use lumen_transport::auth::JobSecret;

use super::layout::{agent_words, layout, rank_env, Placement};
use super::process::{build_command, write_line};
use super::*;
use crate::env::{detect, job_secret_from_env, LaunchKind};

fn hosts(list: &str) -> Vec<(String, u32)> {
    match parse_hosts(list) {
        Ok(hosts) => hosts,
        Err(error) => panic!("{list}: {error}"),
    }
}

#[test]
fn host_lists() {
    assert_eq!(hosts("h1:4,h2:4"), vec![("h1".into(), 4), ("h2".into(), 4)]);
    assert_eq!(hosts(" a , b:2,"), vec![("a".into(), 1), ("b".into(), 2)]);
    for bad in ["", ",", "a:0", "a:x", ":3", "a b:2", "a:-1"] {
        assert!(
            matches!(parse_hosts(bad), Err(SpawnError::InvalidHost { .. })),
            "{bad:?}"
        );
    }
}

#[test]
fn ranks_fill_hosts_in_order() {
    let list = hosts("a:2,b:2,c:4");
    let job = layout(3, Some(&list), "me").expect("fits");
    assert_eq!(job.nodes, vec!["a".to_string(), "b".to_string()]);
    let places: Vec<(u32, u32, u32)> = job
        .ranks
        .iter()
        .map(|p| (p.node_index, p.local_rank, p.local_size))
        .collect();
    assert_eq!(places, vec![(0, 0, 2), (0, 1, 2), (1, 0, 1)]);
    let local = layout(4, None, "me").expect("fits");
    assert_eq!(local.nodes, vec!["me".to_string()]);
    assert_eq!(
        local.ranks[3],
        Placement {
            node_index: 0,
            local_rank: 3,
            local_size: 4
        }
    );
    assert!(matches!(
        layout(9, Some(&list), "me"),
        Err(SpawnError::NotEnoughSlots { ranks: 9, slots: 8 })
    ));
    assert!(matches!(layout(0, None, "me"), Err(SpawnError::NoRanks)));
}

#[test]
fn rank_environment_is_what_detect_reads() {
    let list = hosts("a:2,b:2");
    let job = layout(4, Some(&list), "me").expect("fits");
    let secret = JobSecret::random();
    let addr: SocketAddr = "10.0.0.1:7000".parse().expect("address");
    let vars: HashMap<String, String> = rank_env(&job, 3, "l1x2", addr, &secret)
        .into_iter()
        .collect();
    let world = detect(|name| vars.get(name).cloned()).expect("detect");
    assert_eq!(
        (world.rank, world.size, world.local_rank, world.local_size),
        (3, 4, 1, 2)
    );
    assert_eq!((world.node_index, world.num_nodes), (1, 2));
    assert_eq!(world.hosts, vec!["a".to_string(), "b".to_string()]);
    assert_eq!(world.job_id, "l1x2");
    assert_eq!(world.kind, LaunchKind::Lumen);
    assert_eq!(world.rendezvous.as_deref(), Some("10.0.0.1:7000"));
    let read = job_secret_from_env(|name| vars.get(name).cloned()).expect("secret");
    assert_eq!(read, Some(secret));
}

#[test]
fn launch_agent_templates() {
    let mut spec = JobSpec::local(2, "app");
    assert_eq!(agent_words(&spec, "far", "me").ok(), Some(None));
    spec.launch_agent = Some("ip netns exec {host}".into());
    assert_eq!(
        agent_words(&spec, "ns-h1", "me").ok().flatten(),
        Some(vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            "ns-h1".into()
        ])
    );
    assert_eq!(agent_words(&spec, "me", "me").ok(), Some(None));
    assert_eq!(agent_words(&spec, "localhost", "me").ok(), Some(None));
    spec.launch_agent = Some("ssh -x".into());
    assert_eq!(
        agent_words(&spec, "far", "me.cluster").ok().flatten(),
        Some(vec!["ssh".into(), "-x".into(), "far".into()])
    );
    spec.launch_agent = Some("local".into());
    assert_eq!(agent_words(&spec, "far", "me").ok(), Some(None));
    spec.launch_agent = Some("  ".into());
    assert!(matches!(
        agent_words(&spec, "far", "me"),
        Err(SpawnError::EmptyLaunchAgent)
    ));

    let words = vec!["ip".to_string(), "netns".into(), "exec".into(), "h1".into()];
    let vars = vec![("LUMEN_RANK".to_string(), "1".to_string())];
    spec.args = vec!["--flag".into()];
    let command = build_command(&spec, Some(&words), &vars);
    assert_eq!(command.get_program(), "ip");
    let args: Vec<String> = command
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let env_at = args.iter().position(|a| a == "env").expect("env word");
    assert_eq!(&args[..env_at], ["netns", "exec", "h1"]);
    assert!(args.contains(&"LUMEN_RANK=1".to_string()));
    assert_eq!(&args[args.len() - 2..], ["app", "--flag"]);
}

#[test]
fn exit_causes_read_well() {
    assert_eq!(
        ExitCause::Signal(9).to_string(),
        "exited with signal 9 (SIGKILL)"
    );
    assert_eq!(ExitCause::Signal(9).exit_code(), 137);
    assert_eq!(ExitCause::Code(3).to_string(), "exited with code 3");
    assert_eq!(ExitCause::Code(3).exit_code(), 3);
    assert!(ExitCause::Code(0).success());
    let ids = (new_job_id(), new_job_id());
    assert_ne!(ids.0, ids.1);
    assert!(
        ids.0.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{}",
        ids.0
    );
}

#[test]
fn labelled_lines() {
    let mut out = Vec::new();
    write_line(&mut out, Some("[3] "), b"hello\n").expect("write");
    write_line(&mut out, None, b"bye\n").expect("write");
    assert_eq!(out, b"[3] hello\nbye\n");
}
