//! The node arena used by several real processes at once: concurrent
//! allocation, zero-copy reads across processes, pinning, eviction, spill and
//! restore, out-of-memory errors, reuse of freed memory, and recovery from a
//! process that dies holding the arena lock.

mod common;
use common::*;

use std::time::Duration;

use lumen_objstore::{ArenaOptions, NodeArena, ObjectId, ObjectState, ObjectStoreError};

const LIMIT: Duration = Duration::from_secs(120);

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> T {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("child argument {i} missing or malformed in {args:?}"))
}

fn seed(id: ObjectId) -> u64 {
    id.hi.wrapping_mul(1_000_003) ^ id.lo
}

/// Entry point of the child processes (does nothing in a normal test run).
#[test]
fn child_entry() {
    let Some((role, args)) = child_role() else {
        return;
    };
    match role.as_str() {
        "stress" => child_stress(&args),
        "zero_copy" => {
            let arena = NodeArena::open(&args[0]).unwrap();
            let id = ObjectId::new(arg(&args, 1), arg(&args, 2));
            let view = arena.get(id).unwrap().expect("object visible in the child");
            say(&format!(
                "offset {} {}",
                view.arena_offset(),
                checksum(&view)
            ));
            assert_eq!(hear(), "changed");
            say(&format!("now {}", checksum(&view)));
        }
        "pin" => {
            let arena = NodeArena::open(&args[0]).unwrap();
            let id = ObjectId::new(arg(&args, 1), arg(&args, 2));
            let view = arena.get(id).unwrap().expect("object to pin");
            say("pinned");
            assert_eq!(hear(), "check");
            say(&format!("sum {}", checksum(&view)));
            assert_eq!(hear(), "drop");
            drop(view);
            say("dropped");
        }
        "verify" => {
            // args: name, then hi:lo:len:expect (expect = sealed|gone)
            let arena = NodeArena::open(&args[0]).unwrap();
            for spec in &args[1..] {
                let parts: Vec<u64> = spec.split(':').map(|p| p.parse().unwrap()).collect();
                let id = ObjectId::new(parts[0], parts[1]);
                match arena.get(id).unwrap() {
                    Some(view) => {
                        assert_eq!(parts[3], 1, "object {id} should have been evicted");
                        assert_eq!(view.len() as u64, parts[2]);
                        assert!(matches_pattern(&view, seed(id)), "object {id} corrupted");
                    }
                    None => assert_eq!(parts[3], 0, "object {id} lost"),
                }
            }
            say("verified");
        }
        "reader" => {
            // Reads evictable objects while the parent evicts them to make
            // room; a view must keep its bytes until dropped.
            let arena = NodeArena::open(&args[0]).unwrap();
            let stop = ObjectId::new(8, u64::MAX);
            let (mut seen, mut x) = (0u64, 88172645463325252u64 ^ std::process::id() as u64);
            let mut latest = 1;
            while !arena.contains(stop) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                while arena.contains(ObjectId::new(8, latest + 1)) {
                    latest += 1;
                }
                let id = ObjectId::new(8, latest.saturating_sub(x % 16).max(1));
                if let Some(view) = arena.get(id).unwrap() {
                    let before = checksum(&view);
                    std::thread::yield_now();
                    assert!(
                        matches_pattern(&view, seed(id)),
                        "object {id} changed under a view"
                    );
                    assert_eq!(checksum(&view), before);
                    seen += 1;
                }
            }
            say(&format!("read {seen}"));
        }
        "die_mid_update" => {
            let arena = NodeArena::open(&args[0]).unwrap();
            arena.scramble_allocator_for_test().unwrap();
            say("scrambled");
            std::thread::sleep(Duration::from_secs(600));
        }
        "die_holding_lock" => {
            let arena = NodeArena::open(&args[0]).unwrap();
            arena.leak_lock_for_test().unwrap();
            say("locked");
            std::thread::sleep(Duration::from_secs(600));
        }
        other => panic!("unknown child role {other}"),
    }
}

