//! The PMI-2 wire protocol, sans-IO.
//!
//! ```text
//! client: cmd=init pmi_version=2 pmi_subversion=0\n            (PMI-1 framing, once)
//! server: cmd=response_to_init rc=0 pmi_version=2 pmi_subversion=0\n
//! client: "44    cmd=fullinit;pmijobid=7.0;pmirank=3;threaded=FALSE;"
//! server: "..    cmd=fullinit-response;rc=0;pmi-version=2;pmi-subversion=0;rank=3;size=6;appnum=-1;debugged=FALSE;pmiverbose=FALSE;"
//! client: cmd=kvs-put;key=K;value=V;      server: cmd=kvs-put-response;rc=0;
//! client: cmd=kvs-fence;                  server: cmd=kvs-fence-response;rc=0;   (after every rank fenced)
//! client: cmd=kvs-get;jobid=J;srcid=-1;key=K;  server: cmd=kvs-get-response;rc=0;found=TRUE;value=V;
//! client: cmd=finalize;                   server: cmd=finalize-response;rc=0;
//! ```
//!
//! After the init line every message is a 6-byte ASCII decimal length,
//! left-aligned and space-padded (`"44    "`), followed by that many bytes of
//! `key=value;` records, the first being `cmd=`. MPICH escapes a `;` inside a
//! value as `;;`; Slurm's server does not understand the escape, so
//! [`encode`] refuses `;` instead and Lumen only sends hex.
//!
//! The init line must travel alone: Slurm reads it with one `read(fd, buf,
//! 64)`, so a fullinit written right behind it would be swallowed. The client
//! waits for `response_to_init` first.

use super::{excerpt, PmiError};

/// The first line a PMI-2 client sends.
pub(crate) const INIT_LINE: &str = "cmd=init pmi_version=2 pmi_subversion=0\n";
/// Width of the length prefix.
pub(crate) const LENGTH_BYTES: usize = 6;
/// Largest body a 6-digit length can announce.
pub(crate) const MAX_BODY: usize = 999_999;
/// Longest value the servers accept (Slurm's and MPICH's `PMI2_MAX_VALLEN`).
pub(crate) const MAX_VALUE: usize = 1024;
/// Longest key (`PMI2_MAX_KEYLEN`).
pub(crate) const MAX_KEY: usize = 64;

/// One PMI-2 message: a command and its `key=value` attributes, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pmi2Message {
    /// The `cmd` attribute.
    pub(crate) cmd: String,
    /// The other attributes, in wire order (keys may repeat).
    pub(crate) attributes: Vec<(String, String)>,
}

impl Pmi2Message {
    /// The first value of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The `rc` attribute as a number; a missing `rc` counts as success (the
    /// `kvs-fence-response` of some servers carries none).
    pub(crate) fn rc(&self) -> Result<i64, PmiError> {
        match self.get("rc") {
            None => Ok(0),
            Some(rc) => rc.trim().parse().map_err(|_| PmiError::Malformed {
                message: excerpt(rc),
                reason: "rc is not an integer",
            }),
        }
    }

    /// Fails unless this is `expected` with `rc=0`.
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
        let rc = self.rc()?;
        if rc != 0 {
            return Err(PmiError::Failed {
                command,
                rc,
                message: self.get("errmsg").map(str::to_owned),
            });
        }
        Ok(())
    }
}

fn check_text(what: &'static str, text: &str, max: usize) -> Result<(), PmiError> {
    let invalid = |reason| PmiError::InvalidArgument {
        what,
        value: excerpt(text),
        reason,
    };
    if text.len() > max {
        return Err(invalid("it is longer than the PMI-2 limit"));
    }
    if text.contains(';') {
        return Err(invalid(
            "it contains `;`, which Slurm's PMI-2 server cannot unescape",
        ));
    }
    if text.contains('\n') || text.contains('\0') {
        return Err(invalid("it contains a newline or NUL"));
    }
    if what == "key" && (text.is_empty() || text.contains('=')) {
        return Err(invalid("a key must be non-empty and hold no `=`"));
    }
    Ok(())
}

