//! Running iproute2's `ip` and turning failures into [`NetnsError`]s that carry
//! the command line and its stderr.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use crate::NetnsError;

/// The `ip` program: the first of `$PATH`, `/usr/sbin/ip`, `/sbin/ip`,
/// `/usr/bin/ip`, `/bin/ip` that exists (test runners often have a `$PATH`
/// without the sbin directories). Falls back to plain `ip`.
pub(crate) fn ip_program() -> &'static Path {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM.get_or_init(|| {
        let from_path = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .map(|dir| dir.join("ip"));
        let fixed = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
            .into_iter()
            .map(PathBuf::from);
        from_path
            .chain(fixed)
            .find(|candidate| candidate.is_file())
            .unwrap_or_else(|| PathBuf::from("ip"))
    })
}

/// Runs `program args...` to completion with stdin closed and returns its
/// output, or an error naming the command when it cannot start or exits
/// unsuccessfully.
pub(crate) fn run_checked<I, S>(program: &Path, args: I) -> Result<Output, NetnsError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<S> = args.into_iter().collect();
    let describe = || {
        std::iter::once(program.as_os_str())
            .chain(args.iter().map(AsRef::as_ref))
            .map(|part| part.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let output = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetnsError::Spawn {
            command: describe(),
            source,
        })?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(NetnsError::CommandFailed {
            command: describe(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Runs `ip args...`; see [`run_checked`].
pub(crate) fn ip<I, S>(args: I) -> Result<Output, NetnsError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_checked(ip_program(), args)
}