/// Allocates, fills, verifies and frees objects in a loop; also reads other
/// children's objects and checks their bytes (a block handed out twice would
/// show as corrupted bytes).
fn child_stress(args: &[String]) {
    let arena = NodeArena::open(&args[0]).unwrap();
    let me: u64 = arg(args, 1);
    let iterations: u64 = arg(args, 2);
    let children: u64 = arg(args, 3);
    let mut live: std::collections::VecDeque<ObjectId> = Default::default();
    let mut x = 0x2545_f491_4f6c_dd1d_u64 ^ me;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut cross_checked, mut full) = (0u64, 0u64);
    for i in 0..iterations {
        let id = ObjectId::new(1000 + me, i + 1);
        let r = rand();
        let len = if r % 50 == 0 {
            (r >> 8) % (1 << 20)
        } else {
            (r >> 8) % 40_000
        } as usize;
        let data = pattern(len, seed(id));
        match arena.put_bytes(id, &data) {
            Ok(()) => live.push_back(id),
            Err(ObjectStoreError::OutOfMemory { .. }) => {
                full += 1;
                if let Some(old) = live.pop_front() {
                    arena.release(old).unwrap();
                }
                continue;
            }
            Err(e) => panic!("put failed: {e}"),
        }
        if live.len() > 24 || rand() % 3 == 0 {
            if let Some(old) = live.pop_front() {
                let view = arena.get(old).unwrap().expect("own object present");
                assert!(
                    matches_pattern(&view, seed(old)),
                    "own object {old} corrupted"
                );
                drop(view);
                assert!(arena.release(old).unwrap());
            }
        }
        if i % 8 == 0 && children > 1 {
            let other = (me + 1 + rand() % (children - 1)) % children;
            let id = ObjectId::new(1000 + other, rand() % (i + 1) + 1);
            if let Some(view) = arena.get(id).unwrap() {
                assert!(matches_pattern(&view, seed(id)), "object {id} corrupted");
                cross_checked += 1;
            }
        }
    }
    for id in live {
        let view = arena.get(id).unwrap().expect("own object present");
        assert!(matches_pattern(&view, seed(id)));
        drop(view);
        arena.release(id).unwrap();
    }
    say(&format!("done {cross_checked} {full}"));
}

#[test]
fn concurrent_processes_allocate_and_free_without_overlap() {
    with_time_limit(LIMIT, || {
        let name = unique_name("stress");
        let arena = NodeArena::create(&name, 24 << 20, ArenaOptions::default()).unwrap();
        let start_live = arena.live_objects();
        let n = 4;
        let mut children: Vec<_> = (0..n)
            .map(|i| {
                ChildProc::spawn(
                    "stress",
                    &[name.clone(), i.to_string(), "3000".into(), n.to_string()],
                )
            })
            .collect();
        let mut cross = 0;
        for c in &mut children {
            let line = c.read_line();
            let parts: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(parts[0], "done");
            cross += parts[1].parse::<u64>().unwrap();
        }
        for c in children {
            c.wait_ok(LIMIT);
        }
        arena.check_consistency().unwrap();
        assert_eq!(arena.live_objects(), start_live);
        assert_eq!(arena.used_bytes(), 0, "all memory back after every release");
        assert!(cross > 0, "children read each other's objects");
        assert_eq!(arena.stats().lock_recoveries, 0);
        // Everything coalesced: one object of nearly the whole heap fits.
        let big = arena.capacity() - 64;
        arena
            .create_object(ObjectId::new(1, 1), big)
            .unwrap()
            .seal()
            .unwrap();
        NodeArena::unlink(&name).unwrap();
    });
}

#[test]
fn get_in_another_process_maps_the_same_memory() {
    with_time_limit(LIMIT, || {
        let name = unique_name("zerocopy");
        let arena = NodeArena::create(&name, 8 << 20, ArenaOptions::default()).unwrap();
        let id = ObjectId::new(5, 6);
        arena.put_bytes(id, &pattern(1 << 20, 1)).unwrap();
        let view = arena.get(id).unwrap().unwrap();
        let mut child = ChildProc::spawn(
            "zero_copy",
            &[name.clone(), id.hi.to_string(), id.lo.to_string()],
        );
        let line = child.read_line();
        let parts: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(parts[0], "offset");
        assert_eq!(parts[1].parse::<u64>().unwrap(), view.arena_offset());
        assert_eq!(parts[2].parse::<u64>().unwrap(), checksum(&view));
        // Write new bytes through an independent mapping of the segment at
        // that offset: the child's existing view must show them, which only
        // happens if it maps the same physical pages (no copy was made).
        let fresh = pattern(1 << 20, 2);
        overwrite_segment(&name, view.arena_offset(), &fresh);
        assert_eq!(checksum(&view), checksum(&fresh));
        child.send_line("changed");
        let line = child.read_line();
        assert_eq!(line, format!("now {}", checksum(&fresh)));
        child.wait_ok(LIMIT);
        drop(view);
        NodeArena::unlink(&name).unwrap();
    });
}

