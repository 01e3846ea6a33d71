use super::*;
use crate::element::ReduceOp;

#[test]
fn layout_is_aligned_and_sized() {
    for size in 1..9 {
        let (data, len) = layout(size, 65536);
        assert_eq!(data % 4096, 0);
        assert!(data >= HEADER + size * CONTROL);
        assert_eq!(len, data + SLOTS * size * 65536);
    }
}

#[test]
fn threads_as_ranks_agree() {
    // Two "ranks" as threads of one process, each with its own mapping.
    let (name, first) = Segment::create(3, 4096).unwrap();
    let others: Vec<Segment> = (1..3)
        .map(|r| Segment::open(&name, 3, r, 4096).unwrap())
        .collect();
    unlink(&name);
    let mut all = vec![first];
    all.extend(others);
    let results: Vec<Vec<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = all
            .iter()
            .enumerate()
            .map(|(r, seg)| {
                s.spawn(move || {
                    let mut alive = || Ok(());
                    let mut out = Vec::new();
                    for len in [1usize, 7, 100, 5000] {
                        let mut v: Vec<u64> = (0..len as u64).map(|i| i * 10 + r as u64).collect();
                        seg.allreduce(&mut v, ReduceOp::Sum, 256, false, &mut alive)
                            .unwrap();
                        out.extend(v);
                        let mut b: Vec<u64> = if r == 2 {
                            (0..len as u64).collect()
                        } else {
                            vec![0; len]
                        };
                        seg.bcast(&mut b, 2, false, &mut alive).unwrap();
                        out.extend(b);
                        seg.barrier(false, &mut alive).unwrap();
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut expected = Vec::new();
    for len in [1u64, 7, 100, 5000] {
        expected.extend((0..len).map(|i| 3 * i * 10 + 3));
        expected.extend(0..len);
    }
    for r in results {
        assert_eq!(r, expected);
    }
}

#[test]
fn exchanges_agree_across_threads() {
    let p = 3;
    let (name, first) = Segment::create(p, 4096).unwrap();
    let mut all = vec![first];
    all.extend((1..p).map(|r| Segment::open(&name, p, r, 4096).unwrap()));
    unlink(&name);
    std::thread::scope(|s| {
        for (r, seg) in all.iter().enumerate() {
            s.spawn(move || {
                let mut alive = || Ok(());
                // Uneven counts, longer than a slot (512 u64).
                let counts = [700usize, 3, 1100];
                let mut offsets = vec![0];
                for c in counts {
                    offsets.push(offsets.last().unwrap() + c);
                }
                let block = |q: usize| -> Vec<u64> {
                    (0..counts[q] as u64).map(|i| i * 7 + q as u64).collect()
                };
                let mut recv = vec![0u64; offsets[p]];
                let mine = block(r);
                seg.allgatherv(Some(&mine), &mut recv, &offsets, false, &mut alive)
                    .unwrap();
                recv[offsets[r]..offsets[r + 1]].copy_from_slice(&mine);
                let expected: Vec<u64> = (0..p).flat_map(block).collect();
                assert_eq!(recv, expected);

                let n = 1000;
                let mut rs: Vec<i64> = (0..(n * p) as i64).map(|i| i + r as i64).collect();
                seg.reduce_scatter(&mut rs, ReduceOp::Sum, false, &mut alive)
                    .unwrap();
                let want: Vec<i64> = (r * n..(r + 1) * n).map(|i| 3 * i as i64 + 3).collect();
                assert_eq!(&rs[r * n..(r + 1) * n], &want[..]);

                let send: Vec<u32> = (0..(n * p) as u32).map(|i| i * 10 + r as u32).collect();
                let mut got = vec![0u32; n * p];
                seg.alltoall(&send, &mut got, false, &mut alive).unwrap();
                for q in 0..p {
                    for i in 0..n {
                        assert_eq!(got[q * n + i], ((r * n + i) * 10 + q) as u32);
                    }
                }
            });
        }
    });
}

#[test]
fn single_copy_exchanges_agree_across_threads() {
    let p = 3;
    let (name, first) = Segment::create(p, 4096).unwrap();
    let mut all = vec![first];
    all.extend((1..p).map(|r| Segment::open(&name, p, r, 4096).unwrap()));
    unlink(&name);
    for seg in &all {
        seg.announce();
    }
    for seg in &all {
        assert!(seg.probe_single_copy(), "process_vm_readv on our own pid");
    }
    std::thread::scope(|s| {
        for (r, seg) in all.iter().enumerate() {
            s.spawn(move || {
                let mut alive = || Ok(());
                let n = 5000;
                let offsets: Vec<usize> = (0..=p).map(|q| q * n).collect();
                let mine: Vec<u64> = (0..n as u64).map(|i| i * 7 + r as u64).collect();
                let mut recv = vec![0u64; n * p];
                seg.allgatherv_single_copy(Some(&mine), &mut recv, &offsets, false, &mut alive)
                    .unwrap();
                recv[r * n..(r + 1) * n].copy_from_slice(&mine);
                for q in 0..p {
                    for i in 0..n {
                        assert_eq!(recv[q * n + i], (i * 7 + q) as u64);
                    }
                }
                let send: Vec<u32> = (0..(n * p) as u32).map(|i| i * 10 + r as u32).collect();
                let mut got = vec![0u32; n * p];
                seg.alltoall_single_copy(&send, &mut got, false, &mut alive)
                    .unwrap();
                for q in 0..p {
                    for i in 0..n {
                        assert_eq!(got[q * n + i], ((r * n + i) * 10 + q) as u32);
                    }
                }
                let mut v: Vec<f64> = (0..n).map(|i| (i * 3 + r) as f64).collect();
                seg.allreduce_single_copy(&mut v, ReduceOp::Sum, false, &mut alive)
                    .unwrap();
                assert!(v.iter().enumerate().all(|(i, &x)| x == (9 * i + 3) as f64));
                for len in [1usize, 5, 6] {
                    let mut w: Vec<u64> = vec![r as u64 + 1; len];
                    seg.allreduce_inline(&mut w, ReduceOp::Prod, false, &mut alive)
                        .unwrap();
                    assert_eq!(w, vec![6; len]);
                    let mut b: Vec<u64> = vec![r as u64; len];
                    seg.bcast_inline(&mut b, 2, false, &mut alive).unwrap();
                    assert_eq!(b, vec![2; len]);
                }
                let mut b: Vec<i32> = if r == 1 {
                    (0..n as i32).collect()
                } else {
                    vec![0; n]
                };
                seg.bcast_single_copy(&mut b, 1, false, &mut alive).unwrap();
                assert_eq!(b, (0..n as i32).collect::<Vec<_>>());
            });
        }
    });
}

#[test]
fn mismatched_lengths_are_reported() {
    let (name, first) = Segment::create(2, 4096).unwrap();
    let second = Segment::open(&name, 2, 1, 4096).unwrap();
    unlink(&name);
    let errors: Vec<bool> = std::thread::scope(|s| {
        let a = s.spawn(|| {
            let mut v = vec![1u32; 3];
            first
                .allreduce(&mut v, ReduceOp::Sum, 4096, false, &mut || Ok(()))
                .is_err()
        });
        let b = s.spawn(|| {
            let mut v = vec![1u32; 4];
            second
                .allreduce(&mut v, ReduceOp::Sum, 4096, false, &mut || Ok(()))
                .is_err()
        });
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    assert_eq!(errors, vec![true, true]);
}

#[test]
fn open_refuses_a_wrong_shape() {
    let (name, _first) = Segment::create(2, 4096).unwrap();
    assert!(Segment::open(&name, 3, 1, 4096).is_err());
    assert!(Segment::open(&name, 2, 1, 8192).is_err());
    unlink(&name);
    assert!(Segment::open(&name, 2, 1, 4096).is_err());
}
