//! Confidence of a local answer, from its tokens' log-probabilities and checks on its text.
//!
//! The score is the mean of two probabilities, each a geometric mean of token probabilities:
//!
//! ```text
//! mean_logprob = mean(lp_i)                          over all tokens
//! worst_window = min over windows of WINDOW tokens of mean(lp_i in window)
//!                (the whole answer if it is shorter than WINDOW)
//! score        = MEAN_WEIGHT · exp(mean_logprob) + (1 − MEAN_WEIGHT) · exp(worst_window)
//! ```
//!
//! where each `lp_i` is first clamped to [`LOGPROB_FLOOR`, 0] (a NaN counts as the floor).
//! `exp(mean_logprob)` says how sure the model was on average; `exp(worst_window)` catches an
//! answer that is fluent overall but guesses in one stretch (a name, a number, a date), which
//! is where small models go wrong. The score is then capped by the checks that failed:
//!
//! | Check | Failed when | Score at most |
//! |-------|-------------|---------------|
//! | `empty` | the text is empty or only whitespace | 0 |
//! | `no_logprobs` | no token log-probabilities were given (nothing to measure) | the floor's score, ~0 |
//! | `cancelled` | generation was cancelled | 0 |
//! | `cut_off` | generation hit `max_tokens` or the context ([`FinishReason::Length`]) | [`CUT_OFF_CAP`] |
//! | `refusal` | the answer opens with a refusal ("I cannot", "I'm sorry", "As an AI", ...) | [`REFUSAL_CAP`] |
//! | `repetition` | the answer loops: most of its word 4-grams repeat, or it ends in a repeated stretch | [`REPETITION_CAP`] |

//!
//! [`decide`] then says whether a local answer is kept or cascaded to the cloud: only a
//! non-streamed answer below `policy.min_confidence`, when the policy allowed a cascade for this
//! request and the cloud may be called (online or not yet known to be offline).

use crate::cloud::Connectivity;
use crate::engine::FinishReason;

/// Tokens in the sliding window of `worst_window`.
pub const WINDOW: usize = 8;
/// Weight of the whole answer's geometric-mean probability; the worst window gets the rest.
pub const MEAN_WEIGHT: f32 = 0.5;
/// Log-probabilities are clamped to at least this (a probability of about 2·10⁻⁹), so that one
/// `-inf` does not swamp a mean.
pub const LOGPROB_FLOOR: f32 = -20.0;
/// The highest score of an answer cut off by `max_tokens` or the context.
pub const CUT_OFF_CAP: f32 = 0.3;
/// The highest score of an answer that opens with a refusal.
pub const REFUSAL_CAP: f32 = 0.1;
/// The highest score of an answer that loops.
pub const REPETITION_CAP: f32 = 0.1;

/// How much a local answer can be trusted.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Confidence {
    /// 0 (certainly wrong) to 1; compare with `policy.min_confidence`.
    pub score: f32,
    /// Mean token log-probability (clamped tokens; [`LOGPROB_FLOOR`] with no tokens).
    pub mean_logprob: f32,
    /// Lowest mean log-probability over a window of [`WINDOW`] tokens.
    pub worst_window: f32,
    /// The checks that failed, in the order of the table in the module documentation.
    pub checks: Vec<&'static str>,
}

impl Confidence {
    /// The answer is confident enough to keep.
    pub fn passes(&self, min_confidence: f32) -> bool {
        self.score >= min_confidence
    }
}

/// What becomes of a local answer once its confidence is known.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Keep the local answer.
    Keep,
    /// Ask the cloud instead; the reason goes into the report.
    Cascade {
        /// Why, for the `outpost` report's reasons.
        reason: String,
    },
}

/// Decides whether a local answer with `confidence` is kept or cascaded: cascaded when it does
/// not pass `min_confidence`, the policy allowed a cascade for this request (`allowed`), and the
/// cloud may be called.
pub fn decide(
    confidence: &Confidence,
    min_confidence: f32,
    allowed: bool,
    connectivity: Connectivity,
) -> Verdict {
    if confidence.passes(min_confidence) || !allowed || !connectivity.may_call() {
        return Verdict::Keep;
    }
    Verdict::Cascade {
        reason: format!(
            "cascade: local confidence {:.2} < min_confidence {min_confidence:.2}",
            confidence.score
        ),
    }
}