/// Maps `/dev/shm/{name}` directly (not through the store) and writes `bytes` at `offset`.
fn overwrite_segment(name: &str, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/dev/shm/{name}"))
        .unwrap();
    file.write_all_at(bytes, offset).unwrap();
}

#[test]
fn a_pin_in_another_process_blocks_eviction_and_spill() {
    with_time_limit(LIMIT, || {
        let name = unique_name("pin");
        let spill = std::env::temp_dir().join(unique_name("spill"));
        let options = ArenaOptions {
            spill_dir: Some(spill.clone()),
            ..ArenaOptions::default()
        };
        let arena = NodeArena::create(&name, 8 << 20, options).unwrap();
        let a = ObjectId::new(1, 1);
        arena.put_bytes(a, &pattern(4 << 20, seed(a))).unwrap();
        assert!(arena.set_evictable(a, true));
        let mut child = ChildProc::spawn("pin", &[name.clone(), "1".into(), "1".into()]);
        assert_eq!(child.read_line(), "pinned");
        assert_eq!(arena.stats().pinned_objects, 1);
        // B fits; C does not: A is evictable but pinned by the child, so B is spilled.
        let (b, c) = (ObjectId::new(1, 2), ObjectId::new(1, 3));
        arena.put_bytes(b, &pattern(3 << 20, seed(b))).unwrap();
        arena.put_bytes(c, &pattern(3 << 20, seed(c))).unwrap();
        let stats = arena.stats();
        assert_eq!((stats.evictions, stats.spills), (0, 1));
        assert_eq!(arena.state(a), Some(ObjectState::Sealed));
        assert_eq!(arena.state(b), Some(ObjectState::Spilled));
        // A 6 MiB put spills C (unpinned) and still fails: A is pinned.
        match arena.put_bytes(ObjectId::new(1, 4), &vec![0u8; 6 << 20]) {
            Err(ObjectStoreError::OutOfMemory { pinned, .. }) => {
                assert!(pinned >= 4 << 20, "A's pinned block counted: {pinned}")
            }
            other => panic!("expected out of memory, got {other:?}"),
        }
        child.send_line("check");
        assert_eq!(
            child.read_line(),
            format!("sum {}", checksum(&pattern(4 << 20, seed(a))))
        );
        child.send_line("drop");
        assert_eq!(child.read_line(), "dropped");
        child.wait_ok(LIMIT);
        assert_eq!(arena.stats().pinned_objects, 0);
        // Unpinned now: the next put evicts A (evictable) before spilling anything.
        let spills_before = arena.stats().spills;
        let d = ObjectId::new(1, 5);
        arena.put_bytes(d, &pattern(6 << 20, seed(d))).unwrap();
        assert_eq!(arena.stats().evictions, 1);
        assert_eq!(arena.stats().spills, spills_before);
        assert!(arena.get(a).unwrap().is_none(), "A was evicted");
        // B and C come back byte for byte.
        for id in [b, c] {
            let view = arena.get(id).unwrap().expect("restored");
            assert!(matches_pattern(&view, seed(id)));
        }
        arena.check_consistency().unwrap();
        NodeArena::unlink(&name).unwrap();
        assert!(!spill.join(&name).exists(), "unlink removes spill files");
        std::fs::remove_dir(&spill).unwrap();
    });
}

