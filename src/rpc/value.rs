//! References as values: what a reference travels as (its surrogate: the interface, its
//! version and the grain's key, never an address), and what a decoded reference calls through.
//!
//! A reference is bound where it is decoded: in a call's result, to whatever made the call
//! (the client, or a stub's invoker); in a grain's arguments, to that host's way of calling
//! grains. A result is decoded inside `bound`, which says what to bind to; arguments inside
//! the grain's call (`context::binding`). A reference decoded anywhere else is unbound, and
//! its calls fail with [`CallError::Unbound`] (never a panic).
//!
//! The surrogate, in compact formats (postcard, on the wire):
//!
//! ```text
//! head u8 | interface id, low 24 bits (3 bytes) | version u8 | [grain type u32] | key
//! head:   bits 0-2 the key's kind (as in a call's header), bit 3 a grain type follows
//!         (the grain's type is not the interface's own), bit 4 an observer a client hosts
//!         (its key: the client's observer instance and the observer's number), bits 5-7
//!         zero (refused otherwise)
//! key:    integer: zigzag varint; string: varint length and UTF-8; 128-bit id: varint;
//!         with an extension: the integer or id, then the string
//! ```
//!
//! The version is the sender's, for the record: a decoded reference calls with its receiver's
//! own interface (whose compatibility with the callee is decided per call, as for any call).
//! A reference costs exactly 4 bytes more than its key as a value (`GrainKey`'s own
//! encoding: a kind byte, then the same body), and 4 more when it carries a grain type. In
//! human-readable formats (JSON) it is `{"interface": "Room", "version": 1, "key": …}`, with `"grain_type"`
//! when it is not the interface's own.
//!
//! [`CallError::Unbound`]: crate::error::CallError::Unbound

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::reference::{Checked, GrainRef, Via};
use crate::interface::{Interface, InterfaceInfo};
use crate::proto::ids::{GrainId, GrainKey, GrainType};
use crate::proto::wire::rpc::MAX_KEY_STRING;

/// The head's flag: the grain's type follows the version.
const OTHER_TYPE: u8 = 0x08;
/// The head's flag: an observer a client hosts.
const OBSERVER: u8 = 0x10;
/// The head's bits a reference may set (the rest are for later versions, and refused now).
const KNOWN: u8 = 0x1f;
/// The interface id's bits carried: a reference of another interface is refused unless their
/// ids agree in all 24 (see GUIDE.md's "References and calls both ways").
const IFACE_BITS: u32 = 0x00ff_ffff;

/// What decoded references call through: grains' and observers'.
#[derive(Debug, Clone)]
pub(crate) struct Binding {
    pub(crate) grains: Via,
    pub(crate) observers: Via,
}

thread_local! {
    /// What references decoded on this thread now are bound to (set by [`bound`]).
    static BINDING: RefCell<Option<Binding>> = const { RefCell::new(None) };
}

/// Runs `decode` with references decoded in it bound as `binding` says (restoring what was
/// bound before, so decodes may nest).
pub(crate) fn bound<T>(binding: Binding, decode: impl FnOnce() -> T) -> T {
    struct Restore(Option<Binding>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            BINDING.with(|b| *b.borrow_mut() = previous);
        }
    }
    let _restore = Restore(BINDING.with(|b| b.borrow_mut().replace(binding)));
    decode()
}

/// What a reference decoded now is bound to (an observer's or a grain's): the innermost
/// [`bound`], else the host of the grain call this task runs (its arguments), else nothing.
fn binding(observer: bool) -> Via {
    let pick = |b: &Binding| if observer { b.observers.clone() } else { b.grains.clone() };
    BINDING
        .with(|b| b.borrow().as_ref().map(pick))
        .or_else(|| super::context::binding().as_ref().map(pick))
        .unwrap_or(Via::Unbound)
}

