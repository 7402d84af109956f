//! The in-memory vector index of the semantic entries, rebuilt from SQLite at open.
//!
//! A lookup is three stages, each over fewer rows and with more precise vectors:
//!
//! 1. **Scan** every row's 1-bit code (the sign of each component after subtracting the mean
//!    embedding: 48 bytes for 384 dimensions) for its Hamming distance to the query's code,
//!    skipping rows of another system context or expired. 100,000 rows are 4.8 MB: the scan
//!    stays within a millisecond where a scan of int8 rows (38 MB) took 9–11 ms and f32 rows
//!    (150 MB) more, memory-bound, on the development machine.
//! 2. **Shortlist** the [`SHORTLIST`] nearest codes and score them with the row's int8 copy
//!    (per-row scale, error well under [`MARGIN`]) against the f32 query; keep those within
//!    [`MARGIN`] of the threshold, best first, at most [`RERANK`].
//! 3. The caller re-ranks those with the exact f32 embeddings kept in SQLite.
//!
//! A match at cosine 0.92 is 23° away: about 50 of 384 sign bits differ, against 110–190 for
//! unrelated prompts, so it is among the nearest codes unless hundreds of entries are nearer
//! still (and then those are hits too). Memory: about 490 bytes per row (49 MB at 100,000).

use std::collections::HashMap;

/// Rows scored with their int8 copy after the Hamming scan.
pub(crate) const SHORTLIST: usize = 256;
/// How far below the threshold an int8 score may be and still be re-ranked exactly.
pub(crate) const MARGIN: f32 = 0.02;
/// Candidates handed to the exact re-rank at most.
pub(crate) const RERANK: usize = 8;
/// Recompute the mean (and every code) when the index has doubled since it was last computed.
const RECENTER_GROWTH: usize = 2;

/// Rows with their codes, int8 copies and filters, in parallel arrays (slot = row).
#[derive(Debug, Default)]
pub(crate) struct Index {
    dim: usize,
    words: usize,
    mean: Vec<f32>,
    centered_at: usize,
    codes: Vec<u64>,
    q8: Vec<i8>,
    scale: Vec<f32>,
    ids: Vec<i64>,
    context: Vec<i64>,
    expires: Vec<i64>,
    slot: HashMap<i64, usize>,
    dist: Vec<u16>,
}

impl Index {
    /// Rows in the index.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// The embedding length, once known (0 while empty and never filled).
    pub(crate) fn dim(&self) -> usize {
        self.dim
    }

    pub(crate) fn contains(&self, id: i64) -> bool {
        self.slot.contains_key(&id)
    }

    /// The ids in the index.
    pub(crate) fn ids(&self) -> &[i64] {
        &self.ids
    }