/// Rates a local answer from its tokens' log-probabilities, its text and why it ended.
pub fn confidence(token_logprobs: &[f32], text: &str, finish: FinishReason) -> Confidence {
    let lps: Vec<f32> = token_logprobs
        .iter()
        .map(|&lp| if lp.is_nan() { LOGPROB_FLOOR } else { lp.clamp(LOGPROB_FLOOR, 0.0) })
        .collect();
    let mean = |xs: &[f32]| {
        if xs.is_empty() {
            LOGPROB_FLOOR
        } else {
            // f64: no precision loss over long answers; the result is within [floor, 0].
            #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
            let m = (xs.iter().map(|&x| f64::from(x)).sum::<f64>() / xs.len() as f64) as f32;
            m
        }
    };
    let mean_logprob = mean(&lps);
    let worst_window =
        if lps.len() <= WINDOW { mean_logprob } else { lps.windows(WINDOW).map(mean).fold(0.0, f32::min) };
    let raw = MEAN_WEIGHT * mean_logprob.exp() + (1.0 - MEAN_WEIGHT) * worst_window.exp();

    // Each failed check with the highest score it allows.
    let mut failed: Vec<(&'static str, f32)> = Vec::new();
    if text.trim().is_empty() {
        failed.push(("empty", 0.0));
    }
    if token_logprobs.is_empty() {
        failed.push(("no_logprobs", 1.0)); // the floor already scores it ~0
    }
    match finish {
        FinishReason::Stop => {}
        FinishReason::Cancelled => failed.push(("cancelled", 0.0)),
        FinishReason::Length => failed.push(("cut_off", CUT_OFF_CAP)),
    }
    if opens_with_refusal(text) {
        failed.push(("refusal", REFUSAL_CAP));
    }
    if loops(text) {
        failed.push(("repetition", REPETITION_CAP));
    }
    let capped = failed.iter().fold(raw, |score, &(_, cap)| score.min(cap));
    let score = if capped.is_finite() { capped.clamp(0.0, 1.0) } else { 0.0 };
    let checks = failed.into_iter().map(|(name, _)| name).collect();
    Confidence { score, mean_logprob, worst_window, checks }
}

/// Openings of a refusal or a non-answer, lower case, straight apostrophes.
const REFUSAL_OPENINGS: &[&str] = &[
    "i cannot",
    "i can't",
    "i can not",
    "i'm sorry",
    "i am sorry",
    "sorry, ",
    "i apologize",
    "i apologise",
    "i'm unable",
    "i am unable",
    "i'm not able",
    "i am not able",
    "i won't be able",
    "i do not have access",
    "i don't have access",
    "unfortunately, i can",
    "as an ai",
    "as a language model",
    "as an artificial intelligence",
];

/// Phrases that mark a non-answer anywhere in the opening ("Well, as an AI, I ...").
const DISCLAIMERS: &[&str] = &["as an ai", "as a language model", "as an artificial intelligence"];

/// How much of the answer's start is looked at for a refusal.
const OPENING_CHARS: usize = 120;

fn opens_with_refusal(text: &str) -> bool {
    let opening: String = text
        .trim_start_matches(|c: char| {
            c.is_whitespace() || matches!(c, '"' | '\'' | '*' | '_' | '>' | '`' | '“')
        })
        .chars()
        .take(OPENING_CHARS)
        .flat_map(char::to_lowercase)
        .map(|c| if c == '’' { '\'' } else { c })
        .collect();
    REFUSAL_OPENINGS.iter().any(|p| opening.starts_with(p)) || DISCLAIMERS.iter().any(|p| opening.contains(p))
}

/// Word n-grams compared for looping.
const NGRAM: usize = 4;
/// Fewer word n-grams than this are too few to call a loop.
const MIN_NGRAMS: usize = 16;
/// The tail looked at for a repeated stretch, in characters.
const TAIL_CHARS: usize = 2048;
/// The longest period of a repeated stretch, in characters.
const MAX_PERIOD: usize = 256;
/// A repeated stretch at the end counts as a loop from this many characters (and at least
/// three periods).
const MIN_LOOP_CHARS: usize = 80;

/// The answer loops: at least half of its word 4-grams repeat an earlier one, or it ends in a
/// stretch of at least [`MIN_LOOP_CHARS`] characters made of one piece repeated 3 or more
/// times (which also catches loops in scripts written without spaces).
fn loops(text: &str) -> bool {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() >= NGRAM + MIN_NGRAMS - 1 {
        let grams = words.len() + 1 - NGRAM;
        let mut seen = std::collections::HashSet::with_capacity(grams);
        let repeats = words.windows(NGRAM).filter(|w| !seen.insert(*w)).count();
        if 2 * repeats >= grams {
            return true;
        }
    }
    // The tail, last character first: a loop of period p means tail[i] == tail[i + p] from 0.
    let tail: Vec<char> = text.trim_end().chars().rev().take(TAIL_CHARS).collect();
    (1..=MAX_PERIOD.min(tail.len() / 3)).any(|p| {
        let run = (0..tail.len() - p).take_while(|&i| tail[i] == tail[i + p]).count();
        let stretch = run + p;
        stretch >= 3 * p && stretch >= MIN_LOOP_CHARS
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const ANSWER: &str =
        "The capital of France is Paris. It has been the seat of government for most of the \
                          country's history and is its largest city.";

    fn steady(n: usize, lp: f32) -> Vec<f32> {
        vec![lp; n]
    }

    #[test]
    fn only_unsure_answers_cascade_and_only_when_allowed_and_reachable() {
        let sure = confidence(&steady(30, -0.05), ANSWER, FinishReason::Stop);
        let unsure = confidence(&steady(30, -3.0), ANSWER, FinishReason::Stop);
        assert_eq!(decide(&sure, 0.5, true, Connectivity::Online), Verdict::Keep);
        let Verdict::Cascade { reason } = decide(&unsure, 0.5, true, Connectivity::Online) else {
            panic!("an unsure answer cascades");
        };
        assert!(reason.contains("< min_confidence 0.50"), "{reason}");
        assert!(matches!(decide(&unsure, 0.5, true, Connectivity::Unknown), Verdict::Cascade { .. }));
        assert_eq!(decide(&unsure, 0.5, false, Connectivity::Online), Verdict::Keep, "policy said no");
        assert_eq!(decide(&unsure, 0.5, true, Connectivity::Offline), Verdict::Keep, "offline");
        assert_eq!(decide(&unsure, 0.5, true, Connectivity::NotConfigured), Verdict::Keep, "no cloud");
        assert_eq!(decide(&unsure, 0.0, true, Connectivity::Online), Verdict::Keep, "threshold 0");
    }

    #[test]
    fn a_confident_answer_scores_high() {
        let c = confidence(&steady(40, -0.05), ANSWER, FinishReason::Stop);
        assert!(c.checks.is_empty(), "{c:?}");
        assert!(c.score > 0.9, "{c:?}");
        assert!((c.mean_logprob + 0.05).abs() < 1e-6);
        assert!((c.worst_window + 0.05).abs() < 1e-6);
        assert!(c.passes(0.5));
    }

    #[test]
    fn one_uncertain_stretch_lowers_the_worst_window_and_the_score() {
        let confident = confidence(&steady(40, -0.05), ANSWER, FinishReason::Stop);
        let mut lps = steady(40, -0.05);
        lps[20..28].fill(-3.0);
        let c = confidence(&lps, ANSWER, FinishReason::Stop);
        assert!((c.worst_window + 3.0).abs() < 1e-5, "{c:?}");
        assert!(c.mean_logprob > -0.7, "the mean alone hides the stretch: {c:?}");
        assert!(c.score < 0.5 && c.score < confident.score, "{c:?}");
        assert!(c.checks.is_empty());
        // Spread over the whole answer, the same total doubt costs the worst window less.
        let spread = confidence(&steady(40, (32.0 * -0.05 + 8.0 * -3.0) / 40.0), ANSWER, FinishReason::Stop);
        assert!(spread.worst_window > c.worst_window && spread.score > c.score);
    }

    #[test]
    fn an_answer_shorter_than_the_window_uses_its_mean() {
        let c = confidence(&[-0.1, -0.3, -0.2], "Paris.", FinishReason::Stop);
        assert!((c.worst_window - c.mean_logprob).abs() < 1e-6);
        assert!((c.mean_logprob + 0.2).abs() < 1e-6);
    }

    #[test]
    fn failed_checks_are_flagged_and_cap_the_score() {
        let lps = steady(30, -0.01);
        let cases: &[(&str, FinishReason, &str, f32)] = &[
            ("", FinishReason::Stop, "empty", 0.0),
            ("  \n\t", FinishReason::Stop, "empty", 0.0),
            (ANSWER, FinishReason::Length, "cut_off", CUT_OFF_CAP),
            (ANSWER, FinishReason::Cancelled, "cancelled", 0.0),
            ("I'm sorry, but I can't help with that.", FinishReason::Stop, "refusal", REFUSAL_CAP),
            ("I’m sorry, I cannot answer.", FinishReason::Stop, "refusal", REFUSAL_CAP),
            ("  \"I cannot browse the internet.", FinishReason::Stop, "refusal", REFUSAL_CAP),
            ("As an AI language model, I have no opinions.", FinishReason::Stop, "refusal", REFUSAL_CAP),
            ("Well, as an AI, I do not know today's date.", FinishReason::Stop, "refusal", REFUSAL_CAP),
            (
                &"The answer is yes. The answer is yes. The answer is yes. ".repeat(8),
                FinishReason::Stop,
                "repetition",
                REPETITION_CAP,
            ),
        ];
        for &(text, finish, check, cap) in cases {
            let c = confidence(&lps, text, finish);
            assert!(c.checks.contains(&check), "{text:?}: {c:?}");
            assert!(c.score <= cap, "{text:?}: {c:?}");
        }
    }

    #[test]
    fn a_loop_at_the_end_of_a_good_start_is_repetition() {
        let text = format!("{ANSWER} {}", "and so on, ".repeat(12));
        assert!(confidence(&steady(80, -0.01), &text, FinishReason::Stop).checks.contains(&"repetition"));
        // A loop with no spaces (CJK) is caught by the tail check.
        let cjk = format!("巴黎是法国的首都。{}", "我不知道。".repeat(20));
        assert!(confidence(&steady(80, -0.01), &cjk, FinishReason::Stop).checks.contains(&"repetition"));
    }

    #[test]
    fn ordinary_answers_are_not_flagged() {
        let prose = "Photosynthesis turns light into chemical energy. Plants take in carbon dioxide \
                     through their leaves and water through their roots; chlorophyll absorbs light, \
                     and the energy splits water, releasing oxygen. The plant stores the energy in \
                     sugars that it uses to grow. Without it there would be little oxygen in the air.";
        let code = "fn main() {\n    let v = vec![1, 2, 3];\n    for x in &v {\n        println!(\"{x}\");\n    }\n}\n";
        let list =
            "1. Preheat the oven.\n2. Mix the flour and sugar.\n3. Add the eggs.\n4. Bake for 20 minutes.";
        let empathy = "Sorry to hear that! Here is what you can do: restart the router, then wait.";
        let short = "4";
        for text in [prose, code, list, ANSWER, short, "No.", "Yes, it is safe.", "ha ha ha"] {
            let c = confidence(&steady(60, -0.02), text, FinishReason::Stop);
            assert!(c.checks.is_empty(), "{text:?}: {c:?}");
        }
        // "Sorry, " with the comma is a refusal opening; without it, an empathetic answer.
        assert!(confidence(&steady(10, -0.02), empathy, FinishReason::Stop).checks.is_empty());
    }

    #[test]
    fn missing_or_broken_logprobs_score_low_without_panicking() {
        let c = confidence(&[], ANSWER, FinishReason::Stop);
        assert_eq!(c.checks, vec!["no_logprobs"]);
        assert!(c.score < 1e-6);
        let c = confidence(&[f32::NEG_INFINITY, f32::NAN, -0.1, 3.0], ANSWER, FinishReason::Stop);
        assert!(c.mean_logprob.is_finite() && c.worst_window.is_finite(), "{c:?}");
        assert!((0.0..=1.0).contains(&c.score));
        assert!((c.mean_logprob - (2.0 * LOGPROB_FLOOR - 0.1) / 4.0).abs() < 1e-4, "{c:?}");
    }

    fn any_finish() -> impl Strategy<Value = FinishReason> {
        prop_oneof![Just(FinishReason::Stop), Just(FinishReason::Length), Just(FinishReason::Cancelled)]
    }

    fn any_logprob() -> impl Strategy<Value = f32> {
        prop_oneof![
            4 => -30.0_f32..=0.0,
            1 => any::<f32>(),
            1 => Just(f32::NEG_INFINITY),
            1 => Just(f32::NAN),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn the_score_is_always_in_unit_range(
            lps in proptest::collection::vec(any_logprob(), 0..200),
            text in any::<String>(),
            finish in any_finish(),
        ) {
            let c = confidence(&lps, &text, finish);
            prop_assert!((0.0..=1.0).contains(&c.score), "{:?}", c);
            prop_assert!(c.mean_logprob.is_finite() && c.worst_window.is_finite(), "{:?}", c);
        }

        #[test]
        fn a_lower_logprob_never_raises_the_score(
            lps in proptest::collection::vec(-10.0_f32..=0.0, 1..64),
            i in any::<prop::sample::Index>(),
            drop in 0.0_f32..10.0,
        ) {
            let before = confidence(&lps, ANSWER, FinishReason::Stop).score;
            let mut lower = lps.clone();
            let i = i.index(lower.len());
            lower[i] -= drop;
            prop_assert!(confidence(&lower, ANSWER, FinishReason::Stop).score <= before + 1e-6);
        }
    }
}
