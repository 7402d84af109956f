//! What makes two requests "the same": normalisation, the exact key and the semantic prompt.
//!
//! **Normalisation.** Each message is its role (trimmed, lowercased) and its content with runs
//! of whitespace collapsed to one space and the ends trimmed. Case and punctuation are kept:
//! `US` and `us` are different questions, and the semantic path catches harmless rewordings.
//!
//! **Exact key.** sha256 of the normalised messages plus the sampling settings that change the
//! answer: `temperature`, `top_p`, `top_k`, `seed`, `max_tokens` and the set of `stop` strings
//! (sorted, deduplicated). With `temperature <= 0` decoding is greedy, so `top_p`, `top_k` and
//! `seed` cannot change the answer and are left out of the key. With `temperature > 0` the
//! answer is one sample from a distribution: the key then means "a sample drawn with exactly
//! these settings". With a `seed` it is the same sample (same model); without one it is *a*
//! sample, not the one a new generation would draw. That is why, online, the default serves
//! exact hits to temperature-0 requests only (`cache.online = "exact-deterministic"`); offline,
//! a sample drawn under the same settings is a fair answer. `logprobs` is not part of the key:
//! a request asking for log-probabilities is never answered from the cache (see
//! [`super::read_mode`]).
//!
//! Entries imported without sampling settings carry an "any sampling" key (the messages
//! alone); a lookup probes its own key first, then that one.
//!
//! **Semantic prompt.** Only single-turn requests (any number of `system` messages, then one
//! `user` message) are matched by meaning: with earlier turns, the same last question can mean
//! something else ("and in 1990?"). Their system messages must match exactly (a hash of them
//! travels with the entry): "answer in French" changes every answer. The text matched by
//! meaning, and embedded by the router, is the user message (the router's routing text for
//! such a request).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine::{ChatMessage, Sampling};

/// Domain separation for the key hash; bump it if the encoding changes.
const KEY_DOMAIN: &[u8] = b"outpost-cache-key/1\0";

/// The exact key of a request: one hash with its sampling settings and one without.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExactKey {
    /// Messages and sampling settings.
    pub(crate) full: [u8; 32],
    /// Messages alone (matches entries imported without sampling settings).
    pub(crate) any: [u8; 32],
}

impl ExactKey {
    /// The full key in hex, for logs.
    pub fn hex(&self) -> String {
        self.full.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A normalised message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Trimmed, lowercased role.
    pub role: String,
    /// Content with whitespace collapsed.
    pub content: String,
}

/// The sampling settings an exact key depends on (the settings that do not matter under
/// greedy decoding are `None`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySampling {
    /// Temperature (0 = greedy; negative values count as 0).
    pub temperature: f32,
    /// Nucleus mass; `None` when greedy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Top-k cut; `None` when greedy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    /// Sampler seed; `None` when greedy or unseeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u32>,
    /// Tokens generated at most.
    pub max_tokens: u32,
    /// Stop strings, sorted and deduplicated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// sha256 of what else shapes the answer (the grammar from `response_format`/`grammar`,
    /// penalties, min-p, logit bias), when any is set: a JSON answer is never served for a
    /// plain question, nor the reverse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraint: Option<String>,
}

