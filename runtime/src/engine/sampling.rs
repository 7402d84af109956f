//! Per-sequence sampling: the sampler chain for a request, and log-probabilities read from the
//! logits of one sequence's position in a batch.

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;

use llama_cpp_2::token::logit_bias::LlamaLogitBias;

use super::{GenerateError, TokenLogprob, TopLogprob};

/// A request's sampling: the chain (logit bias, penalties, then greedy at temperature 0, else
/// top-k → top-p → min-p → temperature → seeded draw, llama-server's order) and, for structured
/// output, the grammar.
///
/// The grammar is applied lazily, as llama.cpp's common sampler does: a token is first drawn
/// without it and only checked against it; the grammar masks the whole vocabulary (a costly pass:
/// constrained decoding ran at half the speed of free decoding) only when that token is refused.
/// Greedy picks and draws are the same as with the grammar first in the chain: a token the
/// grammar allows keeps its place in the distribution, which the mask leaves unchanged for it.
pub(super) struct RequestSampler {
    chain: LlamaSampler,
    grammar: Option<LlamaSampler>,
}

impl RequestSampler {
    /// The next token from the logits at `index` of `ctx`'s last batch; the samplers accept it.
    pub(super) fn sample(&mut self, ctx: &LlamaContext<'_>, index: i32) -> LlamaToken {
        let Some(grammar) = self.grammar.as_mut() else {
            return self.chain.sample(ctx, index);
        };
        let candidates = || {
            let logits = ctx.get_logits_ith(index);
            LlamaTokenDataArray::from_iter(
                logits.iter().enumerate().map(|(i, &l)| LlamaTokenData::new(LlamaToken(i as i32), l, 0.0)),
                false,
            )
        };
        let mut all = candidates();
        all.apply_sampler(&mut self.chain);
        let drawn = all.selected_token();
        let allowed = drawn.is_some_and(|token| {
            let mut single = LlamaTokenDataArray::from_iter([LlamaTokenData::new(token, 1.0, 0.0)], false);
            single.apply_sampler(grammar);
            single.data.first().is_some_and(|d| d.logit().is_finite())
        });
        let token = match drawn {
            Some(token) if allowed => token,
            _ => {
                // Refused: the grammar masks everything it does not allow, then the chain draws.
                let mut all = candidates();
                all.apply_sampler(grammar);
                all.apply_sampler(&mut self.chain);
                all.selected_token().unwrap_or(LlamaToken(0))
            }
        };
        grammar.accept(token);
        self.chain.accept(token);
        token
    }
}

/// The request's sampler (see [`RequestSampler`]).
pub(super) fn sampler_for(model: &LlamaModel, s: &super::Sampling) -> Result<RequestSampler, GenerateError> {
    let n_vocab = model.n_vocab();
    let mut chain = Vec::new();
    if !s.logit_bias.is_empty() {
        let mut biases = Vec::with_capacity(s.logit_bias.len());
        for &(token, bias) in &s.logit_bias {
            if token < 0 || token >= n_vocab {
                return Err(GenerateError::Invalid {
                    param: "logit_bias",
                    message: format!("logit_bias names token {token}; the vocabulary has {n_vocab} tokens"),
                });
            }
            biases.push(LlamaLogitBias::new(LlamaToken(token), bias));
        }
        chain.push(LlamaSampler::logit_bias(n_vocab, &biases));
    }
    if s.repeat_penalty != 1.0 || s.frequency_penalty != 0.0 || s.presence_penalty != 0.0 {
        chain.push(LlamaSampler::penalties(
            n_vocab,
            super::PENALTY_LAST_N,
            s.repeat_penalty,
            s.frequency_penalty,
            s.presence_penalty,
        ));
    }
    let grammar = match &s.grammar {
        Some(grammar) => {
            Some(LlamaSampler::grammar(model, grammar, "root").map_err(|e| GenerateError::Invalid {
                param: "grammar",
                message: format!("llama.cpp cannot use this grammar: {e}"),
            })?)
        }
        None => None,
    };
    if s.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if s.top_k > 0 {
            chain.push(LlamaSampler::top_k(i32::try_from(s.top_k).unwrap_or(i32::MAX)));
        }
        if s.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(s.top_p, 1));
        }
        if s.min_p > 0.0 {
            chain.push(LlamaSampler::min_p(s.min_p, 1));
        }
        chain.push(LlamaSampler::temp(s.temperature));
        chain.push(LlamaSampler::dist(s.seed.unwrap_or_else(rand::random)));
    }
    Ok(RequestSampler { chain: LlamaSampler::chain_simple(chain), grammar })
}

/// The chosen token's log-probability under the raw distribution (one pass over the logits:
/// about 0.2 ms for a 150k vocabulary, next to tens of ms per decoded token).
pub(super) fn chosen_logprob(logits: &[f32], chosen: LlamaToken) -> f32 {
    logit_of(logits, chosen) - log_z(logits)
}

