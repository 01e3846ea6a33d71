//! The one platform layer of Lumen: thin wrappers over the few Linux calls
//! the runtime needs. Public as `lumen_transport::sys` so that the object
//! store and the collectives map shared memory and sleep on futexes through
//! the same code as the transport, instead of copies of it.
//!
//! What is public:
//! - [`SharedObject`] and [`SharedMapping`]: POSIX shared-memory objects
//!   (`/dev/shm/{name}`): exclusive create, open of an existing object whose
//!   size is read with `fstat`, `ftruncate`, `mmap`, `shm_unlink`. A mapping
//!   is unmapped once, when dropped; the object's fd is closed once, when
//!   its [`SharedObject`] is dropped (a mapping outlives its fd).
//! - [`futex_wait`], [`futex_wake_one`], [`futex_wake_all`]: process-shared
//!   futexes (no `FUTEX_PRIVATE_FLAG`: the word may live in a shared mapping).
//! - [`ProcessWatch`] and [`process_alive`]: whether another process of the
//!   node has exited (pidfd, a null signal as fallback).
//! - [`read_process_memory`]: a single-copy read of a peer's memory.
//!
//! The socket helpers (non-blocking receive, `MSG_ZEROCOPY`, epoll) stay
//! crate-private: only the TCP backend uses them. Every `unsafe` block of the
//! transport that talks to the kernel lives here or in `shm.rs`/`uring.rs`.
//!
//! Names of shared-memory objects are given without or with one leading `/`
//! (`"lumen-x"` and `"/lumen-x"` name the same object, `/dev/shm/lumen-x`);
//! any other `/`, an empty name or a NUL is refused with `InvalidInput`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Sleeps while `*word == expected`, at most `timeout`. Works across processes
/// (the word may live in a shared mapping: no FUTEX_PRIVATE_FLAG).
///
/// Returns on a wake-up, on the timeout, when `*word != expected` already,
/// or spuriously (a signal): callers re-check their condition in a loop.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call; the
    // kernel only reads it. A spurious or failed wait is harmless: callers loop.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
        );
    }
}

/// Wakes every waiter sleeping on `word` (in any process).
pub fn futex_wake_all(word: &AtomicU32) {
    futex_wake(word, i32::MAX);
}

/// Wakes at most one waiter sleeping on `word` (in any process).
pub fn futex_wake_one(word: &AtomicU32) {
    futex_wake(word, 1);
}

fn futex_wake(word: &AtomicU32, count: i32) {
    // SAFETY: `word` is a valid, aligned u32; FUTEX_WAKE does not dereference it.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, count);
    }
}

/// A handle that tells whether another process has exited (pidfd).
#[derive(Debug)]
pub struct ProcessWatch {
    fd: OwnedFd,
}

impl ProcessWatch {
    /// Opens a pidfd for `pid`.
    pub fn open(pid: i32) -> io::Result<Self> {
        // SAFETY: pidfd_open takes plain integers and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this fd to us and nobody else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(ProcessWatch { fd })
    }

    /// The pidfd, readable once the process has exited (to watch many
    /// processes with one `epoll_wait`).
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// True once the process has exited (a zombie counts as exited).
    pub fn exited(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n > 0 && pfd.revents & libc::POLLIN != 0
    }
}

/// Whether process `pid` still runs. An exited process that its parent has
/// not reaped yet (a zombie) counts as dead: its pidfd is readable. Where
/// pidfds are refused (old kernel, seccomp) a null signal decides, which
/// counts a zombie as alive.
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false; // no such pid on Linux
    };
    match ProcessWatch::open(pid) {
        Ok(watch) => !watch.exited(),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => false,
        Err(_) => {
            // SAFETY: signal 0 only checks for existence and permission.
            let r = unsafe { libc::kill(pid, 0) };
            r == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
        }
    }
}