/// The hash of the answer-shaping settings beyond temperature, top-p/k and stops.
fn constraint_of(s: &Sampling) -> Option<String> {
    let plain = s.grammar.is_none()
        && s.min_p == 0.0
        && s.presence_penalty == 0.0
        && s.frequency_penalty == 0.0
        && s.repeat_penalty == 1.0
        && s.logit_bias.is_empty();
    if plain {
        return None;
    }
    let mut h = Sha256::new();
    field(&mut h, s.grammar.as_deref().unwrap_or(""));
    for v in [s.min_p, s.presence_penalty, s.frequency_penalty, s.repeat_penalty] {
        h.update(v.to_bits().to_le_bytes());
    }
    let mut bias = s.logit_bias.clone();
    bias.sort_by_key(|(t, _)| *t);
    for (t, b) in bias {
        h.update(t.to_le_bytes());
        h.update(b.to_bits().to_le_bytes());
    }
    Some(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

impl KeySampling {
    /// The key-relevant part of a request's sampling.
    pub fn from_sampling(sampling: &Sampling) -> Self {
        let mut stop = sampling.stop.clone();
        stop.sort();
        stop.dedup();
        let greedy = sampling.temperature.is_nan() || sampling.temperature <= 0.0;
        Self {
            temperature: if greedy { 0.0 } else { sampling.temperature },
            top_p: (!greedy).then_some(sampling.top_p),
            top_k: (!greedy).then_some(sampling.top_k),
            seed: if greedy { None } else { sampling.seed },
            max_tokens: sampling.max_tokens,
            stop,
            constraint: constraint_of(sampling),
        }
    }

    /// The same settings in canonical form (as [`KeySampling::from_sampling`] makes them):
    /// greedy-irrelevant settings dropped, stop strings sorted and deduplicated.
    pub fn canonical(mut self) -> Self {
        self.stop.sort();
        self.stop.dedup();
        if self.temperature.is_nan() || self.temperature <= 0.0 {
            self.temperature = 0.0;
            (self.top_p, self.top_k, self.seed) = (None, None, None);
        }
        self
    }

    /// Greedy decoding: the answer is a function of the prompt (and the model).
    pub fn deterministic(&self) -> bool {
        self.temperature == 0.0
    }

    fn hash_into(&self, h: &mut Sha256) {
        h.update(b"sampling\0");
        h.update(self.temperature.to_bits().to_le_bytes());
        for v in [self.top_p.map(f32::to_bits), self.top_k, self.seed] {
            match v {
                Some(v) => {
                    h.update([1]);
                    h.update(v.to_le_bytes());
                }
                None => h.update([0]),
            }
        }
        h.update(self.max_tokens.to_le_bytes());
        for s in &self.stop {
            field(h, s);
        }
        // Only when set, so keys of plain requests stay as they were.
        if let Some(c) = &self.constraint {
            h.update(b"constraint\0");
            field(h, c);
        }
    }
}

fn field(h: &mut Sha256, s: &str) {
    h.update(u64::try_from(s.len()).unwrap_or(u64::MAX).to_le_bytes());
    h.update(s.as_bytes());
}

/// Collapses runs of whitespace to one space and trims the ends.
pub fn normalize_text(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The normalised form of a conversation.
pub fn normalize(messages: &[ChatMessage]) -> Vec<Message> {
    messages
        .iter()
        .map(|m| Message { role: m.role.trim().to_lowercase(), content: normalize_text(&m.content) })
        .collect()
}

fn messages_hasher(messages: &[Message]) -> Sha256 {
    let mut h = Sha256::new();
    h.update(KEY_DOMAIN);
    h.update(u64::try_from(messages.len()).unwrap_or(u64::MAX).to_le_bytes());
    for m in messages {
        field(&mut h, &m.role);
        field(&mut h, &m.content);
    }
    h
}

/// The key of normalised messages under given sampling settings (`None`: any sampling).
pub(crate) fn key_of(messages: &[Message], sampling: Option<&KeySampling>) -> ExactKey {
    let base = messages_hasher(messages);
    let mut any = base.clone();
    any.update(b"any-sampling\0");
    let any: [u8; 32] = any.finalize().into();
    let full = match sampling {
        Some(s) => {
            let mut full = base;
            s.hash_into(&mut full);
            full.finalize().into()
        }
        None => any,
    };
    ExactKey { full, any }
}

/// The exact key of a request.
pub fn exact_key(messages: &[ChatMessage], sampling: &Sampling) -> ExactKey {
    key_of(&normalize(messages), Some(&KeySampling::from_sampling(sampling)))
}

/// The semantic part of normalised messages: `(context hash, user text)` when single-turn.
pub(crate) fn single_turn(messages: &[Message]) -> Option<(i64, String)> {
    let (last, before) = messages.split_last()?;
    if last.role != "user" || before.iter().any(|m| m.role != "system") {
        return None;
    }
    let mut h = Sha256::new();
    h.update(b"outpost-cache-context/1\0");
    for m in before {
        field(&mut h, &m.content);
    }
    let digest: [u8; 32] = h.finalize().into();
    let mut first = [0_u8; 8];
    first.copy_from_slice(&digest[..8]);
    Some((i64::from_le_bytes(first), last.content.clone()))
}

/// One request as the cache sees it: built from the request with [`Query::new`], given the
/// router's embedding with [`Query::with_embedding`], passed to `lookup` and then, with the
/// answer, to `store`.
#[derive(Clone, Debug)]
pub struct Query {
    /// The exact key.
    pub key: ExactKey,
    /// The normalised messages.
    pub(crate) messages: Vec<Message>,
    /// The key-relevant sampling settings (`None`: an import without them).
    pub(crate) sampling: Option<KeySampling>,
    /// `(hash of the system messages, user text)` for a single-turn request.
    pub(crate) semantic: Option<(i64, String)>,
    /// The router's embedding of [`Query::semantic_text`] (L2-normalised).
    pub embedding: Option<Vec<f32>>,
}

impl Query {
    /// The query for a request.
    pub fn new(messages: &[ChatMessage], sampling: &Sampling) -> Self {
        Self::from_normalized(normalize(messages), Some(KeySampling::from_sampling(sampling)))
    }

    pub(crate) fn from_normalized(messages: Vec<Message>, sampling: Option<KeySampling>) -> Self {
        let mut key = key_of(&messages, sampling.as_ref());
        let mut semantic = single_turn(&messages);
        // A constrained answer (a JSON schema, a grammar, penalties) only matches an answer
        // made under the same constraint: no imported plain answers, no semantic hits.
        if sampling.as_ref().is_some_and(|s| s.constraint.is_some()) {
            key.any = key.full;
            semantic = None;
        }
        Self { key, messages, sampling, semantic, embedding: None }
    }

    /// Adds the router's embedding of [`Query::semantic_text`]; ignored for multi-turn
    /// requests.
    pub fn with_embedding(mut self, embedding: Vec<f32>) -> Self {
        if self.semantic.is_some() {
            self.embedding = Some(embedding);
        }
        self
    }

    /// The text to embed for semantic matching: the user message of a single-turn request;
    /// `None` for multi-turn requests (matched exactly only).
    pub fn semantic_text(&self) -> Option<&str> {
        self.semantic.as_ref().map(|(_, text)| text.as_str())
    }

    /// Greedy decoding (temperature 0), or an import without sampling settings.
    pub fn deterministic(&self) -> bool {
        self.sampling.as_ref().is_none_or(KeySampling::deterministic)
    }

    /// A one-line rendering of the conversation, stored as the entry's prompt: the user text
    /// when single-turn, else `role: content` lines.
    pub(crate) fn prompt_text(&self) -> String {
        match &self.semantic {
            Some((_, text)) => text.clone(),
            None => self
                .messages
                .iter()
                .map(|m| format!("{}: {}", m.role, m.content))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }

    fn sampling(temperature: f32) -> Sampling {
        Sampling {
            temperature,
            top_p: 0.95,
            top_k: 40,
            seed: None,
            max_tokens: 256,
            stop: Vec::new(),
            logprobs: None,
            ..Sampling::defaults(&crate::config::GenerationConfig::default())
        }
    }

    #[test]
    fn a_grammar_or_penalty_changes_the_key_and_plain_keys_stay_as_they_were() {
        let m = [msg("user", "Is water wet?")];
        let plain = exact_key(&m, &sampling(0.0));
        let json = exact_key(&m, &Sampling { grammar: Some("root ::= \"{}\"".into()), ..sampling(0.0) });
        let penalised = exact_key(&m, &Sampling { presence_penalty: 0.5, ..sampling(0.0) });
        assert_ne!(plain.full, json.full);
        assert_ne!(plain.full, penalised.full);
        assert_ne!(json.full, penalised.full);
        assert!(KeySampling::from_sampling(&sampling(0.0)).constraint.is_none());
    }

    #[test]
    fn whitespace_and_greedy_irrelevant_settings_do_not_change_the_key() {
        let a = exact_key(&[msg("user", "What is  the capital\nof France? ")], &sampling(0.0));
        let mut s = sampling(0.0);
        s.top_p = 0.5;
        s.seed = Some(7);
        let b = exact_key(&[msg(" User", "What is the capital of France?")], &s);
        assert_eq!(a, b);
        let c = exact_key(&[msg("user", "what is the capital of France?")], &sampling(0.0));
        assert_ne!(a, c, "case is kept");
    }

    #[test]
    fn answer_changing_settings_change_the_key() {
        let m = [msg("user", "Tell me a joke")];
        let base = exact_key(&m, &sampling(0.7));
        let mut seeded = sampling(0.7);
        seeded.seed = Some(1);
        let mut longer = sampling(0.7);
        longer.max_tokens = 512;
        let mut stop = sampling(0.7);
        stop.stop = vec!["\n".into()];
        for other in [sampling(0.0), sampling(0.8), seeded, longer, stop] {
            let key = exact_key(&m, &other);
            assert_ne!(base.full, key.full, "{other:?}");
            assert_eq!(base.any, key.any, "the messages-only key ignores sampling");
        }
        let mut s1 = sampling(0.7);
        s1.stop = vec!["b".into(), "a".into(), "a".into()];
        let mut s2 = sampling(0.7);
        s2.stop = vec!["a".into(), "b".into()];
        assert_eq!(exact_key(&m, &s1), exact_key(&m, &s2), "stop is a set");
    }

    #[test]
    fn single_turn_needs_one_user_message_after_system_messages() {
        let q = Query::new(&[msg("system", "Be brief."), msg("user", " Hi  there ")], &sampling(0.0));
        assert_eq!(q.semantic_text(), Some("Hi there"));
        let q2 = Query::new(&[msg("system", "Be  brief. "), msg("user", "Hi there")], &sampling(0.0));
        assert_eq!(q.semantic.as_ref().map(|s| s.0), q2.semantic.as_ref().map(|s| s.0));
        let q3 = Query::new(&[msg("system", "Answer in French."), msg("user", "Hi there")], &sampling(0.0));
        assert_ne!(q.semantic.as_ref().map(|s| s.0), q3.semantic.as_ref().map(|s| s.0));
        let multi = [msg("user", "Hi"), msg("assistant", "Hello"), msg("user", "And in 1990?")];
        let q4 = Query::new(&multi, &sampling(0.0)).with_embedding(vec![1.0]);
        assert_eq!(q4.semantic_text(), None);
        assert!(q4.embedding.is_none(), "multi-turn requests are matched exactly only");
        assert_eq!(q4.prompt_text(), "user: Hi\nassistant: Hello\nuser: And in 1990?");
    }
}