#[test]
fn views_in_other_processes_survive_concurrent_eviction() {
    with_time_limit(LIMIT, || {
        let name = unique_name("evictrace");
        let arena = NodeArena::create(&name, 4 << 20, ArenaOptions::default()).unwrap();
        let readers: Vec<_> = (0..2)
            .map(|_| ChildProc::spawn("reader", std::slice::from_ref(&name)))
            .collect();
        // 1500 objects of 256 KiB through a 4 MiB arena: evictions all the way.
        for i in 1..=1500u64 {
            let id = ObjectId::new(8, i);
            let mut w = loop {
                match arena.create_object(id, 256 << 10) {
                    Ok(w) => break w,
                    // Everything left is pinned by the readers right now.
                    Err(ObjectStoreError::OutOfMemory { .. }) => std::thread::yield_now(),
                    Err(e) => panic!("{e}"),
                }
            };
            w.copy_from_slice(&pattern(256 << 10, seed(id)));
            w.seal().unwrap();
            arena.set_evictable(id, true);
        }
        arena
            .put_bytes(ObjectId::new(8, u64::MAX), b"stop")
            .unwrap();
        let mut total = 0;
        for mut r in readers {
            let line = r.read_line();
            total += line.strip_prefix("read ").unwrap().parse::<u64>().unwrap();
            r.wait_ok(LIMIT);
        }
        assert!(total > 0);
        assert!(arena.stats().evictions >= 1400);
        assert_eq!(arena.stats().pinned_objects, 0);
        arena.check_consistency().unwrap();
        NodeArena::unlink(&name).unwrap();
    });
}

#[test]
fn eviction_spill_and_restore_byte_for_byte_across_processes() {
    with_time_limit(LIMIT, || {
        let name = unique_name("spill");
        let spill = std::env::temp_dir().join(unique_name("spill"));
        let options = ArenaOptions {
            spill_dir: Some(spill.clone()),
            ..ArenaOptions::default()
        };
        let arena = NodeArena::create(&name, 16 << 20, options).unwrap();
        // 12 objects of 3 MiB (+ odd tails) into 16 MiB: the first four are
        // secondary copies (evictable), the rest must be spilled, never lost.
        let mut specs = Vec::new();
        for i in 0..12u64 {
            let id = ObjectId::new(7, i + 1);
            let len = (3 << 20) + i * 17;
            arena
                .put_bytes(id, &pattern(len as usize, seed(id)))
                .unwrap();
            if i < 4 {
                arena.set_evictable(id, true);
            }
            specs.push((id, len));
        }
        let stats = arena.stats();
        assert!(stats.evictions > 0 && stats.spills > 0, "{stats:?}");
        let evicted: Vec<bool> = specs
            .iter()
            .map(|(id, _)| arena.state(*id).is_none())
            .collect();
        assert!(evicted[..4].iter().any(|&e| e));
        assert!(
            !evicted[4..].iter().any(|&e| e),
            "a referenced object was evicted"
        );
        // A different process restores the spilled ones and checks every byte.
        let mut args = vec![name.clone()];
        for ((id, len), gone) in specs.iter().zip(&evicted) {
            args.push(format!("{}:{}:{}:{}", id.hi, id.lo, len, u8::from(!gone)));
        }
        let mut child = ChildProc::spawn("verify", &args);
        assert_eq!(child.read_line(), "verified");
        child.wait_ok(LIMIT);
        assert!(arena.stats().restores > 0);
        arena.check_consistency().unwrap();
        for (id, _) in &specs {
            arena.release(*id).unwrap();
        }
        assert_eq!(arena.live_objects(), 0);
        assert_eq!(arena.stats().spilled_objects, 0);
        let leftover = std::fs::read_dir(spill.join(&name)).unwrap().count();
        assert_eq!(leftover, 0, "released spilled objects leave no files");
        NodeArena::unlink(&name).unwrap();
        std::fs::remove_dir(&spill).unwrap();
    });
}

