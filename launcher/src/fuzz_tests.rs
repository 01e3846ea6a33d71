//! Fuzz harnesses of the launcher's decoders that face the network or the
//! environment (lumen_testkit::fuzz; `LUMEN_FUZZ_ITERS` inputs each): PMI-1
//! lines and PMI-2 frames from a process manager, the rendezvous store's
//! request and reply frames, `--hosts` lists. None may panic or hang.

use std::time::Duration;

use lumen_testkit::fuzz::{fuzz, iterations};

const HANG: Duration = Duration::from_secs(1);

#[test]
fn pmi1_lines() {
    let seeds: Vec<Vec<u8>> = [
        "cmd=init pmi_version=1 pmi_subversion=1\n",
        "cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0\n",
        "cmd=maxes kvsname_max=256 keylen_max=64 vallen_max=1024\n",
        "cmd=get_result rc=0 value=abc\n",
        "cmd=barrier_out\ncmd=my_kvsname kvsname=kvs_1\n",
        "cmd=get kvsname=kvs_1 key=lumen-0 \n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    fuzz("pmi1", &seeds, iterations(), |input| {
        let mut decoder = crate::pmi::pmi1::Pmi1Decoder::new();
        decoder.push(input);
        for _ in 0..64 {
            match decoder.next_message() {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        let _ = crate::pmi::pmi1::parse_line(&String::from_utf8_lossy(input));
    })
    .assert_clean(HANG);
}

#[test]
fn pmi2_frames() {
    let seeds: Vec<Vec<u8>> = [
        &b"14    cmd=kvs-fence;"[..],
        b"52    cmd=fullinit;pmijobid=12.0;pmirank=3;threaded=FALSE;",
        b"82    cmd=fullinit-response;rc=0;pmi-version=2;pmi-subversion=0;size=4;rank=3;appnum=0;",
        b"37    cmd=kvs-get-response;rc=0;found=TRUE;value=x;",
        b"30    cmd=info-getjobattr-response;rc=0;found=FALSE;",
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect();
    fuzz("pmi2", &seeds, iterations(), |input| {
        let mut decoder = crate::pmi::pmi2::Pmi2Decoder::new();
        decoder.push(input);
        for _ in 0..64 {
            match decoder.next_message() {
                Ok(Some(message)) => {
                    let _ = crate::pmi::pmi2::parse_fullinit(&message);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let _ = crate::pmi::pmi2::parse_body(input);
    })
    .assert_clean(HANG);
}

#[test]
fn rendezvous_frames() {
    use crate::wire::{Reply, ReplyFrame, Request, RequestFrame};
    let requests = [
        Request::Put {
            key: "lumen/hello/3".into(),
            value: vec![1, 2, 3, 4, 5],
        },
        Request::Get { key: "k".into() },
        Request::Barrier { epoch: 7 },
        Request::Status,
        Request::Finalize,
    ];
    let replies = [
        Reply::Welcome { size: 8 },
        Reply::Done,
        Reply::Value {
            key: "k".into(),
            value: vec![9; 40],
        },
        Reply::BarrierDone { epoch: 2 },
        Reply::Error {
            reason: "rank 3 left".into(),
        },
    ];
    let mut seeds: Vec<Vec<u8>> = requests
        .into_iter()
        .enumerate()
        .map(|(i, request)| {
            RequestFrame {
                id: i as u64,
                request,
            }
            .encode()
        })
        .collect();
    seeds.extend(replies.into_iter().enumerate().map(|(i, reply)| {
        ReplyFrame {
            id: i as u64,
            reply,
        }
        .encode()
    }));
    fuzz("rendezvous", &seeds, iterations(), |input| {
        let _ = RequestFrame::decode(input);
        let _ = ReplyFrame::decode(input);
    })
    .assert_clean(HANG);
}

#[test]
fn host_lists() {
    let seeds: Vec<Vec<u8>> = ["a:4,b:4", "node1:2", "h0,h1,h2", "x:1,y:999"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    fuzz("hosts", &seeds, iterations(), |input| {
        let _ = crate::spawn::parse_hosts(&String::from_utf8_lossy(input));
    })
    .assert_clean(HANG);
}

#[test]
fn tuning_knobs() {
    let seeds: Vec<Vec<u8>> = ["16K", "1MiB", "auto", "10.77.0.0/24,ib0", "5000", "uring"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    fuzz("config", &seeds, iterations(), |input| {
        let value = String::from_utf8_lossy(input).into_owned();
        let _ = crate::config::Config::from_env(|_| Some(value.clone()));
    })
    .assert_clean(HANG);
}