/// Asks for the pages of `[addr, addr + len)` (rounded out to whole pages)
/// to be allocated on NUMA node `node` from now on (`mbind` with
/// `MPOL_PREFERRED`: a preference, so a full node falls back to others;
/// pages already allocated stay where they are). On a shared mapping the
/// policy is the shared object's, for every process mapping it.
pub fn prefer_numa_node(addr: *const u8, len: usize, node: u32) -> io::Result<()> {
    const MPOL_PREFERRED: libc::c_long = 1;
    let words = node as usize / 64 + 1;
    if words > 16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NUMA node {node} is beyond the 1024 nodes Lumen handles"),
        ));
    }
    let mut mask = [0u64; 16];
    mask[node as usize / 64] |= 1u64 << (node % 64);
    let page = 4096usize;
    let start = addr as usize & !(page - 1);
    let end = (addr as usize).saturating_add(len).div_ceil(page) * page;
    // SAFETY: mbind only changes the memory policy of the range (no access
    // to it); the kernel validates the range (EFAULT/EINVAL) and reads
    // `words * 64` bits of `mask`, which is that long.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            start,
            end - start,
            MPOL_PREFERRED,
            mask.as_ptr(),
            (words * 64 + 1) as libc::c_ulong,
            0 as libc::c_uint,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The memory policy of the page holding address `addr` of this process:
/// (mode, first node of its node mask); `MPOL_DEFAULT` is mode 0,
/// `MPOL_PREFERRED` 1.
pub fn numa_policy_of(addr: usize) -> io::Result<(i32, Option<u32>)> {
    const MPOL_F_ADDR: libc::c_ulong = 1 << 1;
    let mut mode: libc::c_int = 0;
    let mut mask = [0u64; 16];
    // SAFETY: get_mempolicy writes one int to `mode` and at most 1024 bits
    // to `mask` (its length); `addr` is only looked up, not accessed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut mode as *mut libc::c_int,
            mask.as_mut_ptr(),
            1024 as libc::c_ulong,
            addr,
            MPOL_F_ADDR,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let first = mask
        .iter()
        .enumerate()
        .find(|(_, w)| **w != 0)
        .map(|(i, w)| i as u32 * 64 + w.trailing_zeros());
    Ok((mode, first))
}

/// Copies `dst.len()` bytes from address `addr` of process `pid` into `dst`
/// (`process_vm_readv`: a single copy, kernel to kernel). Fails with EPERM
/// where ptrace rules forbid it, EFAULT where the range is not mapped there.
pub fn read_process_memory(pid: i32, addr: u64, dst: &mut [u8]) -> io::Result<()> {
    let mut done = 0usize;
    while done < dst.len() {
        let local = libc::iovec {
            iov_base: dst[done..].as_mut_ptr().cast(),
            iov_len: dst.len() - done,
        };
        let remote = libc::iovec {
            iov_base: (addr as usize + done) as *mut libc::c_void,
            iov_len: dst.len() - done,
        };
        // SAFETY: `local` points into `dst`, which we borrow mutably for the call;
        // the remote range is validated by the kernel (EFAULT if unmapped).
        let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "process_vm_readv read nothing",
            ));
        }
        done += n as usize;
    }
    Ok(())
}

/// Copies `src` to address `addr` of process `pid` (`process_vm_writev`:
/// a single copy). Fails as [`read_process_memory`] does.
pub fn write_process_memory(pid: i32, addr: u64, src: &[u8]) -> io::Result<()> {
    let mut done = 0usize;
    while done < src.len() {
        let local = libc::iovec {
            iov_base: src[done..].as_ptr().cast_mut().cast(),
            iov_len: src.len() - done,
        };
        let remote = libc::iovec {
            iov_base: (addr as usize + done) as *mut libc::c_void,
            iov_len: src.len() - done,
        };
        // SAFETY: `local` points into `src`, which the kernel only reads; the
        // remote range is validated by the kernel (EFAULT if unmapped).
        let n = unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "process_vm_writev wrote nothing",
            ));
        }
        done += n as usize;
    }
    Ok(())
}