#[test]
fn put_beyond_capacity_says_what_to_do() {
    let name = unique_name("oom");
    let arena = NodeArena::create(&name, 1 << 20, ArenaOptions::default()).unwrap();
    let err = arena
        .put_bytes(ObjectId::new(1, 1), &vec![1u8; 2 << 20])
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, ObjectStoreError::OutOfMemory { requested, capacity, .. }
            if requested == 2 << 20 && capacity == 1 << 20),
        "{err:?}"
    );
    assert!(
        text.contains("out of memory") && text.contains("spill_dir"),
        "{text}"
    );
    // Full of pinned objects: nothing can be evicted; the error counts them.
    let mut views = Vec::new();
    let mut i = 0;
    loop {
        i += 1;
        match arena.put_bytes(ObjectId::new(2, i), &[7u8; 100_000]) {
            Ok(()) => views.push(arena.get(ObjectId::new(2, i)).unwrap().unwrap()),
            Err(ObjectStoreError::OutOfMemory { pinned, used, .. }) => {
                assert_eq!(pinned, used);
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(views.len(), 10);
    assert!(matches!(
        arena.put_bytes(ObjectId::new(2, 1), b"x"),
        Err(ObjectStoreError::AlreadyExists { .. })
    ));
    assert!(matches!(
        arena.put_bytes(ObjectId::default(), b"x"),
        Err(ObjectStoreError::NilId)
    ));
    drop(views);
    NodeArena::unlink(&name).unwrap();
}

#[test]
fn release_frees_and_memory_is_reused() {
    let name = unique_name("reuse");
    let arena = NodeArena::create(&name, 4 << 20, ArenaOptions::default()).unwrap();
    let start = arena.live_objects();
    // Many rounds whose total is 50x the capacity: only reuse makes them fit.
    for round in 0..200u64 {
        let ids: Vec<ObjectId> = (0..8).map(|i| ObjectId::new(round + 1, i + 1)).collect();
        for (i, id) in ids.iter().enumerate() {
            arena
                .put_pod(*id, &vec![round as u32; 1000 * (i + 1) + round as usize])
                .unwrap();
        }
        // Released while a view is alive: freed when the view drops.
        let view = arena.get(ids[3]).unwrap().unwrap();
        for id in &ids {
            assert!(arena.release(*id).unwrap());
        }
        assert_eq!(arena.live_objects(), start + 1);
        assert_eq!(view.as_slice::<u32>().unwrap()[0], round as u32);
        drop(view);
        assert_eq!(arena.live_objects(), start);
        assert!(arena.get(ids[3]).unwrap().is_none());
    }
    assert_eq!(arena.used_bytes(), 0);
    arena.check_consistency().unwrap();
    // An unsealed writer dropped gives its space back too.
    let w = arena.create_object(ObjectId::new(9, 9), 3 << 20).unwrap();
    assert_eq!(arena.state(ObjectId::new(9, 9)), Some(ObjectState::Created));
    assert!(
        arena.get(ObjectId::new(9, 9)).unwrap().is_none(),
        "unsealed is invisible"
    );
    drop(w);
    assert_eq!((arena.live_objects(), arena.used_bytes()), (start, 0));
    // Typed views: alignment and length checks.
    arena.put_pod(ObjectId::new(9, 1), &[1.5f64, 2.5]).unwrap();
    let v = arena.get(ObjectId::new(9, 1)).unwrap().unwrap();
    assert_eq!(v.as_ptr() as usize % 64, 0);
    assert_eq!(v.as_slice::<f64>().unwrap(), &[1.5, 2.5]);
    assert!(matches!(
        v.as_slice::<[u8; 3]>(),
        Err(ObjectStoreError::BadCast { .. })
    ));
    drop(v);
    NodeArena::unlink(&name).unwrap();
}

#[test]
fn a_process_dying_with_the_lock_does_not_wedge_the_others() {
    with_time_limit(LIMIT, || {
        let name = unique_name("death");
        let arena = NodeArena::create(&name, 8 << 20, ArenaOptions::default()).unwrap();
        let keep = ObjectId::new(3, 3);
        arena
            .put_bytes(keep, &pattern(100_000, seed(keep)))
            .unwrap();
        let mut child = ChildProc::spawn("die_holding_lock", std::slice::from_ref(&name));
        assert_eq!(child.read_line(), "locked");
        child.kill();
        // The next operation takes the lock over, rebuilds, and goes on.
        let id = ObjectId::new(3, 4);
        arena.put_bytes(id, &pattern(200_000, seed(id))).unwrap();
        assert_eq!(arena.stats().lock_recoveries, 1);
        arena.check_consistency().unwrap();
        for id in [keep, id] {
            assert!(matches_pattern(&arena.get(id).unwrap().unwrap(), seed(id)));
        }
        // A holder killed mid-update leaves the allocator scrambled: the next
        // acquirer rebuilds it from the object table, losing nothing.
        let mut child = ChildProc::spawn("die_mid_update", std::slice::from_ref(&name));
        assert_eq!(child.read_line(), "scrambled");
        child.kill();
        let third = ObjectId::new(3, 5);
        arena
            .put_bytes(third, &pattern(300_000, seed(third)))
            .unwrap();
        assert_eq!(arena.stats().lock_recoveries, 2);
        arena.check_consistency().unwrap();
        for id in [keep, id, third] {
            assert!(matches_pattern(&arena.get(id).unwrap().unwrap(), seed(id)));
        }
        for id in [keep, id, third] {
            arena.release(id).unwrap();
        }
        assert_eq!((arena.live_objects(), arena.used_bytes()), (0, 0));
        // Also while other processes hammer the arena: kill one stress child
        // mid-run; the others finish and the arena stays consistent.
        let n = 3;
        let mut children: Vec<_> = (0..n)
            .map(|i| {
                ChildProc::spawn(
                    "stress",
                    &[name.clone(), i.to_string(), "4000".into(), n.to_string()],
                )
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let victim = children.remove(0);
        victim.kill();
        for mut c in children {
            assert!(c.read_line().starts_with("done"));
            c.wait_ok(LIMIT);
        }
        arena.check_consistency().unwrap();
        NodeArena::unlink(&name).unwrap();
    });
}

#[test]
fn pins_of_a_dead_process_are_reclaimed() {
    with_time_limit(LIMIT, || {
        let name = unique_name("deadpin");
        let arena = NodeArena::create(&name, 4 << 20, ArenaOptions::default()).unwrap();
        let id = ObjectId::new(4, 4);
        arena.put_bytes(id, &pattern(3 << 20, seed(id))).unwrap();
        let mut child = ChildProc::spawn("pin", &[name.clone(), "4".into(), "4".into()]);
        assert_eq!(child.read_line(), "pinned");
        // Our own view and the child's: the object is pinned by two processes.
        let view = arena.get(id).unwrap().unwrap();
        let view2 = view.clone();
        assert!(arena.release(id).unwrap());
        child.kill();
        drop((view, view2));
        // Still pinned by the dead child: present, and its space is not free.
        assert_eq!(arena.live_objects(), 1);
        assert_eq!(arena.stats().pinned_objects, 1);
        assert_eq!(arena.reclaim_dead_processes().unwrap(), 1);
        assert_eq!((arena.live_objects(), arena.used_bytes()), (0, 0));
        assert_eq!(arena.stats().pinned_objects, 0);
        // The same happens by itself when space runs out.
        arena.put_bytes(id, &pattern(3 << 20, seed(id))).unwrap();
        arena.set_evictable(id, false);
        let mut child = ChildProc::spawn("pin", &[name.clone(), "4".into(), "4".into()]);
        assert_eq!(child.read_line(), "pinned");
        child.kill();
        assert!(arena.release(id).unwrap());
        arena
            .put_bytes(ObjectId::new(4, 5), &[1u8; 3 << 20])
            .unwrap();
        assert!(arena.state(id).is_none());
        arena.check_consistency().unwrap();
        NodeArena::unlink(&name).unwrap();
    });
}

#[test]
fn open_checks_the_header() {
    let name = unique_name("hdr");
    assert!(matches!(
        NodeArena::open(&name),
        Err(ObjectStoreError::NoSuchArena { .. })
    ));
    std::fs::write(format!("/dev/shm/{name}"), vec![0xabu8; 8192]).unwrap();
    assert!(matches!(
        NodeArena::open(&name),
        Err(ObjectStoreError::BadArena { .. })
    ));
    std::fs::remove_file(format!("/dev/shm/{name}")).unwrap();
    let arena = NodeArena::create(&name, 1 << 20, ArenaOptions::default()).unwrap();
    assert!(NodeArena::create(&name, 1 << 20, ArenaOptions::default()).is_err());
    let other = NodeArena::open_wait(&name, Duration::from_secs(5)).unwrap();
    arena.put_bytes(ObjectId::new(1, 2), b"hello").unwrap();
    assert_eq!(&*other.get(ObjectId::new(1, 2)).unwrap().unwrap(), b"hello");
    NodeArena::unlink(&name).unwrap();
    assert!(NodeArena::open(&name).is_err());
}
