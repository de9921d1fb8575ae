//! `corvus.identity.v1.GetProfileResponse`, written by hand so that a server can send a
//! profile it holds encoded (the identity read model keeps each profile as the bytes of a
//! `Profile`) without decoding it and encoding it again. On the wire it is the generated
//! message: a client decodes `profile` as usual, and the bytes a server hands over are
//! written where the encoded `profile` would be (a message field and a bytes field are both
//! length-delimited).

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType, bytes as bytes_field, message, skip_field, string};
use prost::{DecodeError, Message};

use crate::identity::v1::{Profile, Score};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct GetProfileResponse {
    /// The profile as a client decoded it; empty in a response made with [`Self::encoded`].
    pub profile: Option<Profile>,
    /// The id that was asked for, when it was merged into profile.
    pub redirected_from: String,
    /// Why the profile carries no scores, when scoring could not be asked.
    pub scores_unavailable: String,
    /// The encoded `Profile` to send in place of `profile`.
    encoded: Option<Bytes>,
}

impl GetProfileResponse {
    /// A response carrying `profile`, the bytes of an encoded `corvus.identity.v1.Profile`,
    /// as they are.
    pub fn encoded(profile: Bytes, redirected_from: String) -> Self {
        Self {
            profile: None,
            redirected_from,
            scores_unavailable: String::new(),
            encoded: Some(profile),
        }
    }

    /// Puts scoring's scores and segments on the profile. An encoded profile gets them
    /// appended as the further fields they are: the read model's profiles hold none, and
    /// protobuf reads concatenated messages as one.
    pub fn add_scores(&mut self, scores: Vec<Score>, segments: Vec<String>) {
        if let Some(profile) = &mut self.profile {
            profile.scores.extend(scores);
            profile.segments.extend(segments);
            return;
        }
        let Some(bytes) = &self.encoded else { return };
        let more = Profile {
            scores,
            segments,
            ..Default::default()
        };
        let mut joined = Vec::with_capacity(bytes.len() + more.encoded_len());
        joined.extend_from_slice(bytes);
        more.encode_raw(&mut joined);
        self.encoded = Some(joined.into());
    }

    /// The profile, whichever way the response holds it.
    pub fn to_profile(&self) -> Result<Option<Profile>, DecodeError> {
        match &self.encoded {
            Some(bytes) => Profile::decode(bytes.clone()).map(Some),
            None => Ok(self.profile.clone()),
        }
    }
}

const NAME: &str = "GetProfileResponse";

