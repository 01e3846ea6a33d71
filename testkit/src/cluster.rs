//! [`NetnsCluster`]: hosts in network namespaces joined by a bridge.
//!
//! Invariant: `created` lists exactly the namespaces this value created and
//! has not removed yet, so cleanup (on drop, on [`NetnsCluster::destroy`], or
//! when [`NetnsCluster::create`] fails half-way) never touches a namespace it
//! did not make, e.g. one of the same name left by somebody else.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::OnceLock;

use crate::ip::{ip, ip_program, run_checked};
use crate::naming::{embedded_pid, subnet_octet, unique_prefix, validate_prefix, MAX_HOSTS};
use crate::NetnsError;

/// Where iproute2 keeps the bind mounts that name network namespaces.
const NETNS_RUN_DIR: &str = "/run/netns";

/// The bridge's interface name inside the bridge namespace.
const BRIDGE_DEVICE: &str = "br0";

/// A set of simulated hosts, each a network namespace with its own `eth0`,
/// all attached to one bridge. See the [crate documentation](crate) for the
/// layout.
///
/// Dropping the cluster, also during a panic, kills every process still
/// running in its namespaces (`SIGKILL`) and deletes the namespaces, which
/// removes the veth pairs and the bridge with them. Errors during drop are
/// printed on stderr; call [`NetnsCluster::destroy`] to see them as a
/// `Result` instead.
#[derive(Debug)]
pub struct NetnsCluster {
    prefix: String,
    subnet: u8,
    bridge: String,
    hosts: Vec<Host>,
    /// Namespaces created and not yet removed, in creation order.
    created: Vec<String>,
}

#[derive(Debug)]
struct Host {
    namespace: String,
    /// `/run/netns/{namespace}`, ready for `open(2)` in a forked child.
    netns_path: CString,
}

impl NetnsCluster {
    /// Creates `n` hosts: network namespaces named `{prefix}-h{i}` joined to a
    /// bridge `br0` that lives in its own namespace `{prefix}-br`.
    ///
    /// Host `i` gets address `10.S.0.{10+i}/24` on interface `eth0` (the peer
    /// end, `vh{i}`, is a port of the bridge) and its loopback is up. `S` is
    /// [`subnet_octet`]`(prefix)`, a hash of the prefix in 200..=250.
    ///
    /// `prefix` must be unique per test and embed the process id, so that
    /// concurrent tests never clash and [`NetnsCluster::cleanup_stale`] can
    /// tell leftovers of dead runs from live clusters: build it with
    /// [`unique_prefix`]. It may contain ASCII letters, digits, `-`, `_` and
    /// `.`, and must start with a letter or digit.
    ///
    /// Needs root. On failure everything created so far is removed again.
    pub fn create(prefix: &str, n: usize) -> Result<Self, NetnsError> {
        validate_prefix(prefix)?;
        if n == 0 || n > MAX_HOSTS {
            return Err(NetnsError::HostCount {
                requested: n,
                max: MAX_HOSTS,
            });
        }
        let hosts = (0..n)
            .map(|i| {
                let namespace = format!("{prefix}-h{i}");
                let netns_path = netns_path(&namespace).ok_or(NetnsError::InvalidPrefix {
                    prefix: prefix.to_owned(),
                    reason: "it contains a NUL byte",
                })?;
                Ok(Host {
                    namespace,
                    netns_path,
                })
            })
            .collect::<Result<Vec<_>, NetnsError>>()?;
        let mut cluster = NetnsCluster {
            prefix: prefix.to_owned(),
            subnet: subnet_octet(prefix),
            bridge: format!("{prefix}-br"),
            hosts,
            created: Vec::new(),
        };
        // On error `cluster` is dropped here, which removes what was created.
        cluster.build()?;
        Ok(cluster)
    }

