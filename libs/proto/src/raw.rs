//! `google.protobuf.Struct` kept in its encoded form. Every free-form part of an event
//! (properties, traits, context extras) is a `Struct`; decoding one builds a tree of
//! maps and strings that the ingest path never looks at. `RawStruct` takes the bytes as
//! they came, checked for well-formedness without allocating, and writes them out as
//! they are; whoever needs the contents decodes them then ([`RawStruct::to_json`]).

use std::fmt;

use bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType, check_wire_type, decode_varint, encode_key, encode_varint};
use prost::{DecodeError, Message};
use prost_types::Struct;

use crate::json::{json_to_struct, struct_to_json};

#[derive(Clone, Default, PartialEq, Eq)]
pub struct RawStruct(Vec<u8>);

impl RawStruct {
    pub fn from_struct(s: &Struct) -> Self {
        Self(s.encode_to_vec())
    }

    pub fn from_json(map: &serde_json::Map<String, serde_json::Value>) -> Self {
        Self::from_struct(&json_to_struct(map))
    }

    pub fn to_struct(&self) -> Result<Struct, DecodeError> {
        Struct::decode(self.0.as_slice())
    }

    pub fn to_json(&self) -> Result<serde_json::Map<String, serde_json::Value>, DecodeError> {
        self.to_struct().map(|s| struct_to_json(&s))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Checks that the bytes are a well-formed `Struct` all the way down (field keys,
    /// lengths, UTF-8 of strings), without building it; the reason when they are not.
    pub fn check(&self) -> Result<(), String> {
        check_struct(&mut self.0.as_slice(), 0)
    }
}

impl From<Struct> for RawStruct {
    fn from(s: Struct) -> Self {
        Self::from_struct(&s)
    }
}

impl fmt::Debug for RawStruct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_json() {
            Ok(json) => write!(f, "RawStruct({})", serde_json::Value::Object(json)),
            Err(_) => write!(f, "RawStruct(<{} malformed bytes>)", self.0.len()),
        }
    }
}

impl Message for RawStruct {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    /// Copies the field as it came: key, then value.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        _ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let len = match wire_type {
            WireType::Varint => {
                encode_key(tag, wire_type, &mut self.0);
                encode_varint(decode_varint(buf)?, &mut self.0);
                return Ok(());
            }
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::LengthDelimited => decode_varint(buf)? as usize,
            // Groups are long deprecated and Struct has none: refuse them.
            WireType::StartGroup | WireType::EndGroup => {
                return check_wire_type(WireType::LengthDelimited, wire_type);
            }
        };
        if buf.remaining() < len {
            // A truncated field: let prost say so in its own words.
            return check_wire_type(WireType::LengthDelimited, WireType::StartGroup);
        }
        encode_key(tag, wire_type, &mut self.0);
        if wire_type == WireType::LengthDelimited {
            encode_varint(len as u64, &mut self.0);
        }
        let start = self.0.len();
        self.0.resize(start + len, 0);
        buf.copy_to_slice(&mut self.0[start..]);
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

const MAX_DEPTH: usize = 64;

type Fields<'a> = Vec<(u32, WireType, &'a [u8])>;

/// Splits a message into its fields: (tag, wire type, value bytes for length-delimited).
fn fields<'a>(buf: &mut &'a [u8]) -> Result<Fields<'a>, String> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = decode_varint(buf).map_err(|e| e.to_string())?;
        let (tag, wire) = ((key >> 3) as u32, key & 7);
        let wire = WireType::try_from(wire).map_err(|e| e.to_string())?;
        let value: &[u8] = match wire {
            WireType::Varint => {
                decode_varint(buf).map_err(|e| e.to_string())?;
                &[]
            }
            WireType::SixtyFourBit | WireType::ThirtyTwoBit => {
                let n = if wire == WireType::SixtyFourBit { 8 } else { 4 };
                if buf.len() < n {
                    return Err("truncated field".into());
                }
                let (v, rest) = buf.split_at(n);
                *buf = rest;
                v
            }
            WireType::LengthDelimited => {
                let n = decode_varint(buf).map_err(|e| e.to_string())? as usize;
                if buf.len() < n {
                    return Err("truncated field".into());
                }
                let (v, rest) = buf.split_at(n);
                *buf = rest;
                v
            }
            WireType::StartGroup | WireType::EndGroup => {
                return Err("groups are not supported".into());
            }
        };
        out.push((tag, wire, value));
    }
    Ok(out)
}

