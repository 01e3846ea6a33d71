//! The PMI-1 wire protocol, sans-IO: one command per line, space-separated
//! `key=value` attributes, the first being `cmd=` (MPICH's "simple" PMI, as
//! Hydra's `hydra_pmi_proxy` serves it over `PMI_FD`).
//!
//! ```text
//! client: cmd=init pmi_version=1 pmi_subversion=1
//! server: cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0
//! client: cmd=get_maxes              server: cmd=maxes kvsname_max=256 keylen_max=64 vallen_max=1024
//! client: cmd=get_my_kvsname         server: cmd=my_kvsname kvsname=kvs_123_0
//! client: cmd=put kvsname=S key=K value=V        server: cmd=put_result rc=0
//! client: cmd=barrier_in             server: cmd=barrier_out            (after every rank entered)
//! client: cmd=get kvsname=S key=K    server: cmd=get_result rc=0 value=V
//! client: cmd=finalize               server: cmd=finalize_ack
//! ```
//!
//! Values cannot hold spaces or newlines; Lumen only sends hex.

use super::{excerpt, PmiError};

/// The first line a PMI-1 client sends.
pub(crate) const INIT_LINE: &str = "cmd=init pmi_version=1 pmi_subversion=1\n";
/// Longest line the servers read (`PMIU_MAXLINE`).
pub(crate) const MAX_LINE: usize = 1024;
/// Value limit assumed when the server does not say (`vallen_max`).
pub(crate) const DEFAULT_MAX_VALUE: usize = 256;

/// One PMI-1 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pmi1Message {
    /// The `cmd` attribute.
    pub(crate) cmd: String,
    /// The other attributes in order.
    pub(crate) attributes: Vec<(String, String)>,
}

impl Pmi1Message {
    /// The first value of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Fails unless this is `expected` and its `rc` (when present) is 0.
    pub(crate) fn expect(
        &self,
        expected: &'static str,
        command: &'static str,
    ) -> Result<(), PmiError> {
        if self.cmd != expected {
            return Err(PmiError::UnexpectedReply {
                expected,
                got: excerpt(&format!("{self:?}")),
            });
        }
        if let Some(rc) = self.get("rc") {
            let rc: i64 = rc.parse().map_err(|_| PmiError::Malformed {
                message: excerpt(rc),
                reason: "rc is not an integer",
            })?;
            if rc != 0 {
                return Err(PmiError::Failed {
                    command,
                    rc,
                    message: self.get("msg").map(str::to_owned),
                });
            }
        }
        Ok(())
    }
}

fn check(what: &'static str, text: &str) -> Result<(), PmiError> {
    if text.is_empty() && what == "key" {
        return Err(PmiError::InvalidArgument {
            what,
            value: String::new(),
            reason: "a key must be non-empty",
        });
    }
    if text
        .chars()
        .any(|c| c == ' ' || c == '\n' || c == '=' && what == "key")
    {
        return Err(PmiError::InvalidArgument {
            what,
            value: excerpt(text),
            reason: "PMI-1 keys and values cannot hold spaces or newlines (keys no `=`)",
        });
    }
    Ok(())
}

/// One request line: `cmd=CMD k=v ...\n`.
/// (Example: the unit test `examples::encode_builds_a_request_line`.)
pub(crate) fn encode(cmd: &str, attributes: &[(&str, &str)]) -> Result<String, PmiError> {
    check("key", cmd)?;
    let mut line = format!("cmd={cmd}");
    for (key, value) in attributes {
        check("key", key)?;
        check("value", value)?;
        line.push(' ');
        line.push_str(key);
        line.push('=');
        line.push_str(value);
    }
    line.push('\n');
    if line.len() > MAX_LINE {
        return Err(PmiError::InvalidArgument {
            what: "value",
            value: excerpt(&line),
            reason: "the line is longer than PMI-1's 1024 bytes",
        });
    }
    Ok(line)
}

/// Parses one line (without its newline).
pub(crate) fn parse_line(line: &str) -> Result<Pmi1Message, PmiError> {
    let malformed = |reason| PmiError::Malformed {
        message: excerpt(line),
        reason,
    };
    let mut attributes = Vec::new();
    for word in line.split(' ').filter(|w| !w.is_empty()) {
        let (key, value) = word
            .split_once('=')
            .ok_or_else(|| malformed("a word is not key=value"))?;
        attributes.push((key.to_owned(), value.to_owned()));
    }
    if attributes.first().map(|(k, _)| k.as_str()) != Some("cmd") {
        return Err(malformed("the line does not start with cmd="));
    }
    let cmd = attributes.remove(0).1;
    Ok(Pmi1Message { cmd, attributes })
}

/// Collects bytes and yields whole lines as messages.
#[derive(Debug, Default)]
pub(crate) struct Pmi1Decoder {
    buffer: Vec<u8>,
}

impl Pmi1Decoder {
    /// An empty decoder.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the socket.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete line as a message; `None` when more bytes are needed.
    pub(crate) fn next_message(&mut self) -> Result<Option<Pmi1Message>, PmiError> {
        let Some(end) = self.buffer.iter().position(|&b| b == b'\n') else {
            if self.buffer.len() > 64 * MAX_LINE {
                return Err(PmiError::Malformed {
                    message: excerpt(&String::from_utf8_lossy(&self.buffer)),
                    reason: "no newline in 64 KiB",
                });
            }
            return Ok(None);
        };
        let line: Vec<u8> = self.buffer.drain(..=end).collect();
        let text = std::str::from_utf8(&line[..end]).map_err(|_| PmiError::Malformed {
            message: String::from_utf8_lossy(&line).into_owned(),
            reason: "not UTF-8",
        })?;
        parse_line(text.trim_end_matches('\r')).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_of_hydra_lines() {
        let mut decoder = Pmi1Decoder::new();
        let wire = "cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0\ncmd=maxes kvsname_max=256 keylen_max=64 vallen_max=1024\ncmd=get_result rc=0 value=abcd\n";
        let mut messages = Vec::new();
        for chunk in wire.as_bytes().chunks(7) {
            decoder.push(chunk);
            while let Some(m) = decoder.next_message().unwrap() {
                messages.push(m);
            }
        }
        assert_eq!(messages.len(), 3);
        messages[0].expect("response_to_init", "init").unwrap();
        assert_eq!(messages[1].get("vallen_max"), Some("1024"));
        assert_eq!(messages[2].get("value"), Some("abcd"));
    }

    #[test]
    fn errors_are_reported() {
        let failed = parse_line("cmd=get_result rc=-1 msg=key_not_found").unwrap();
        let error = failed.expect("get_result", "get").unwrap_err();
        assert!(error.to_string().contains("key_not_found"), "{error}");
        assert!(parse_line("put kvsname=x").is_err());
        assert!(parse_line("cmd=put kvsname").is_err());
        assert!(encode("put", &[("key", "a b")]).is_err());
        assert!(encode("put", &[("k=y", "ab")]).is_err());
        assert!(encode("put", &[("key", &"x".repeat(2000))]).is_err());
        let mut decoder = Pmi1Decoder::new();
        decoder.push(b"\xff\xfe\n");
        assert!(decoder.next_message().is_err());
    }
}

/// The examples of this module's docs, as tests (their items are crate-private).
#[cfg(test)]
mod examples {
    use super::encode;

    #[test]
    fn encode_builds_a_request_line() -> Result<(), crate::pmi::PmiError> {
        assert_eq!(
            encode("put", &[("kvsname", "kvs_1"), ("key", "a"), ("value", "b")])?,
            "cmd=put kvsname=kvs_1 key=a value=b\n"
        );
        Ok(())
    }
}