/// The head byte and the interface/version bytes of `r`'s surrogate.
fn head(r: &GrainRef) -> (u8, [u8; 4]) {
    let other = r.id.ty != r.info.grain_type;
    let head =
        r.id.key.tag() | if other { OTHER_TYPE } else { 0 } | if r.observer { OBSERVER } else { 0 };
    let [a, b, c, _] = r.info.id.0.to_le_bytes();
    (head, [a, b, c, r.info.version])
}

impl Serialize for GrainRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            let other = (self.id.ty != self.info.grain_type).then_some(self.id.ty.0);
            return Readable {
                interface: self.info.name.into(),
                version: self.info.version,
                grain_type: other,
                observer: self.observer,
                key: self.id.key.clone(),
            }
            .serialize(s);
        }
        let (head, meta) = head(self);
        let mut t = s.serialize_tuple(3)?;
        t.serialize_element(&head)?;
        t.serialize_element(&meta)?;
        t.serialize_element(&Body(self))?;
        t.end()
    }
}

/// The surrogate's variable part: the grain type if it is not the interface's, and the key.
struct Body<'a>(&'a GrainRef);

impl Serialize for Body<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let other = r.id.ty != r.info.grain_type;
        let mut t = s.serialize_tuple(body_len(r.id.key.tag(), other))?;
        if other {
            t.serialize_element(&r.id.ty.0.to_le_bytes())?;
        }
        match &r.id.key {
            GrainKey::Int(i) => t.serialize_element(i)?,
            GrainKey::Str(k) => t.serialize_element(&**k)?,
            GrainKey::Id(u) => t.serialize_element(u)?,
            GrainKey::IntExt(i, k) => {
                t.serialize_element(i)?;
                t.serialize_element(&**k)?;
            }
            GrainKey::IdExt(u, k) => {
                t.serialize_element(u)?;
                t.serialize_element(&**k)?;
            }
        }
        t.end()
    }
}

/// The number of elements in a body: the grain type, the key's one or two parts.
fn body_len(tag: u8, other: bool) -> usize {
    usize::from(other) + if tag >= 3 { 2 } else { 1 }
}

/// The human-readable form.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Readable<'a> {
    interface: std::borrow::Cow<'a, str>,
    version: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    grain_type: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    observer: bool,
    key: GrainKey,
}

/// Decodes a reference of `R`'s interface (what a generated reference's `Deserialize` calls),
/// bound to what decodes it. A reference of another interface, or of a kind or flag this
/// version does not know, is an error of the format's own type.
pub fn deserialize_typed<'de, R: Interface, D: Deserializer<'de>>(
    d: D,
) -> Result<Checked<R>, D::Error> {
    let r = deserialize_ref(R::info(), d)?;
    // Decoded with R's interface: the check holds.
    Checked::of(r).map_err(de::Error::custom)
}

/// Decodes a reference of interface `info`, bound to what decodes it (see
/// [`deserialize_typed`]).
pub(crate) fn deserialize_ref<'de, D: Deserializer<'de>>(
    info: &'static InterfaceInfo,
    d: D,
) -> Result<GrainRef, D::Error> {
    let (ty, key, observer) = if d.is_human_readable() {
        let r = Readable::deserialize(d)?;
        if r.interface != info.name {
            return Err(de::Error::custom(format_args!(
                "a reference to a `{}` grain where a `{}` was expected",
                r.interface, info.name
            )));
        }
        check_key(&r.key).map_err(de::Error::custom)?;
        (r.grain_type.map_or(info.grain_type, GrainType), r.key, r.observer)
    } else {
        d.deserialize_tuple(3, Surrogate(info))?
    };
    if observer && !matches!(key, GrainKey::Id(_)) {
        return Err(de::Error::custom("an observer's key is a 128-bit id"));
    }
    let mut r = GrainRef::bound(binding(observer), info, GrainId { ty, key });
    r.observer = observer;
    Ok(r)
}