impl Message for GetProfileResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match (&self.encoded, &self.profile) {
            (Some(bytes), _) => bytes_field::encode(1, bytes, buf),
            (None, Some(profile)) => message::encode(1, profile, buf),
            (None, None) => {}
        }
        if !self.redirected_from.is_empty() {
            string::encode(2, &self.redirected_from, buf);
        }
        if !self.scores_unavailable.is_empty() {
            string::encode(3, &self.scores_unavailable, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let field = match tag {
            1 => {
                // A profile sent twice merges, as protobuf has it.
                let mut profile = match self.encoded.take() {
                    Some(bytes) => Profile::decode(bytes)?,
                    None => self.profile.take().unwrap_or_default(),
                };
                let merged = message::merge(wire_type, &mut profile, buf, ctx);
                self.profile = Some(profile);
                merged.map_err(|e| (e, "profile"))
            }
            2 => string::merge(wire_type, &mut self.redirected_from, buf, ctx).map_err(|e| (e, "redirected_from")),
            3 => {
                string::merge(wire_type, &mut self.scores_unavailable, buf, ctx).map_err(|e| (e, "scores_unavailable"))
            }
            _ => return skip_field(wire_type, tag, buf, ctx),
        };
        field.map_err(|(mut e, name)| {
            e.push(NAME, name);
            e
        })
    }

    fn encoded_len(&self) -> usize {
        let profile = match (&self.encoded, &self.profile) {
            (Some(bytes), _) => bytes_field::encoded_len(1, bytes),
            (None, Some(profile)) => message::encoded_len(1, profile),
            (None, None) => 0,
        };
        let text = |tag, value: &String| match value.is_empty() {
            true => 0,
            false => string::encoded_len(tag, value),
        };
        profile + text(2, &self.redirected_from) + text(3, &self.scores_unavailable)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::v1::{ProfileIdentifier, Trait};

    /// The message as protobuf defines it, derived the usual way, to hold ours against.
    #[derive(Clone, PartialEq, Message)]
    struct Generated {
        #[prost(message, optional, tag = "1")]
        profile: Option<Profile>,
        #[prost(string, tag = "2")]
        redirected_from: String,
        #[prost(string, tag = "3")]
        scores_unavailable: String,
    }

    fn profile() -> Profile {
        Profile {
            profile_id: "01a205ab-7f4d-76e3-9853-1aa6f6968e09".to_owned(),
            identifiers: vec![ProfileIdentifier {
                kind: "email".to_owned(),
                value: "ada@example.com".to_owned(),
                ..Default::default()
            }],
            traits: vec![Trait {
                name: "plan".to_owned(),
                value: Some(prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue("pro".to_owned())),
                }),
                ..Default::default()
            }],
            event_count: 3,
            version: 7,
            ..Default::default()
        }
    }

    #[test]
    fn the_encoded_form_is_the_generated_message_on_the_wire() {
        for redirected_from in ["", "01a205ab-8db8-75b2-a4cd-6e320bbe4688"] {
            let generated = Generated {
                profile: Some(profile()),
                redirected_from: redirected_from.to_owned(),
                scores_unavailable: String::new(),
            };
            let encoded = GetProfileResponse::encoded(profile().encode_to_vec().into(), redirected_from.to_owned());
            let typed = GetProfileResponse {
                profile: Some(profile()),
                redirected_from: redirected_from.to_owned(),
                scores_unavailable: String::new(),
                encoded: None,
            };
            let wire = generated.encode_to_vec();
            assert_eq!(encoded.encode_to_vec(), wire);
            assert_eq!(encoded.encoded_len(), wire.len());
            assert_eq!(typed.encode_to_vec(), wire);
            assert_eq!(typed.encoded_len(), wire.len());
            assert_eq!(GetProfileResponse::decode(wire.as_slice()).unwrap(), typed);
            assert_eq!(encoded.to_profile().unwrap(), Some(profile()));
        }
    }

    #[test]
    fn scores_added_to_an_encoded_profile_decode_as_the_generated_message() {
        let scores = vec![Score {
            name: "segment".to_owned(),
            value: 2.0,
            label: "high_orders_high_revenue".to_owned(),
            ..Default::default()
        }];
        let segments = vec!["vip".to_owned()];
        let mut whole = profile();
        whole.scores = scores.clone();
        whole.segments = segments.clone();
        let mut encoded = GetProfileResponse::encoded(profile().encode_to_vec().into(), String::new());
        encoded.add_scores(scores.clone(), segments.clone());
        let wire = encoded.encode_to_vec();
        assert_eq!(encoded.encoded_len(), wire.len());
        let generated = Generated::decode(wire.as_slice()).unwrap();
        assert_eq!(generated.profile, Some(whole.clone()));
        assert_eq!(encoded.to_profile().unwrap(), Some(whole.clone()));

        let mut typed = GetProfileResponse {
            profile: Some(profile()),
            ..Default::default()
        };
        typed.add_scores(scores, segments);
        assert_eq!(typed.profile, Some(whole));

        let unavailable = GetProfileResponse {
            profile: Some(profile()),
            scores_unavailable: "scoring did not answer within 250ms".to_owned(),
            ..Default::default()
        };
        let wire = unavailable.encode_to_vec();
        assert_eq!(unavailable.encoded_len(), wire.len());
        assert_eq!(
            Generated::decode(wire.as_slice()).unwrap().scores_unavailable,
            unavailable.scores_unavailable
        );
        assert_eq!(GetProfileResponse::decode(wire.as_slice()).unwrap(), unavailable);
    }

    #[test]
    fn a_profile_sent_twice_merges_and_unknown_fields_are_skipped() {
        let mut first = profile();
        first.traits.clear();
        let mut second = Profile {
            version: 9,
            ..Default::default()
        };
        second.traits = profile().traits;
        let mut wire = Generated {
            profile: Some(first.clone()),
            ..Default::default()
        }
        .encode_to_vec();
        message::encode(1, &second, &mut wire);
        string::encode(99, &"from a newer server".to_owned(), &mut wire);
        let decoded = GetProfileResponse::decode(wire.as_slice()).unwrap();
        let mut merged = first;
        merged.merge(second.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.profile, Some(merged));
        assert_eq!(decoded.profile.unwrap().version, 9);
    }

    #[test]
    fn a_malformed_profile_names_the_field() {
        let wire = [0x0a, 0x02, 0x0a, 0x05];
        let err = GetProfileResponse::decode(wire.as_slice()).unwrap_err();
        assert!(err.to_string().contains("GetProfileResponse.profile"), "{err}");
    }
}
