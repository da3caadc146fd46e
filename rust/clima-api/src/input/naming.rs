//! The two namings `POST /input` accepts for a tweet's fields.
//!
//! The proto JSON mapping of `clima.v1.TweetInput` (`description`, `country`,
//! `weather`) is the canonical one. Load clients written for the reference
//! design send Spanish names (`descripcion`, `Pais`, `Clima`), so those are
//! accepted as aliases, in any letter case. [`SPANISH_ALIASES`] is the one
//! table of them; everything else still goes through the proto mapping, which
//! rejects unknown fields. One request uses one naming: a key of the other
//! naming is an error that names it.

use clima_proto::v1::TweetInput;
use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, Visitor};

/// Spanish alias (any letter case) → proto JSON name.
pub(crate) const SPANISH_ALIASES: &[(&str, &str)] =
    &[("descripcion", "description"), ("pais", "country"), ("clima", "weather")];

/// Which naming a tweet object used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Naming {
    /// The proto JSON names: `description`, `country`, `weather`.
    Proto,
    /// The Spanish aliases: `descripcion`, `pais`, `clima`.
    Spanish,
}

impl Naming {
    fn of(key: &str) -> Option<(Self, &'static str)> {
        if let Some((_, proto)) = SPANISH_ALIASES.iter().find(|(alias, _)| alias.eq_ignore_ascii_case(key)) {
            return Some((Self::Spanish, proto));
        }
        SPANISH_ALIASES.iter().find(|(_, proto)| *proto == key).map(|(_, proto)| (Self::Proto, *proto))
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Proto => "description/country/weather",
            Self::Spanish => "descripcion/pais/clima",
        }
    }
}

/// One tweet object as sent, decoded through the proto mapping, with the
/// naming it used and the first key that showed it (for error paths).
#[derive(Debug)]
pub(crate) struct NamedInput {
    pub(crate) input: TweetInput,
    pub(crate) naming: Option<(Naming, String)>,
}

impl<'de> de::Deserialize<'de> for NamedInput {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(NamedInputVisitor)
    }
}

/// Why two objects of one request disagree: the error message, naming both.
pub(crate) fn mixed_naming_message(key: &str, first: (Naming, &str)) -> String {
    format!(
        "`{key}` is not of the naming this request started with (`{}`, {}); use one naming per request",
        first.1,
        first.0.describe()
    )
}

struct NamedInputVisitor;

impl<'de> Visitor<'de> for NamedInputVisitor {
    type Value = NamedInput;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a tweet object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<NamedInput, A::Error> {
        let mut renaming = Renaming { map, naming: None };
        let input = de::Deserialize::deserialize(de::value::MapAccessDeserializer::new(&mut renaming))?;
        Ok(NamedInput { input, naming: renaming.naming })
    }
}

/// Hands the proto mapping each key under its proto name.
struct Renaming<A> {
    map: A,
    naming: Option<(Naming, String)>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Renaming<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        let Some(key) = self.map.next_key::<String>()? else { return Ok(None) };
        let name = match Naming::of(&key) {
            Some((naming, proto)) => {
                match &self.naming {
                    None => self.naming = Some((naming, key.clone())),
                    Some((first, first_key)) if *first != naming => {
                        // Failing on the key's value makes the error's path end in the key.
                        let message = mixed_naming_message(&key, (*first, first_key));
                        return self.map.next_value_seed(Fail(message)).map(|never| match never {});
                    }
                    Some(_) => {}
                }
                proto.to_owned()
            }
            // Unknown: the proto mapping rejects it by its name as sent.
            None => key,
        };
        seed.deserialize(name.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

/// A value that fails with its message, whatever it holds.
struct Fail(String);

enum Never {}

impl<'de> DeserializeSeed<'de> for Fail {
    type Value = Never;

    fn deserialize<D: Deserializer<'de>>(self, _deserializer: D) -> Result<Never, D::Error> {
        Err(de::Error::custom(self.0))
    }
}