    fn build(&mut self) -> Result<(), NetnsError> {
        let bridge = self.bridge.clone();
        ip(["netns", "add", &bridge])?;
        self.created.push(bridge.clone());
        ip([
            "-n",
            &bridge,
            "link",
            "add",
            BRIDGE_DEVICE,
            "type",
            "bridge",
        ])?;
        ip(["-n", &bridge, "link", "set", BRIDGE_DEVICE, "up"])?;

        for i in 0..self.hosts.len() {
            let namespace = self.hosts[i].namespace.clone();
            let port = format!("vh{i}");
            let address = format!("{}/24", self.host_addr(i));
            ip(["netns", "add", &namespace])?;
            self.created.push(namespace.clone());
            // Both ends are created directly inside their namespaces, so no
            // interface ever appears in the caller's namespace.
            ip([
                "-n", &bridge, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &namespace,
            ])?;
            ip([
                "-n",
                &bridge,
                "link",
                "set",
                &port,
                "master",
                BRIDGE_DEVICE,
                "up",
            ])?;
            ip(["-n", &namespace, "addr", "add", &address, "dev", "eth0"])?;
            ip(["-n", &namespace, "link", "set", "eth0", "up"])?;
            ip(["-n", &namespace, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Cuts host `i` off the bridge (its port goes down): packets to and
    /// from it are dropped, its sockets stay open and its processes run —
    /// a link cut or a hung switch port, not a crash.
    pub fn cut_link(&self, i: usize) -> Result<(), NetnsError> {
        ip(["-n", &self.bridge, "link", "set", &format!("vh{i}"), "down"]).map(drop)
    }

    /// Puts host `i` back on the bridge.
    pub fn restore_link(&self, i: usize) -> Result<(), NetnsError> {
        ip(["-n", &self.bridge, "link", "set", &format!("vh{i}"), "up"]).map(drop)
    }

    /// The prefix the cluster was created with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Number of hosts.
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// Name of host `i`'s network namespace, `{prefix}-h{i}`.
    ///
    /// # Panics
    ///
    /// If `i` is not below [`NetnsCluster::host_count`].
    pub fn namespace(&self, i: usize) -> &str {
        &self.host(i).namespace
    }

    /// Name of the namespace that holds the bridge, `{prefix}-br`.
    pub fn bridge_namespace(&self) -> &str {
        &self.bridge
    }

    /// Address of host `i` on its `eth0`: `10.S.0.{10+i}`.
    ///
    /// # Panics
    ///
    /// If `i` is not below [`NetnsCluster::host_count`].
    pub fn host_addr(&self, i: usize) -> Ipv4Addr {
        self.host(i);
        // `i < MAX_HOSTS` (245) was checked by `create`, so 10 + i <= 254.
        Ipv4Addr::new(10, self.subnet, 0, 10 + i as u8)
    }

    /// The cluster's subnet in CIDR notation, e.g. `"10.213.0.0/24"`; useful
    /// for pinning MPI or UCX to the test network
    /// (`OMPI_MCA_btl_tcp_if_include`).
    pub fn subnet_cidr(&self) -> String {
        format!("10.{}.0.0/24", self.subnet)
    }

    /// A [`Command`] that runs `program` inside host `i`'s network namespace.
    ///
    /// The child joins the namespace itself, between `fork` and `exec`, by
    /// `setns(2)` on `/run/netns/{prefix}-h{i}` (a `pre_exec` hook). This is
    /// chosen over wrapping the command in `ip netns exec`, which also
    /// unshares the mount namespace and remounts `/sys` (breaking programs
    /// that look up cgroups there, such as slurmd) and applies
    /// `/etc/netns/NAME`; with `setns` only the network namespace changes,
    /// `program` is exec'd directly (no extra `ip` process, so the returned
    /// child's pid is the program's and killing it kills the program), and
    /// arguments, environment and working directory behave as for any
    /// `Command`. The one visible difference: `/sys/class/net` still shows
    /// the caller's interfaces; ask `ip` or netlink instead.
    ///
    /// Spawning fails with the `open`/`setns` error when the namespace is gone
    /// or the caller lacks `CAP_SYS_ADMIN`.
    ///
    /// # Panics
    ///
    /// If `i` is not below [`NetnsCluster::host_count`].
    pub fn command(&self, i: usize, program: impl AsRef<OsStr>) -> Command {
        let netns_path = self.host(i).netns_path.clone();
        let mut command = Command::new(program);
        // SAFETY: the hook runs in the forked child before exec, where only
        // async-signal-safe work is allowed: `enter_netns` makes the open,
        // setns and close system calls and builds an io::Error from errno,
        // none of which allocates or takes a lock. The path was allocated
        // before the fork.
        unsafe {
            command.pre_exec(move || enter_netns(&netns_path));
        }
        command
    }

    /// Runs `f` on a new thread that has joined host `i`'s network namespace
    /// and returns its result; the calling thread stays where it is.
    ///
    /// Sockets created by `f` belong to host `i` and stay there when used
    /// from other threads afterwards, so this binds listeners "on" a host
    /// without a helper process:
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # if !lumen_testkit::can_create_netns() { return Ok(()); }
    /// # let prefix = lumen_testkit::unique_prefix("lumen-doc");
    /// # let cluster = lumen_testkit::NetnsCluster::create(&prefix, 3)?;
    /// let addr = cluster.host_addr(2);
    /// let listener = cluster.run_in(2, move || std::net::TcpListener::bind((addr, 0)))??;
    /// assert_eq!(listener.local_addr()?.ip(), addr);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// A panic in `f` is resumed on the calling thread.
    ///
    /// # Panics
    ///
    /// If `i` is not below [`NetnsCluster::host_count`], or `f` panics.
    pub fn run_in<T, F>(&self, i: usize, f: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let host = self.host(i);
        std::thread::scope(|scope| {
            let worker = scope.spawn(|| {
                enter_netns(&host.netns_path).map_err(|source| NetnsError::EnterNamespace {
                    namespace: host.namespace.clone(),
                    source,
                })?;
                Ok(f())
            });
            worker
                .join()
                .unwrap_or_else(|payload| std::panic::resume_unwind(payload))
        })
    }

    /// Removes the cluster now and reports what could not be removed (drop
    /// does the same but can only print errors).
    pub fn destroy(mut self) -> Result<(), NetnsError> {
        self.remove_created()
    }

    fn remove_created(&mut self) -> Result<(), NetnsError> {
        let mut failures = Vec::new();
        // Hosts first, then the bridge: the reverse of creation.
        for namespace in std::mem::take(&mut self.created).into_iter().rev() {
            if let Err(error) = remove_namespace(&namespace) {
                failures.push(format!("{namespace}: {error}"));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(NetnsError::Cleanup { failures })
        }
    }

    /// Removes namespaces left by earlier runs that died before cleaning up:
    /// every namespace whose name starts with `prefix_start` and embeds the id
    /// of a process that no longer exists. Returns the names of the stale
    /// namespaces found, all gone when it returns `Ok` (removed by this call,
    /// or by another process sweeping at the same time).
    ///
    /// The process id is the first `-`-separated field after `prefix_start`
    /// made only of digits, as in names built from [`unique_prefix`]
    /// (`{tag}-{pid}-{seq}-h0`); call this with the same `tag`. Namespaces
    /// without such a field, and those of live processes (including this
    /// one), are left alone. Processes still running inside a removed
    /// namespace are killed. A reused process id only makes a leftover
    /// survive until a later call; it never removes a live cluster.
    ///
    /// `prefix_start` must be a valid prefix (see [`NetnsCluster::create`]),
    /// so an empty string cannot sweep every namespace on the machine.
    pub fn cleanup_stale(prefix_start: &str) -> Result<Vec<String>, NetnsError> {
        validate_prefix(prefix_start)?;
        let mut removed = Vec::new();
        let mut failures = Vec::new();
        for namespace in list_namespaces()? {
            let Some(pid) = embedded_pid(&namespace, prefix_start) else {
                continue;
            };
            if process_alive(pid) {
                continue;
            }
            match remove_namespace(&namespace) {
                Ok(()) => removed.push(namespace),
                Err(error) => failures.push(format!("{namespace}: {error}")),
            }
        }
        if failures.is_empty() {
            Ok(removed)
        } else {
            Err(NetnsError::Cleanup { failures })
        }
    }

    fn host(&self, i: usize) -> &Host {
        match self.hosts.get(i) {
            Some(host) => host,
            None => panic!(
                "host index {i} out of range for cluster {} of {} hosts",
                self.prefix,
                self.hosts.len()
            ),
        }
    }
}

impl Drop for NetnsCluster {
    fn drop(&mut self) {
        if let Err(error) = self.remove_created() {
            // Drop cannot return the error; a test's stderr is where a person
            // looking at leftovers will look.
            eprintln!(
                "lumen-testkit: cleaning up cluster {}: {error}",
                self.prefix
            );
        }
    }
}

/// Names of all named network namespaces on the machine (`ip netns list`).
pub fn list_namespaces() -> Result<Vec<String>, NetnsError> {
    let output = ip(["netns", "list"])?;
    // Lines look like `name` or `name (id: 3)`.
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Whether this process can build a [`NetnsCluster`]. Tests call this first
/// and skip, printing [`netns_unavailable_reason`], when it is `false`.
///
/// Checks that the process runs as root and `ip` works, then creates and
/// removes a one-host probe cluster (namespace, bridge, veth pair) and enters
/// it from a thread. The answer is computed once per process.
pub fn can_create_netns() -> bool {
    netns_unavailable_reason().is_none()
}

/// Why [`can_create_netns`] is `false` (e.g. `"not running as root (euid
/// 1000)"` or the failing `ip` command and its stderr); `None` when clusters
/// can be created.
pub fn netns_unavailable_reason() -> Option<String> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    REASON.get_or_init(probe).clone()
}

fn probe() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some(format!(
            "network namespaces need root, running as euid {euid}"
        ));
    }
    if let Err(error) = run_checked(ip_program(), ["-V"]) {
        return Some(format!("iproute2 `ip` is not usable: {error}"));
    }
    let result = NetnsCluster::create(&unique_prefix("lumen-probe"), 1).and_then(|cluster| {
        cluster.run_in(0, || ())?;
        cluster.destroy()
    });
    result
        .err()
        .map(|error| format!("cannot create a probe network namespace: {error}"))
}

/// `/run/netns/{namespace}` as a C string; `None` if the name holds a NUL.
fn netns_path(namespace: &str) -> Option<CString> {
    CString::new(format!("{NETNS_RUN_DIR}/{namespace}")).ok()
}

/// Moves the calling thread into the network namespace bound at `path`.
/// Async-signal-safe: usable between `fork` and `exec`.
fn enter_netns(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is an open descriptor owned by this function.
    let joined = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
    let result = if joined < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    };
    // SAFETY: `fd` is open, owned here and closed exactly once.
    unsafe { libc::close(fd) };
    result
}

/// Whether a process with id `pid` exists (a zombie counts as alive).
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks for existence and permission; nothing is
    // delivered.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Kills whatever still runs in `namespace`, then deletes it. A namespace that
/// is already gone, or disappears meanwhile (another process sweeping stale
/// namespaces), counts as removed.
fn remove_namespace(namespace: &str) -> Result<(), NetnsError> {
    let exists = || std::path::Path::new(NETNS_RUN_DIR).join(namespace).exists();
    if !exists() {
        return Ok(());
    }
    match kill_and_delete(namespace) {
        Err(_) if !exists() => Ok(()),
        result => result,
    }
}

fn kill_and_delete(namespace: &str) -> Result<(), NetnsError> {
    let pids = ip(["netns", "pids", namespace])?;
    let own_pid = std::process::id();
    for pid in String::from_utf8_lossy(&pids.stdout)
        .split_whitespace()
        .filter_map(|field| field.parse::<libc::pid_t>().ok())
        .filter(|&pid| pid > 0 && u32::try_from(pid).is_ok_and(|pid| pid != own_pid))
    {
        // SAFETY: plain kill(2) of a process listed as living in a namespace
        // we are deleting; a process that already exited gives ESRCH, which
        // is fine to ignore.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    ip(["netns", "delete", namespace])?;
    Ok(())
}
