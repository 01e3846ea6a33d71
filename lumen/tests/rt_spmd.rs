//! SPMD mode (`InitOptions::new().spmd()`): every rank runs `main`, submits
//! tasks to the others and serves theirs; leaving is collective. Run under
//! `lumen run -n 3` and on the embedded cluster (whose workers then run the
//! program's `main` too instead of only serving).

mod common;

use std::process::Command;

use common::*;

fn args() -> [&'static str; 4] {
    [
        "spmd::every_rank_submits",
        "--exact",
        "--ignored",
        "--nocapture",
    ]
}

fn check(all: &str, ranks: u32) {
    for rank in 0..ranks {
        assert!(
            all.contains(&format!("rank {rank} of {ranks}: spmd ok")),
            "rank {rank} missing:\n{all}"
        );
    }
}

#[test]
fn spmd_under_lumen_run() {
    let mut command = Command::new(lumen());
    command
        .args(["run", "-n", "3", "--"])
        .arg(std::env::current_exe().expect("test binary"))
        .args(args());
    let output = run_with_timeout(&mut command, 120);
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    check(&all, 3);
}

#[test]
fn spmd_on_the_embedded_cluster() {
    let mut command = Command::new(std::env::current_exe().expect("test binary"));
    command.args(args()).env("LUMEN_NUM_WORKERS", "2");
    let output = run_with_timeout(&mut command, 120);
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    check(&all, 3);
}

mod spmd {
    use lumen::prelude::*;

    #[lumen::remote]
    fn square(x: u64) -> lumen::Result<(u64, u32)> {
        Ok((x * x, lumen::current()?.rank()))
    }

    #[test]
    #[ignore = "run by the tests above"]
    fn every_rank_submits() -> lumen::Result<()> {
        let rt = lumen::InitOptions::new().spmd().init()?;
        let (me, n) = (rt.rank(), rt.size());
        // Every rank sends work to every rank (itself included).
        let refs: Vec<ObjectRef<(u64, u32)>> = (0..n)
            .map(|to| square::options().rank(to).remote(&rt, u64::from(me + to)))
            .collect::<lumen::Result<_>>()?;
        for (to, r) in refs.iter().enumerate() {
            let (value, ran_on) = r.get()?;
            let x = u64::from(me) + to as u64;
            assert_eq!(value, x * x);
            assert_eq!(ran_on, to as u32);
        }
        // Objects cross between SPMD ranks too.
        let mine = rt.put(&format!("from rank {me}"))?;
        assert_eq!(mine.get()?, format!("from rank {me}"));
        println!("rank {me} of {n}: spmd ok");
        Ok(())
    }
}
