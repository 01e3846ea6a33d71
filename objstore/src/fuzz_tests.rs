//! Fuzz harnesses of the object store's request decoders that face the
//! network (lumen_testkit::fuzz; `LUMEN_FUZZ_ITERS` inputs each): chunked
//! pulls, one-sided pin requests, device object requests. None may panic.

use std::time::Duration;

use lumen_testkit::fuzz::{fuzz, iterations};

use crate::ObjectId;

#[test]
fn object_requests() {
    let id = ObjectId::new(3, 9);
    let seeds = vec![
        crate::pull::ChunkRequest {
            id,
            object_len: 1 << 30,
            offset: 4096,
            len: 8 << 20,
            reply_tag: 0xB100_0000_0000_0042,
        }
        .encode()
        .to_vec(),
        crate::pull_one_sided::encode_request(id, 1 << 20, 5).to_vec(),
        crate::device::transfer::encode_request(
            id,
            7,
            1 << 20,
            crate::device::transfer::Kind::Staged,
        )
        .to_vec(),
        crate::device::transfer::encode_request(id, 8, 0, crate::device::transfer::Kind::Ipc)
            .to_vec(),
    ];
    fuzz("object_requests", &seeds, iterations(), |input| {
        let _ = crate::pull::ChunkRequest::decode(input);
        let _ = crate::pull_one_sided::decode_request(input);
        let _ = crate::device::transfer::decode_request(input);
    })
    .assert_clean(Duration::from_secs(1));
}
