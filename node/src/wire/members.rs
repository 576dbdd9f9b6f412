//! Struct members matched by name, for the decoders written by hand on the hot path (what a
//! derived decoder does, without its field enum's string matching through `visit_str` and
//! with the members a shape only checks skipped rather than collected).

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};

/// A member name (escapes resolved). Read as a `str`: serde_json refuses control characters
/// in it, as in any string; from `serde_json::from_str` it does not re-check its UTF-8.
pub(crate) struct Name<M>(pub M);

/// The members a shape looks at, from a name.
pub(crate) trait Members: Sized {
    fn from_name(name: &[u8]) -> Self;
}

impl<'de, M: Members> Deserialize<'de> for Name<M> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor<M>(PhantomData<M>);
        impl<M: Members> Visitor<'_> for NameVisitor<M> {
            type Value = Name<M>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_bytes<E: de::Error>(self, name: &[u8]) -> Result<Self::Value, E> {
                Ok(Name(M::from_name(name)))
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
                self.visit_bytes(name.as_bytes())
            }
        }
        deserializer.deserialize_str(NameVisitor(PhantomData))
    }
}

/// Marks a member seen; a second one is an error, as in a derived decoder.
pub(crate) fn first<E: de::Error>(seen: &mut bool, name: &'static str) -> Result<(), E> {
    if std::mem::replace(seen, true) {
        return Err(E::duplicate_field(name));
    }
    Ok(())
}
