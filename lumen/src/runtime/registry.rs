//! Link-time registry of remote functions, actor classes and actor methods.
//!
//! `#[lumen::remote]` and `#[lumen::actor]` put one entry per function,
//! class and method into a [`linkme`] distributed slice: the linker gathers
//! them into one array, so every process running the binary has the same
//! table before `main` (no constructor ordering to worry about; the embedded
//! cluster's worker entry runs in a constructor and needs the table). Ids
//! are FNV-1a hashes of the module path, name and signature text
//! ([`stable_id`]), so they agree across processes and rebuilds of the same
//! source; an id that is absent at the executing rank is reported to the
//! caller as [`TaskErrorKind::UnknownFunction`](super::TaskErrorKind).

use std::any::Any;
use std::collections::HashMap;
use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::TaskErrorKind;
use super::object_ref::ObjectRef;

pub use linkme;

/// Builds an actor's state from encoded constructor arguments.
pub type ConstructFn = fn(&[u8]) -> Result<Box<dyn Any + Send>, TaskFailure>;
/// Runs an actor method on the actor's state with encoded arguments.
pub type MethodFn = fn(&mut (dyn Any + Send), &[u8]) -> Result<Vec<u8>, TaskFailure>;

/// A remote function: decodes its arguments, runs, encodes its result.
#[derive(Debug)]
pub struct RemoteEntry {
    /// Stable id.
    pub id: u64,
    /// `module::path::name`.
    pub name: &'static str,
    /// Runs the function on encoded arguments.
    pub invoke: fn(&[u8]) -> Result<Vec<u8>, TaskFailure>,
}

/// An actor class: its constructor.
#[derive(Debug)]
pub struct ActorClassEntry {
    /// Stable id.
    pub id: u64,
    /// `module::path::Type`.
    pub name: &'static str,
    /// Runs `Type::new` on encoded arguments.
    pub construct: ConstructFn,
}

/// A method of an actor class.
#[derive(Debug)]
pub struct ActorMethodEntry {
    /// Stable id.
    pub id: u64,
    /// Id of the class.
    pub class_id: u64,
    /// `module::path::Type::method`.
    pub name: &'static str,
    /// Runs the method on the actor's state.
    pub invoke: MethodFn,
}

/// Every `#[lumen::remote]` function of the binary.
#[linkme::distributed_slice]
pub static REMOTE_FUNCTIONS: [RemoteEntry];

/// Every `#[lumen::actor]` class of the binary.
#[linkme::distributed_slice]
pub static ACTOR_CLASSES: [ActorClassEntry];

/// Every method of every actor class.
#[linkme::distributed_slice]
pub static ACTOR_METHODS: [ActorMethodEntry];

struct Tables {
    functions: HashMap<u64, &'static RemoteEntry>,
    classes: HashMap<u64, &'static ActorClassEntry>,
    methods: HashMap<u64, &'static ActorMethodEntry>,
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| Tables {
        functions: REMOTE_FUNCTIONS.iter().map(|e| (e.id, e)).collect(),
        classes: ACTOR_CLASSES.iter().map(|e| (e.id, e)).collect(),
        methods: ACTOR_METHODS.iter().map(|e| (e.id, e)).collect(),
    })
}

/// The remote function with this id.
pub(crate) fn function(id: u64) -> Option<&'static RemoteEntry> {
    tables().functions.get(&id).copied()
}

/// The actor class with this id.
pub(crate) fn class(id: u64) -> Option<&'static ActorClassEntry> {
    tables().classes.get(&id).copied()
}

/// The actor method with this id.
pub(crate) fn method(id: u64) -> Option<&'static ActorMethodEntry> {
    tables().methods.get(&id).copied()
}