/// A key's strings are no longer than a call's header accepts.
fn check_key(key: &GrainKey) -> Result<(), &'static str> {
    match key {
        GrainKey::Str(s) | GrainKey::IntExt(_, s) | GrainKey::IdExt(_, s)
            if s.len() > MAX_KEY_STRING =>
        {
            Err("a reference's key string is too long")
        }
        _ => Ok(()),
    }
}

struct Surrogate(&'static InterfaceInfo);

impl<'de> Visitor<'de> for Surrogate {
    type Value = (GrainType, GrainKey, bool);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a reference to a `{}` grain", self.0.name)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let missing = || de::Error::custom("a reference cut short");
        let head: u8 = seq.next_element()?.ok_or_else(missing)?;
        let [a, b, c, _version]: [u8; 4] = seq.next_element()?.ok_or_else(missing)?;
        if head & !KNOWN != 0 || head & 0x07 > 4 {
            return Err(de::Error::custom(format_args!(
                "a reference of a kind this version does not know (head {head:#04x})"
            )));
        }
        let iface = u32::from_le_bytes([a, b, c, 0]);
        if iface != self.0.id.0 & IFACE_BITS {
            return Err(de::Error::custom(format_args!(
                "a reference to another interface (id {iface:06x}) where a `{}` was expected",
                self.0.name
            )));
        }
        let seed = BodySeed { tag: head & 0x07, other: head & OTHER_TYPE != 0 };
        let (ty, key) = seq.next_element_seed(seed)?.ok_or_else(missing)?;
        Ok((ty.unwrap_or(self.0.grain_type), key, head & OBSERVER != 0))
    }
}

struct BodySeed {
    tag: u8,
    other: bool,
}

impl<'de> DeserializeSeed<'de> for BodySeed {
    type Value = (Option<GrainType>, GrainKey);

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_tuple(body_len(self.tag, self.other), self)
    }
}

impl<'de> Visitor<'de> for BodySeed {
    type Value = (Option<GrainType>, GrainKey);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a reference's grain type and key")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        fn next<'de, T: Deserialize<'de>, A: SeqAccess<'de>>(seq: &mut A) -> Result<T, A::Error> {
            seq.next_element()?.ok_or_else(|| de::Error::custom("a reference cut short"))
        }
        fn text<'de, A: SeqAccess<'de>>(seq: &mut A) -> Result<Arc<str>, A::Error> {
            let s: String = next(seq)?;
            if s.len() > MAX_KEY_STRING {
                return Err(de::Error::custom("a reference's key string is too long"));
            }
            Ok(s.into())
        }
        let ty = match self.other {
            true => Some(GrainType(u32::from_le_bytes(next(&mut seq)?))),
            false => None,
        };
        let key = match self.tag {
            0 => GrainKey::Int(next(&mut seq)?),
            1 => GrainKey::Str(text(&mut seq)?),
            2 => GrainKey::Id(next(&mut seq)?),
            3 => GrainKey::IntExt(next(&mut seq)?, text(&mut seq)?),
            _ => GrainKey::IdExt(next(&mut seq)?, text(&mut seq)?),
        };
        Ok((ty, key))
    }
}

/// `Room/7`, `Player/ann`: the interface's name and the grain's key (and its type when it is
/// not the interface's own).
impl fmt::Display for GrainRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.info.name)?;
        if let (true, GrainKey::Id(k)) = (self.observer, &self.id.key) {
            // The client's observer instance and the observer's number.
            return write!(f, "/observer:{:016x}.{}", k >> 64, *k as u64);
        }
        if self.id.ty != self.info.grain_type {
            write!(f, "@{}", self.id.ty)?;
        }
        match &self.id.key {
            GrainKey::Str(s) => write!(f, "/{s}"),
            GrainKey::IntExt(i, s) => write!(f, "/{i}+{s}"),
            GrainKey::IdExt(u, s) => write!(f, "/{u:032x}+{s}"),
            key => write!(f, "/{key}"),
        }
    }
}