/// Frames one command: length prefix, `cmd=...;`, then `key=value;` per
/// attribute.
/// (Example: the unit test `examples::encode_frames_a_command`.)
pub(crate) fn encode(cmd: &str, attributes: &[(&str, &str)]) -> Result<Vec<u8>, PmiError> {
    check_text("key", cmd, MAX_KEY)?;
    let mut body = format!("cmd={cmd};");
    for (key, value) in attributes {
        check_text("key", key, MAX_KEY)?;
        check_text("value", value, MAX_VALUE)?;
        body.push_str(key);
        body.push('=');
        body.push_str(value);
        body.push(';');
    }
    if body.len() > MAX_BODY {
        return Err(PmiError::InvalidArgument {
            what: "value",
            value: excerpt(&body),
            reason: "the message is longer than a 6-digit length can say",
        });
    }
    let mut frame = format!("{:<width$}", body.len(), width = LENGTH_BYTES).into_bytes();
    frame.extend_from_slice(body.as_bytes());
    Ok(frame)
}

/// Parses one message body (without its length prefix): `cmd=X;k=v;...`,
/// with `;;` standing for a literal `;` inside a value.
pub(crate) fn parse_body(body: &[u8]) -> Result<Pmi2Message, PmiError> {
    let text = std::str::from_utf8(body).map_err(|_| PmiError::Malformed {
        message: String::from_utf8_lossy(body).into_owned(),
        reason: "not UTF-8",
    })?;
    let malformed = |reason| PmiError::Malformed {
        message: excerpt(text),
        reason,
    };
    let mut records = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ';' {
            if chars.peek() == Some(&';') {
                chars.next();
                current.push(';');
            } else {
                records.push(std::mem::take(&mut current));
            }
        } else {
            current.push(c);
        }
    }
    if !current.is_empty() {
        return Err(malformed("the last record is not terminated by `;`"));
    }
    let mut attributes = Vec::with_capacity(records.len());
    for record in records {
        let (key, value) = record
            .split_once('=')
            .ok_or_else(|| malformed("a record is not key=value"))?;
        attributes.push((key.to_owned(), value.to_owned()));
    }
    if attributes.first().map(|(k, _)| k.as_str()) != Some("cmd") {
        return Err(malformed("the first record is not cmd="));
    }
    let cmd = attributes.remove(0).1;
    Ok(Pmi2Message { cmd, attributes })
}

/// Collects bytes from the socket and yields whole PMI-2 messages.
#[derive(Debug, Default)]
pub(crate) struct Pmi2Decoder {
    buffer: Vec<u8>,
}

impl Pmi2Decoder {
    /// An empty decoder.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the socket.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes received and not yet decoded.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.buffer.len()
    }

    /// The next complete message, `None` when more bytes are needed.
    pub(crate) fn next_message(&mut self) -> Result<Option<Pmi2Message>, PmiError> {
        if self.buffer.len() < LENGTH_BYTES {
            return Ok(None);
        }
        let prefix = &self.buffer[..LENGTH_BYTES];
        let len: usize = std::str::from_utf8(prefix)
            .ok()
            .map(str::trim)
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse().ok())
            .ok_or_else(|| PmiError::Malformed {
                message: String::from_utf8_lossy(prefix).into_owned(),
                reason: "the length prefix is not a decimal number",
            })?;
        if self.buffer.len() < LENGTH_BYTES + len {
            return Ok(None);
        }
        let body: Vec<u8> = self
            .buffer
            .drain(..LENGTH_BYTES + len)
            .skip(LENGTH_BYTES)
            .collect();
        parse_body(&body).map(Some)
    }
}

/// The `fullinit` request for rank `rank` of PMI job `jobid` (`PMI_JOBID`).
pub(crate) fn fullinit(jobid: &str, rank: u32) -> Result<Vec<u8>, PmiError> {
    encode(
        "fullinit",
        &[
            ("pmijobid", jobid),
            ("pmirank", &rank.to_string()),
            ("threaded", "FALSE"),
        ],
    )
}

/// What `fullinit-response` says about this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FullInit {
    /// This rank.
    pub(crate) rank: u32,
    /// Ranks in the job.
    pub(crate) size: u32,
}