/// Ids of everything registered, sorted: part of the build id.
pub(crate) fn registered_ids() -> Vec<u64> {
    let mut ids: Vec<u64> = REMOTE_FUNCTIONS
        .iter()
        .map(|e| e.id)
        .chain(ACTOR_CLASSES.iter().map(|e| e.id))
        .chain(ACTOR_METHODS.iter().map(|e| e.id))
        .collect();
    ids.sort_unstable();
    ids
}

/// FNV-1a (64 bit) of `text`, usable in constants.
pub const fn stable_id(text: &str) -> u64 {
    let bytes = text.as_bytes();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// How a task failed where it ran, before the runtime adds the function
/// name and rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFailure {
    /// The kind.
    pub kind: TaskErrorKind,
    /// The message.
    pub message: String,
}

impl TaskFailure {
    /// A failure of `kind`.
    pub fn new(kind: TaskErrorKind, message: impl Into<String>) -> Self {
        TaskFailure {
            kind,
            message: message.into(),
        }
    }

    /// The state handed to a method is not of the method's class.
    pub fn wrong_actor_class() -> Self {
        TaskFailure::new(
            TaskErrorKind::UnknownFunction,
            "method called on an actor of another class",
        )
    }
}

/// Results of remote functions that may fail: `Ok(v)` becomes the value,
/// `Err(e)` a task error with `e`'s text.
pub trait TaskReturn {
    /// The value type.
    type Output;
    /// Splits into value or failure.
    fn into_task_result(self) -> Result<Self::Output, TaskFailure>;
}

impl<T, E: std::fmt::Display> TaskReturn for Result<T, E> {
    type Output = T;
    fn into_task_result(self) -> Result<T, TaskFailure> {
        self.map_err(|e| TaskFailure::new(TaskErrorKind::Error, e.to_string()))
    }
}

/// An argument as it travels: a value, or a reference resolved where the
/// task runs.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound(serialize = "T: Serialize", deserialize = "T: DeserializeOwned"))]
pub enum Arg<T> {
    /// The value itself.
    Value(T),
    /// An object to fetch first.
    Ref(ObjectRef<T>),
}

impl<T: DeserializeOwned> Arg<T> {
    /// The value, fetching it when it is a reference.
    pub fn resolve(self) -> Result<T, TaskFailure> {
        match self {
            Arg::Value(value) => Ok(value),
            Arg::Ref(reference) => reference.get().map_err(|e| {
                TaskFailure::new(
                    TaskErrorKind::DependencyFailed,
                    format!("argument {}: {e}", reference.id()),
                )
            }),
        }
    }
}

/// What a remote call's argument can be given as: the value, or an
/// `ObjectRef` to it (owned or borrowed), which the executing rank resolves.
pub trait IntoArg<T> {
    /// The argument.
    fn into_arg(self) -> Arg<T>;
}

impl<T: Serialize> IntoArg<T> for T {
    fn into_arg(self) -> Arg<T> {
        Arg::Value(self)
    }
}

impl<T> IntoArg<T> for ObjectRef<T> {
    fn into_arg(self) -> Arg<T> {
        Arg::Ref(self)
    }
}

impl<T> IntoArg<T> for &ObjectRef<T> {
    fn into_arg(self) -> Arg<T> {
        Arg::Ref(self.clone())
    }
}

/// Decodes a task's argument tuple.
pub fn decode_args<A: DeserializeOwned>(bytes: &[u8]) -> Result<A, TaskFailure> {
    bincode::deserialize(bytes)
        .map_err(|e| TaskFailure::new(TaskErrorKind::Codec, format!("decoding the arguments: {e}")))
}

/// Encodes a task's result.
pub fn encode_output<T: Serialize>(value: &T) -> Result<Vec<u8>, TaskFailure> {
    bincode::serialize(value)
        .map_err(|e| TaskFailure::new(TaskErrorKind::Codec, format!("encoding the result: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_fnv1a() {
        // Reference values of FNV-1a 64.
        assert_eq!(stable_id(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_id("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(stable_id("m::add(u64, u64)"), stable_id("m::add(u32, u32)"));
    }
}