/// log Σ exp(logits), computed stably. Runs for every generated token over the whole vocabulary
/// (152k entries for Qwen-sized vocabularies), so it is written to vectorize: libm's `expf` is a
/// scalar call per entry (about a millisecond per token there, 3 % of a 0.5B model's decode step);
/// [`exp_neg`] is branch-free and the sums run in eight lanes.
fn log_z(logits: &[f32]) -> f32 {
    const LANES: usize = 8;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max;
    }
    let mut lanes = [0f32; LANES];
    let chunks = logits.chunks_exact(LANES);
    let rest: f32 = chunks.remainder().iter().map(|&l| exp_neg(l - max)).sum();
    for chunk in chunks {
        for (lane, &l) in lanes.iter_mut().zip(chunk) {
            *lane += exp_neg(l - max);
        }
    }
    max + (lanes.iter().sum::<f32>() + rest).ln()
}

/// e^x for x ≤ 0 (clamped at −87), relative error under 1e-5 (near 0: 1e-7): 2^(x·log2 e) split into a nearest
/// integer power, put straight into the exponent bits, and 2^f for f in [−½, ½] by a degree-6
/// polynomial. No branches or calls, so loops over it vectorize.
#[inline]
fn exp_neg(x: f32) -> f32 {
    let t = x.max(-87.0) * std::f32::consts::LOG2_E;
    let n = (t + 0.5).floor();
    let f = t - n;
    // 2^f on [−½, ½]: Taylor terms of e^(f ln 2), ln2^k / k!.
    let p = 1.0
        + f * (std::f32::consts::LN_2
            + f * (0.240_226_5
                + f * (0.055_504_11 + f * (0.009_618_129 + f * (0.001_333_355 + f * 0.000_154_035_3)))));
    // n is in [−125, 0]: a normal exponent.
    #[allow(clippy::cast_possible_truncation)]
    let bits = ((n as i32 + 127) as u32) << 23;
    p * f32::from_bits(bits)
}

fn logit_of(logits: &[f32], token: LlamaToken) -> f32 {
    usize::try_from(token.0).ok().and_then(|i| logits.get(i)).copied().unwrap_or(f32::NEG_INFINITY)
}

/// The chosen token's log-probability under the raw distribution and the `n` most likely tokens.
pub(super) fn logprob_of(logits: &[f32], chosen: LlamaToken, n: u8, model: &LlamaModel) -> TokenLogprob {
    let log_z = log_z(logits);
    let mut top: Vec<(f32, usize)> = Vec::with_capacity(usize::from(n) + 1);
    if n > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if top.len() < usize::from(n) || l > top[top.len() - 1].0 {
                let at = top.partition_point(|&(v, _)| v >= l);
                top.insert(at, (l, i));
                top.truncate(usize::from(n));
            }
        }
    }
    let vocab = model.vocab();
    let piece = |t: LlamaToken| vocab.token_to_piece(t, true, None);
    let chosen_logit = logit_of(logits, chosen);
    let bytes = piece(chosen);
    TokenLogprob {
        token: String::from_utf8_lossy(&bytes).into_owned(),
        logprob: chosen_logit - log_z,
        bytes,
        top_logprobs: top
            .into_iter()
            .map(|(l, i)| {
                let bytes = piece(LlamaToken(i32::try_from(i).unwrap_or(0)));
                TopLogprob { token: String::from_utf8_lossy(&bytes).into_owned(), logprob: l - log_z, bytes }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_neg_matches_libm_over_its_range() {
        let mut x = 0.0f32;
        while x > -90.0 {
            let (fast, exact) = (exp_neg(x), x.exp());
            let err = if exact > 1e-30 { (fast - exact).abs() / exact } else { fast };
            assert!(err < 1e-5, "x {x}: {fast} vs {exact}");
            x -= 0.013;
        }
        assert_eq!(exp_neg(-1000.0).to_bits(), exp_neg(-87.0).to_bits(), "clamped");
        assert!(exp_neg(-1000.0) < 1e-37);
    }

    #[test]
    fn log_z_matches_the_plain_sum() {
        // A vocabulary-sized row of varied logits, and one where a single token dominates.
        let row: Vec<f32> =
            (0..151_937u32).map(|i| (i.wrapping_mul(2_654_435_761) % 10_007) as f32 / 500.0 - 10.0).collect();
        let plain = |l: &[f32]| {
            let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            f64::from(max) + l.iter().map(|&v| f64::from(v - max).exp()).sum::<f64>().ln()
        };
        assert!((f64::from(log_z(&row)) - plain(&row)).abs() < 1e-3, "{} vs {}", log_z(&row), plain(&row));
        let mut peaked = vec![-30.0f32; 1000];
        peaked[7] = 12.0;
        assert!((f64::from(log_z(&peaked)) - plain(&peaked)).abs() < 1e-4);
        assert_eq!(log_z(&[f32::NEG_INFINITY; 4]), f32::NEG_INFINITY);
    }
}