/// Reads a `fullinit-response`.
pub(crate) fn parse_fullinit(reply: &Pmi2Message) -> Result<FullInit, PmiError> {
    reply.expect("fullinit-response", "fullinit")?;
    let number = |key: &'static str| {
        reply
            .get(key)
            .and_then(|v| v.trim().parse::<u32>().ok())
            .ok_or_else(|| PmiError::Malformed {
                message: excerpt(&format!("{reply:?}")),
                reason: if key == "rank" {
                    "fullinit-response has no numeric rank"
                } else {
                    "fullinit-response has no numeric size"
                },
            })
    };
    Ok(FullInit {
        rank: number("rank")?,
        size: number("size")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_slurm_compatible_frames() {
        assert_eq!(encode("kvs-fence", &[]).unwrap(), b"14    cmd=kvs-fence;");
        let frame = fullinit("12.0", 3).unwrap();
        assert_eq!(
            frame,
            b"52    cmd=fullinit;pmijobid=12.0;pmirank=3;threaded=FALSE;"
        );
        assert_eq!(
            std::str::from_utf8(&frame[..6])
                .unwrap()
                .trim()
                .parse::<usize>()
                .unwrap(),
            frame.len() - 6
        );
    }

    #[test]
    fn refuses_what_cannot_travel() {
        for (key, value) in [
            ("k;", "v"),
            ("k", "a;b"),
            ("", "v"),
            ("a=b", "v"),
            ("k", "x\ny"),
        ] {
            assert!(
                matches!(
                    encode("kvs-put", &[(key, value)]),
                    Err(PmiError::InvalidArgument { .. })
                ),
                "{key:?} {value:?}"
            );
        }
        let long = "a".repeat(MAX_VALUE + 1);
        assert!(encode("kvs-put", &[("k", &long)]).is_err());
        assert!(encode("kvs-put", &[("k", &long[1..])]).is_ok());
    }

    #[test]
    fn decodes_split_and_batched_replies() {
        let wire: Vec<u8> = [
            "cmd=kvs-get-response;rc=0;found=TRUE;value=00ff;;x;extra=;more=1;",
            "cmd=kvs-put-response;rc=0;",
        ]
        .iter()
        .flat_map(|body| format!("{:<6}{body}", body.len()).into_bytes())
        .collect();
        let mut decoder = Pmi2Decoder::new();
        let mut messages = Vec::new();
        for chunk in wire.chunks(5) {
            decoder.push(chunk);
            while let Some(message) = decoder.next_message().unwrap() {
                messages.push(message);
            }
        }
        assert_eq!(decoder.pending(), 0);
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert_eq!(messages[0].cmd, "kvs-get-response");
        assert_eq!(messages[0].get("value"), Some("00ff;x"));
        assert_eq!(messages[0].get("extra"), Some(""));
        assert_eq!(messages[0].rc().unwrap(), 0);
        messages[1].expect("kvs-put-response", "kvs-put").unwrap();
    }

    #[test]
    fn reads_fullinit_response() {
        let reply = parse_body(b"cmd=fullinit-response;rc=0;pmi-version=2;pmi-subversion=0;rank=3;size=6;appnum=-1;debugged=FALSE;pmiverbose=FALSE;").unwrap();
        assert_eq!(
            parse_fullinit(&reply).unwrap(),
            FullInit { rank: 3, size: 6 }
        );
        let failed = parse_body(b"cmd=fullinit-response;rc=3;rank=0;size=1;").unwrap();
        assert!(matches!(
            parse_fullinit(&failed),
            Err(PmiError::Failed { rc: 3, .. })
        ));
        let no_size = parse_body(b"cmd=fullinit-response;rc=0;rank=0;").unwrap();
        assert!(matches!(
            parse_fullinit(&no_size),
            Err(PmiError::Malformed { .. })
        ));
        let other = parse_body(b"cmd=kvs-put-response;rc=0;").unwrap();
        assert!(matches!(
            parse_fullinit(&other),
            Err(PmiError::UnexpectedReply { .. })
        ));
    }

    #[test]
    fn failed_replies_carry_the_server_message() {
        let reply =
            parse_body(b"cmd=kvs-fence-response;rc=1;errmsg=mpi/pmi2: failed to send temp kvs;")
                .unwrap();
        let error = reply.expect("kvs-fence-response", "kvs-fence").unwrap_err();
        assert!(
            error.to_string().contains("failed to send temp kvs"),
            "{error}"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b"abcdefcmd=x;"[..],
            b"3     x=y",
            b"-1    ",
            b"5     cmd=x",
        ] {
            let mut decoder = Pmi2Decoder::new();
            decoder.push(bad);
            match decoder.next_message() {
                Ok(None) | Err(PmiError::Malformed { .. }) => {}
                other => panic!("{:?} gave {other:?}", String::from_utf8_lossy(bad)),
            }
        }
        for bad in [&b"cmd=x"[..], b"x=y;", b"cmd=x;novalue;", b"\xff;"] {
            assert!(
                parse_body(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}

/// The examples of this module's docs, as tests (their items are crate-private).
#[cfg(test)]
mod examples {
    use super::encode;

    #[test]
    fn encode_frames_a_command() -> Result<(), crate::pmi::PmiError> {
        let frame = encode("kvs-put", &[("key", "a"), ("value", "b")])?;
        assert_eq!(frame, b"26    cmd=kvs-put;key=a;value=b;");
        Ok(())
    }
}
