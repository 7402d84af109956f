//! What one llama.cpp batch holds, planned from what the slots need: every slot that is
//! generating gets its next token in every batch (a running stream never waits for another
//! slot's prompt), and the rest of the batch goes to prompts being evaluated, oldest first, in
//! chunks. A long prompt therefore delays running streams by at most one batch of prefill.

/// What one slot needs from the next batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Need {
    /// The slot.
    pub slot: usize,
    /// It has a sampled token to feed (it is generating).
    pub decode: bool,
    /// Prompt tokens it still has to evaluate (0 when generating).
    pub prefill: usize,
}

/// One slot's share of the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Share {
    /// The slot.
    pub slot: usize,
    /// Tokens it puts in this batch: 1 when decoding, else a chunk of its prompt.
    pub tokens: usize,
    /// Whether those are a decode step.
    pub decode: bool,
}

/// Plans one batch of at most `budget` tokens. `needs` come in admission order (oldest first).
pub(crate) fn plan(needs: &[Need], budget: usize) -> Vec<Share> {
    let mut shares: Vec<Share> =
        needs.iter().filter(|n| n.decode).map(|n| Share { slot: n.slot, tokens: 1, decode: true }).collect();
    let mut left = budget.saturating_sub(shares.len());
    for n in needs.iter().filter(|n| !n.decode && n.prefill > 0) {
        if left == 0 {
            break;
        }
        let take = n.prefill.min(left);
        shares.push(Share { slot: n.slot, tokens: take, decode: false });
        left -= take;
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoding(slot: usize) -> Need {
        Need { slot, decode: true, prefill: 0 }
    }

    fn prefilling(slot: usize, prefill: usize) -> Need {
        Need { slot, decode: false, prefill }
    }

    #[test]
    fn running_streams_decode_in_every_batch_while_a_long_prompt_is_chunked() {
        let mut long = 2000usize;
        let mut batches = 0;
        while long > 0 {
            let needs = [decoding(0), decoding(1), decoding(2), prefilling(3, long)];
            let shares = plan(&needs, 512);
            assert_eq!(shares.iter().filter(|s| s.decode).count(), 3, "every stream gets its token");
            let prefill: usize = shares.iter().filter(|s| !s.decode).map(|s| s.tokens).sum();
            assert!(prefill <= 512 - 3, "one chunk at most between two tokens");
            assert_eq!(shares.iter().map(|s| s.tokens).sum::<usize>(), 3 + prefill);
            long -= prefill;
            batches += 1;
        }
        assert_eq!(batches, 4, "2000 tokens in chunks of 509");
    }

    #[test]
    fn prompts_are_served_oldest_first_and_nothing_is_planned_for_idle_slots() {
        let shares = plan(&[prefilling(2, 300), prefilling(0, 300), decoding(1)], 512);
        assert_eq!(
            shares,
            vec![
                Share { slot: 1, tokens: 1, decode: true },
                Share { slot: 2, tokens: 300, decode: false },
                Share { slot: 0, tokens: 211, decode: false },
            ]
        );
        assert!(plan(&[prefilling(0, 0)], 512).is_empty());
        assert!(plan(&[], 512).is_empty());
    }
}