fn expect(wire: WireType, want: WireType, what: &str) -> Result<(), String> {
    if wire == want {
        Ok(())
    } else {
        Err(format!("{what} has the wrong wire type"))
    }
}

/// `Struct { map<string, Value> fields = 1; }`
fn check_struct(buf: &mut &[u8], depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err("nested too deeply".into());
    }
    for (tag, wire, mut entry) in fields(buf)? {
        if tag != 1 {
            continue;
        }
        expect(wire, WireType::LengthDelimited, "a Struct entry")?;
        // Map entry: key = 1 (string), value = 2 (Value).
        for (tag, wire, mut value) in fields(&mut entry)? {
            match tag {
                1 => {
                    expect(wire, WireType::LengthDelimited, "a Struct key")?;
                    std::str::from_utf8(value).map_err(|_| "a Struct key is not UTF-8".to_owned())?;
                }
                2 => {
                    expect(wire, WireType::LengthDelimited, "a Struct value")?;
                    check_value(&mut value, depth + 1)?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// `Value { oneof kind { NullValue null_value = 1; double number_value = 2;
/// string string_value = 3; bool bool_value = 4; Struct struct_value = 5;
/// ListValue list_value = 6; } }`, `ListValue { repeated Value values = 1; }`
fn check_value(buf: &mut &[u8], depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err("nested too deeply".into());
    }
    for (tag, wire, mut value) in fields(buf)? {
        match tag {
            1 | 4 => expect(wire, WireType::Varint, "a null or bool value")?,
            2 => expect(wire, WireType::SixtyFourBit, "a number value")?,
            3 => {
                expect(wire, WireType::LengthDelimited, "a string value")?;
                std::str::from_utf8(value).map_err(|_| "a string value is not UTF-8".to_owned())?;
            }
            5 => {
                expect(wire, WireType::LengthDelimited, "a struct value")?;
                check_struct(&mut value, depth + 1)?;
            }
            6 => {
                expect(wire, WireType::LengthDelimited, "a list value")?;
                for (tag, wire, mut item) in fields(&mut value)? {
                    if tag == 1 {
                        expect(wire, WireType::LengthDelimited, "a list item")?;
                        check_value(&mut item, depth + 1)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::common::v1::{Context, Event};

    fn sample() -> serde_json::Map<String, serde_json::Value> {
        json!({"sku": "A-1", "price": 9.5, "tags": ["x", {"deep": [true, null]}], "gift": false, "note": null})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn bytes_pass_through_unchanged_and_decode_to_the_same_json() {
        let full = json_to_struct(&sample());
        let raw = RawStruct::from_struct(&full);
        assert_eq!(raw.to_json().unwrap(), sample());
        raw.check().unwrap();

        // Through an Event: what was sent is what is stored, byte for byte.
        let event = Event {
            message_id: "m-1".into(),
            properties: Some(raw.clone()),
            context: Some(Context {
                extra: Some(RawStruct::from_json(&sample())),
                ..Context::default()
            }),
            ..Event::default()
        };
        let bytes = event.encode_to_vec();
        let decoded = Event::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded, event);
        assert_eq!(decoded.encode_to_vec(), bytes);
        assert_eq!(decoded.properties.unwrap().to_json().unwrap(), sample());
    }

    #[test]
    fn malformed_contents_are_found_without_decoding() {
        let good = RawStruct::from_json(&sample());
        let mut bad_utf8 = RawStruct::from_json(&json!({"k": "ok"}).as_object().unwrap().clone());
        let pos = bad_utf8.0.windows(2).position(|w| w == b"ok").unwrap();
        bad_utf8.0[pos] = 0xff;
        assert!(bad_utf8.check().unwrap_err().contains("UTF-8"));
        let mut truncated = good.clone();
        truncated.0.truncate(good.0.len() - 3);
        assert!(truncated.check().is_err());
        assert!(truncated.to_struct().is_err(), "prost agrees");
        let wrong_wire = RawStruct(vec![0x0a, 0x04, 0x12, 0x02, 0x11, 0x01]);
        assert!(wrong_wire.check().is_err());
    }
}