/// Reads `len` bytes at `addr` of process `pid` into a new vector, without
/// zeroing it first (a fresh zeroed buffer costs a page fault and a memset per
/// page on every large message; the kernel writes every byte anyway).
pub(crate) fn read_process_memory_vec(pid: i32, addr: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut data: Vec<u8> = Vec::with_capacity(len);
    let mut done = 0usize;
    while done < len {
        let local = libc::iovec {
            // SAFETY: `done < len <= capacity`, so the pointer stays inside the allocation.
            iov_base: unsafe { data.as_mut_ptr().add(done) }.cast(),
            iov_len: len - done,
        };
        let remote = libc::iovec {
            iov_base: (addr as usize + done) as *mut libc::c_void,
            iov_len: len - done,
        };
        // SAFETY: `local` covers spare capacity we own exclusively; the kernel
        // validates the remote range (EFAULT if unmapped).
        let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "process_vm_readv read nothing",
            ));
        }
        done += n as usize;
    }
    // SAFETY: the loop above had the kernel write all `len` bytes.
    unsafe { data.set_len(len) };
    Ok(data)
}

/// Non-blocking receive into `buffer`; `Ok(0)` is end of stream.
pub(crate) fn recv_nonblocking(fd: RawFd, buffer: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buffer` is valid for writes of its length for the duration of the call.
    let n = unsafe {
        libc::recv(
            fd,
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Non-blocking receive of at most `max` bytes appended to `buffer`'s spare
/// capacity (no zeroing, no intermediate copy); `Ok(0)` is end of stream.
pub(crate) fn recv_into_spare(fd: RawFd, buffer: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    let spare = buffer.spare_capacity_mut();
    let want = spare.len().min(max);
    // SAFETY: the first `want` bytes of the spare capacity are valid for writes.
    let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), want, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: the kernel initialised `n <= want` bytes right after the current length.
    unsafe { buffer.set_len(buffer.len() + n) };
    Ok(n)
}

/// Receives at most `len` bytes into `ptr` without blocking.
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes, and nothing else may read or
/// write that range during the call.
pub(crate) unsafe fn recv_raw(fd: RawFd, ptr: *mut u8, len: usize) -> io::Result<usize> {
    // SAFETY: the caller guarantees `ptr..ptr + len` is writable and exclusive.
    let n = unsafe { libc::recv(fd, ptr.cast(), len, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Keeps large blocks of glibc's malloc on the heap instead of a fresh
/// `mmap` per block: every TCP message above glibc's mmap threshold (128 KiB
/// until its dynamic adjustment kicks in) otherwise costs an `mmap`, a page
/// fault per 4 KiB and, on free, an `munmap` whose TLB shootdown interrupts
/// every core running one of our threads. Raises `M_MMAP_THRESHOLD` to
/// `bytes` and `M_TRIM_THRESHOLD` to twice that (heap memory freed at
/// the top is kept up to that much). Process-wide, like Open MPI's own
/// malloc tuning; a no-op outside glibc (and for Rust programs with another
/// global allocator, whose blocks never come from glibc).
pub(crate) fn tune_malloc(bytes: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc caps the threshold at HEAP_MAX_SIZE / 2 (32 MiB on 64-bit).
        let mmap = bytes.clamp(128 * 1024, 32 << 20) as libc::c_int;
        let trim = (mmap as i64 * 2).min(i32::MAX as i64) as libc::c_int;
        // SAFETY: mallopt takes plain integers and is thread-safe (it takes the
        // arena locks); a refused value returns 0 and changes nothing.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, mmap);
            libc::mallopt(libc::M_TRIM_THRESHOLD, trim);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = bytes;
}

/// Breaks a TCP connection whose peer acknowledges nothing for `bound`
/// (`TCP_USER_TIMEOUT`), probing idle ones with keepalives from half the
/// bound on, so a silent host is noticed within it.
pub(crate) fn set_failure_timeout(fd: RawFd, bound: std::time::Duration) -> io::Result<()> {
    let set = |level: libc::c_int, name: libc::c_int, value: libc::c_int| -> io::Result<()> {
        // SAFETY: a valid socket fd and a pointer to a c_int of the stated size.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    let ms = bound.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
    let half = (bound.as_secs() / 2).clamp(1, 32767) as libc::c_int;
    set(libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, ms)?;
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, half)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, (half / 2).max(1))?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 2)
}

/// `SO_ZEROCOPY` (asm-generic/socket.h; not exported by every libc version).
const SO_ZEROCOPY: libc::c_int = 60;
/// `SO_EE_ORIGIN_ZEROCOPY` (linux/errqueue.h).
const SO_EE_ORIGIN_ZEROCOPY: u8 = 5;

/// Allows `MSG_ZEROCOPY` sends on a socket (Linux 4.14+). Without it the flag is
/// silently ignored and no completion would ever arrive, so callers only use
/// [`send_zerocopy`] after this succeeded.
pub(crate) fn enable_zerocopy(fd: RawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd and a pointer to a c_int of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_ZEROCOPY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One non-blocking `sendmsg(MSG_ZEROCOPY)` of `slices`: the kernel pins the
/// pages instead of copying them, so they must stay untouched until
/// [`reap_zerocopy`] has counted this call's completion. Every call that
/// returns `Ok(n)` with `n > 0` consumes one completion id.
pub(crate) fn send_zerocopy(fd: RawFd, slices: &[std::io::IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: msghdr is plain old data; the fields we need are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is ABI-compatible with iovec (documented by std); the kernel only reads it.
    msg.msg_iov = slices.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = slices.len() as _;
    // SAFETY: `msg` points at `slices`, valid for reads for the duration of the call.
    let n = unsafe {
        libc::sendmsg(
            fd,
            &msg,
            libc::MSG_ZEROCOPY | libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Reads every zero-copy completion queued on the socket's error queue and
/// returns how many send calls they cover (0 when none is queued yet).
/// Completions of other origins are skipped.
pub(crate) fn reap_zerocopy(fd: RawFd) -> io::Result<u64> {
    let mut done = 0u64;
    loop {
        let mut control = [0u64; 16];
        // SAFETY: msghdr is plain old data; the fields we need are set below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: `msg` describes `control`, valid for writes of its length.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(done),
                io::ErrorKind::Interrupted => continue,
                _ => Err(e),
            };
        }
        // SAFETY: `msg` was filled by recvmsg; CMSG_* walk only the bytes it reported.
        let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !cmsg.is_null() {
            // SAFETY: `cmsg` is a header inside `control` (checked non-null by the loop).
            let header = unsafe { &*cmsg };
            let is_err = (header.cmsg_level == libc::SOL_IP
                && header.cmsg_type == libc::IP_RECVERR)
                || (header.cmsg_level == libc::SOL_IPV6 && header.cmsg_type == libc::IPV6_RECVERR);
            if is_err
                && header.cmsg_len as usize
                    // SAFETY: CMSG_LEN is a pure size computation.
                    >= unsafe { libc::CMSG_LEN(std::mem::size_of::<libc::sock_extended_err>() as u32) }
                        as usize
            {
                // SAFETY: the length check above guarantees a whole
                // sock_extended_err follows the header; read_unaligned as
                // the control buffer gives no alignment promise for it.
                let err: libc::sock_extended_err =
                    unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast()) };
                if err.ee_origin == SO_EE_ORIGIN_ZEROCOPY && err.ee_errno == 0 {
                    // ee_info..=ee_data: the range of send calls completed.
                    done += u64::from(err.ee_data.wrapping_sub(err.ee_info)) + 1;
                }
            }
            // SAFETY: as above; returns null past the last header.
            cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
        }
    }
}

/// A level-triggered epoll set whose events carry a `u64` key.
#[derive(Debug)]
pub(crate) struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: plain flags; returns a new fd or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this fd to us and nobody else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Epoll { fd })
    }

    /// Watches `fd` for readability (and hang-up), reported with `key`.
    pub(crate) fn add(&self, fd: RawFd, key: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: key,
        };
        // SAFETY: valid epoll fd and event pointer; the kernel copies the event.
        if unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) } != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops watching `fd` (must happen before it is closed: a dup'ed fd would
    /// otherwise keep the registration alive).
    pub(crate) fn delete(&self, fd: RawFd) {
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: valid epoll fd; a stale fd only yields an error.
        unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut event) };
    }

    /// Waits up to `timeout` and returns the keys of ready fds in `keys`.
    pub(crate) fn wait(&self, keys: &mut Vec<u64>, timeout: Duration) {
        const MAX: usize = 64;
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; MAX];
        // SAFETY: `events` has room for MAX entries; the kernel writes at most that many.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                events.as_mut_ptr(),
                MAX as i32,
                timeout.as_millis().min(i32::MAX as u128) as i32,
            )
        };
        keys.clear();
        for event in events.iter().take(n.max(0) as usize) {
            let key = event.u64;
            keys.push(key);
        }
    }
}

/// A POSIX shared-memory object (`/dev/shm/{name}`) opened by this process,
/// before or beside its mapping: the steps of [`SharedMapping::create`] and
/// [`SharedMapping::open`] one by one, for callers that report each step's
/// failure in their own words or check the size against their layout.
#[derive(Debug)]
pub struct SharedObject {
    fd: OwnedFd,
}

fn shm_name(name: &str) -> io::Result<CString> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    if bare.is_empty() || bare.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("shared-memory name {name:?} must be non-empty and contain no '/' but a leading one"),
        ));
    }
    CString::new(format!("/{bare}")).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NUL in shared-memory name {name:?}"),
        )
    })
}

impl SharedObject {
    /// Creates `/dev/shm/{name}` empty, readable and writable by this user
    /// only; fails with `AlreadyExists` if it exists (`O_CREAT | O_EXCL`).
    /// Size it with [`SharedObject::set_len`].
    pub fn create(name: &str) -> io::Result<Self> {
        let cname = shm_name(name)?;
        // SAFETY: valid C string; flags and mode are plain integers.
        let fd = unsafe {
            libc::shm_open(
                cname.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
                0o600,
            )
        };
        Self::from_result(fd)
    }

    /// Opens an existing `/dev/shm/{name}` for reading and writing; fails
    /// with `NotFound` if it does not exist.
    pub fn open(name: &str) -> io::Result<Self> {
        let cname = shm_name(name)?;
        // SAFETY: valid C string.
        let fd = unsafe { libc::shm_open(cname.as_ptr(), libc::O_RDWR, 0) };
        Self::from_result(fd)
    }

    fn from_result(fd: libc::c_int) -> io::Result<Self> {
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by shm_open and is owned by us alone.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(SharedObject { fd })
    }

    /// Sets the object's size; bytes added read as zero (`ftruncate`).
    pub fn set_len(&self, len: u64) -> io::Result<()> {
        let len = libc::off_t::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "size beyond off_t"))?;
        // SAFETY: valid fd; ftruncate extends the object with zero bytes.
        if unsafe { libc::ftruncate(self.fd.as_raw_fd(), len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The object's current size in bytes (`fstat`); 0 while its creator has
    /// not sized it yet.
    pub fn size(&self) -> io::Result<u64> {
        // SAFETY: `stat` is plain old data, fully written by fstat on success.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and a valid out pointer.
        if unsafe { libc::fstat(self.fd.as_raw_fd(), &mut stat) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(u64::try_from(stat.st_size).unwrap_or(0))
    }

    /// Maps the first `len` bytes, shared and writable. The mapping stays
    /// valid after this object (its fd) is dropped.
    pub fn map(&self, len: usize) -> io::Result<SharedMapping> {
        SharedMapping::map_fd(self.fd.as_fd(), len)
    }
}

impl AsFd for SharedObject {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A shared mapping (`mmap(MAP_SHARED)`, read and write) in this process,
/// unmapped when dropped. The memory is shared with every other process that
/// maps the same object: users must only touch it through atomics or through
/// protocols that give one writer at a time (and say so in their docs).
#[derive(Debug)]
pub struct SharedMapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory; all concurrent access to it goes through
// atomics or through the protocols of its users (rings in `shm.rs`, the
// object store's lock, the collectives' flags), which is why the raw pointer
// is only handed out by `as_ptr`.
unsafe impl Send for SharedMapping {}
// SAFETY: as above.
unsafe impl Sync for SharedMapping {}

impl SharedMapping {
    /// Creates `/dev/shm/{name}` of `len` zeroed bytes (fails with
    /// `AlreadyExists` if it exists) and maps it. On a failure after the
    /// create, the name is removed again.
    pub fn create(name: &str, len: usize) -> io::Result<Self> {
        let object = SharedObject::create(name)?;
        let mapped = object.set_len(len as u64).and_then(|()| object.map(len));
        if mapped.is_err() {
            let _ = Self::unlink(name);
        }
        mapped
    }

    /// Maps an existing `/dev/shm/{name}` whole; returns `Ok(None)` while it
    /// does not exist yet, or exists but its creator has not sized it yet.
    pub fn open(name: &str) -> io::Result<Option<Self>> {
        let object = match SharedObject::open(name) {
            Ok(object) => object,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        let len = object.size()?;
        if len == 0 {
            return Ok(None); // created but not yet sized by its creator
        }
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "object beyond usize"))?;
        object.map(len).map(Some)
    }

    /// Maps the first `len` bytes of the shared-memory object or file `fd`,
    /// shared and writable, at an address the kernel picks. The fd may be
    /// closed afterwards; the mapping keeps the object alive.
    pub fn map_fd(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        // SAFETY: a fresh shared mapping of a valid fd at an address the kernel
        // picks, so it aliases no Rust object; we never hand out `&mut` to it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(SharedMapping {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Removes the name; mappings stay valid until unmapped.
    pub fn unlink(name: &str) -> io::Result<()> {
        let cname = shm_name(name)?;
        // SAFETY: valid C string.
        if unsafe { libc::shm_unlink(cname.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Base address: page-aligned, valid for reads and writes of
    /// [`len`](Self::len) bytes for as long as `self` lives.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a mapping of zero bytes (never produced: `mmap` refuses them).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len come from a successful mmap and are unmapped once;
        // users that hand out references into the mapping keep it alive
        // for as long as those live (documented at each user).
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapping_can_prefer_numa_node_zero() {
        let name = format!("lumen-numa-test-{}", std::process::id());
        let object = SharedObject::create(&name).expect("create");
        object.set_len(1 << 20).expect("size");
        let map = object.map(1 << 20).expect("map");
        let _ = SharedMapping::unlink(&name);
        let ptr = map.as_ptr().cast_const();
        assert_eq!(
            numa_policy_of(ptr as usize).expect("policy").0,
            0,
            "default first"
        );
        // SAFETY: inside the 1 MiB mapping.
        let middle = unsafe { ptr.add(4096 * 3 + 17) };
        prefer_numa_node(middle, 8192, 0).expect("mbind to node 0");
        assert_eq!(
            numa_policy_of(middle as usize).expect("policy"),
            (1, Some(0))
        );
        assert_eq!(
            numa_policy_of(ptr as usize).expect("policy").0,
            0,
            "outside the range"
        );
        assert!(prefer_numa_node(ptr, 4096, 5000).is_err(), "no such node");
    }
}