    /// Adds (or replaces) a row. `embedding` must be L2-normalised and of the index's length
    /// (the first row sets it); returns `false` and adds nothing otherwise.
    pub(crate) fn insert(&mut self, id: i64, embedding: &[f32], context: i64, expires: i64) -> bool {
        if embedding.is_empty() || (self.dim != 0 && embedding.len() != self.dim) {
            return false;
        }
        if self.dim == 0 {
            self.dim = embedding.len();
            self.words = self.dim.div_ceil(64);
            self.mean = vec![0.0; self.dim];
        }
        self.remove(id);
        let max = embedding.iter().fold(0.0_f32, |m, x| m.max(x.abs()));
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        self.q8.extend(embedding.iter().map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8));
        self.scale.push(scale);
        let start = self.codes.len();
        self.codes.resize(start + self.words, 0);
        code_into(embedding, &self.mean, &mut self.codes[start..]);
        self.slot.insert(id, self.ids.len());
        self.ids.push(id);
        self.context.push(context);
        self.expires.push(expires);
        if self.ids.len() >= 256 && self.ids.len() >= RECENTER_GROWTH * self.centered_at.max(1) {
            self.recenter();
        }
        true
    }

    /// Removes a row, if present.
    pub(crate) fn remove(&mut self, id: i64) {
        let Some(slot) = self.slot.remove(&id) else { return };
        let last = self.ids.len() - 1;
        let (d, w) = (self.dim, self.words);
        if slot != last {
            self.q8.copy_within(last * d..(last + 1) * d, slot * d);
            self.codes.copy_within(last * w..(last + 1) * w, slot * w);
            self.scale[slot] = self.scale[last];
            self.ids[slot] = self.ids[last];
            self.context[slot] = self.context[last];
            self.expires[slot] = self.expires[last];
            self.slot.insert(self.ids[slot], slot);
        }
        self.q8.truncate(last * d);
        self.codes.truncate(last * w);
        self.scale.truncate(last);
        self.ids.truncate(last);
        self.context.truncate(last);
        self.expires.truncate(last);
    }

    /// Sets the mean to the rows' mean and recomputes every code (at open, and when the index
    /// has doubled: the codes of a small index would otherwise keep a poor centre forever).
    pub(crate) fn recenter(&mut self) {
        let (n, d) = (self.ids.len(), self.dim);
        if n == 0 {
            return;
        }
        let mut sum = vec![0.0_f64; d];
        let mut row = vec![0.0_f32; d];
        for i in 0..n {
            self.dequantize(i, &mut row);
            for (s, x) in sum.iter_mut().zip(&row) {
                *s += f64::from(*x);
            }
        }
        self.mean = sum.iter().map(|s| (s / n as f64) as f32).collect();
        for i in 0..n {
            self.dequantize(i, &mut row);
            code_into(&row, &self.mean, &mut self.codes[i * self.words..(i + 1) * self.words]);
        }
        self.centered_at = n;
    }

    fn dequantize(&self, i: usize, out: &mut [f32]) {
        let s = self.scale[i];
        for (o, q) in out.iter_mut().zip(&self.q8[i * self.dim..(i + 1) * self.dim]) {
            *o = f32::from(*q) * s;
        }
    }

    /// The ids of the rows nearest to `query` (L2-normalised) in the same `context` and not
    /// expired at `now`, whose int8 cosine is at least `min_cosine - MARGIN`; best first, at
    /// most [`RERANK`], with their int8 cosine.
    pub(crate) fn search(
        &mut self,
        query: &[f32],
        context: i64,
        now: i64,
        min_cosine: f32,
    ) -> Vec<(i64, f32)> {
        let n = self.ids.len();
        if n == 0 || query.len() != self.dim {
            return Vec::new();
        }
        let w = self.words;
        let mut qcode = vec![0_u64; w];
        code_into(query, &self.mean, &mut qcode);
        self.dist.resize(n, 0);
        let mut hist = vec![0_u32; self.dim + 2];
        for (i, (code, d)) in self.codes.chunks_exact(w).zip(self.dist.iter_mut()).enumerate() {
            let far = self.context[i] != context || self.expires[i] <= now;
            let bits: u32 = code.iter().zip(&qcode).map(|(a, b)| (a ^ b).count_ones()).sum();
            let bits = if far { u16::MAX } else { u16::try_from(bits).unwrap_or(u16::MAX) };
            *d = bits;
            if !far {
                hist[usize::from(bits).min(self.dim + 1)] += 1;
            }
        }
        // The distance at which the shortlist is full (ties at the cut are all kept, up to a cap).
        let mut seen = 0;
        let mut cut = None;
        for (bits, count) in hist.iter().enumerate() {
            seen += count;
            if *count > 0 {
                cut = Some(bits);
            }
            if seen as usize >= SHORTLIST {
                break;
            }
        }
        let Some(cut) = cut else { return Vec::new() };
        let floor = min_cosine - MARGIN;
        let mut found: Vec<(i64, f32)> = Vec::new();
        for (i, d) in self.dist.iter().enumerate() {
            if usize::from(*d) > cut {
                continue;
            }
            let row = &self.q8[i * self.dim..(i + 1) * self.dim];
            let dot: f32 = row.iter().zip(query).map(|(q, x)| f32::from(*q) * x).sum();
            let cosine = dot * self.scale[i];
            if cosine >= floor {
                found.push((self.ids[i], cosine));
            }
            if found.len() >= 4 * SHORTLIST {
                break;
            }
        }
        found.sort_by(|a, b| b.1.total_cmp(&a.1));
        found.truncate(RERANK);
        found
    }
}

/// The sign bits of `x - mean`.
fn code_into(x: &[f32], mean: &[f32], out: &mut [u64]) {
    out.fill(0);
    for (j, (v, m)) in x.iter().zip(mean).enumerate() {
        if v > m {
            out[j / 64] |= 1 << (j % 64);
        }
    }
}

/// L2-normalises an embedding; `None` if it is empty or not finite or zero.
pub(crate) fn normalized(embedding: &[f32]) -> Option<Vec<f32>> {
    let norm = embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
    (!embedding.is_empty() && norm.is_finite() && norm > 0.0)
        .then(|| embedding.iter().map(|x| x / norm).collect())
}

/// The dot product (the cosine of normalised vectors).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    fn random_unit(rng: &mut impl Rng, dim: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..dim).map(|_| rng.gen_range(-1.0..1.0)).collect();
        normalized(&v).expect("non-zero")
    }

    fn near(rng: &mut impl Rng, v: &[f32], noise: f32) -> Vec<f32> {
        let w: Vec<f32> = v.iter().map(|x| x + rng.gen_range(-noise..noise)).collect();
        normalized(&w).expect("non-zero")
    }

    #[test]
    fn finds_near_duplicates_among_many_and_honours_filters() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut index = Index::default();
        let rows: Vec<Vec<f32>> = (0..3000).map(|_| random_unit(&mut rng, 384)).collect();
        for (i, row) in rows.iter().enumerate() {
            let context = if i % 10 == 9 { 1 } else { 0 };
            assert!(index.insert(i as i64, row, context, 1_000));
        }
        for target in [5_usize, 1234, 2998] {
            let q = near(&mut rng, &rows[target], 0.02);
            let exact = dot(&q, &rows[target]);
            assert!(exact > 0.95, "{exact}");
            let found = index.search(&q, 0, 0, 0.92);
            assert_eq!(found.first().map(|f| f.0), Some(target as i64), "{found:?}");
            assert!((found[0].1 - exact).abs() < 0.01, "int8 cosine {} vs {exact}", found[0].1);
        }
        let q = near(&mut rng, &rows[19], 0.02);
        assert!(index.search(&q, 0, 0, 0.92).is_empty(), "row 19 is in context 1");
        assert_eq!(index.search(&q, 1, 0, 0.92).first().map(|f| f.0), Some(19));
        assert!(index.search(&q, 1, 1_000, 0.92).is_empty(), "expired at 1000");
        index.remove(19);
        assert!(index.search(&q, 1, 0, 0.92).is_empty());
        assert_eq!(index.len(), 2999);
        assert!(!index.insert(5000, &[1.0; 10], 0, 1_000), "wrong dimension");
        let unrelated = random_unit(&mut rng, 384);
        assert!(index.search(&unrelated, 0, 0, 0.92).is_empty());
    }

    #[test]
    fn removal_keeps_the_other_rows_addressable() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let rows: Vec<Vec<f32>> = (0..50).map(|_| random_unit(&mut rng, 16)).collect();
        let mut index = Index::default();
        for (i, row) in rows.iter().enumerate() {
            index.insert(i as i64, row, 0, i64::MAX);
        }
        for id in (0..50).step_by(3) {
            index.remove(id);
        }
        for (i, row) in rows.iter().enumerate() {
            let hit = index.search(row, 0, 0, 0.99).first().map(|f| f.0);
            assert_eq!(hit, (i % 3 != 0).then_some(i as i64), "row {i}");
        }
    }
}
