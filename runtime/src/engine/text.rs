//! Turning a stream of token bytes into text an API can send: UTF-8 reassembly (a character may
//! span tokens) and stop sequences (a stop string may span tokens, and none of it may be sent).

/// Accumulates token bytes and releases text that is final.
#[derive(Debug, Default)]
pub struct TextStream {
    /// Bytes of an incomplete UTF-8 character at the end of the last token.
    partial: Vec<u8>,
    /// Decoded text not yet released because it could be the start of a stop sequence.
    held: String,
    /// The request's stop sequences (empty ones removed).
    stops: Vec<String>,
}

/// What one token's bytes produced.
#[derive(Debug, PartialEq, Eq)]
pub struct Released {
    /// Text that is final and may be sent now (possibly empty).
    pub text: String,
    /// A stop sequence matched: generation must end; `text` holds what came before it.
    pub stopped: bool,
}

impl TextStream {
    /// A stream that ends at the first of `stops`.
    pub fn new(stops: &[String]) -> Self {
        Self {
            partial: Vec::new(),
            held: String::new(),
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
        }
    }

    /// Adds one token's bytes.
    pub fn push(&mut self, bytes: &[u8]) -> Released {
        self.partial.extend_from_slice(bytes);
        self.decode_partial();
        if let Some(pos) = self.first_stop() {
            let text = self.held[..pos].to_owned();
            self.held.clear();
            self.partial.clear();
            return Released { text, stopped: true };
        }
        let keep = self.longest_stop_prefix_suffix();
        let cut = self.held.len() - keep;
        let text = self.held[..cut].to_owned();
        self.held.drain(..cut);
        Released { text, stopped: false }
    }

    /// Releases whatever is held at the end of generation (incomplete UTF-8 becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        if !self.partial.is_empty() {
            self.held.push_str(&String::from_utf8_lossy(&self.partial));
            self.partial.clear();
        }
        std::mem::take(&mut self.held)
    }

    /// Moves the complete characters of `partial` into `held`; invalid bytes become U+FFFD.
    fn decode_partial(&mut self) {
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.partial[start..]) {
                Ok(s) => {
                    self.held.push_str(s);
                    self.partial.clear();
                    return;
                }
                Err(err) => {
                    let valid = err.valid_up_to();
                    // SAFETY-free: the prefix was just validated.
                    if let Ok(s) = std::str::from_utf8(&self.partial[start..start + valid]) {
                        self.held.push_str(s);
                    }
                    match err.error_len() {
                        Some(bad) => {
                            self.held.push(char::REPLACEMENT_CHARACTER);
                            start += valid + bad;
                        }
                        None => {
                            // An incomplete character at the end: wait for the next token.
                            self.partial.drain(..start + valid);
                            return;
                        }
                    }
                }
            }
        }
    }

    fn first_stop(&self) -> Option<usize> {
        self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min()
    }

    /// The length of the longest suffix of `held` that is a proper prefix of a stop sequence.
    fn longest_stop_prefix_suffix(&self) -> usize {
        let mut best = 0;
        for stop in &self.stops {
            let max = stop.len().saturating_sub(1).min(self.held.len());
            for len in (best + 1..=max).rev() {
                let start = self.held.len() - len;
                if self.held.is_char_boundary(start) && stop.starts_with(&self.held[start..]) {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&[u8]]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| (*s).to_owned()).collect();
        let mut stream = TextStream::new(&stops);
        let mut out = String::new();
        for piece in pieces {
            let r = stream.push(piece);
            out.push_str(&r.text);
            if r.stopped {
                return (out, true);
            }
        }
        out.push_str(&stream.finish());
        (out, false)
    }

    #[test]
    fn characters_split_across_tokens_are_reassembled() {
        let euro = "€".as_bytes();
        assert_eq!(run(&[], &[b"a", &euro[..1], &euro[1..], b"b"]), ("a€b".to_owned(), false));
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        assert_eq!(run(&[], &[b"a\xffb"]), ("a\u{fffd}b".to_owned(), false));
        assert_eq!(run(&[], &[b"a", &"€".as_bytes()[..2]]), ("a\u{fffd}".to_owned(), false));
    }

    #[test]
    fn stop_sequence_spanning_tokens_is_cut_and_never_sent() {
        let stops = ["\nUser:"];
        let stream_pieces: &[&[u8]] = &[b"Hello", b"\nUs", b"er:", b" more"];
        assert_eq!(run(&stops, stream_pieces), ("Hello".to_owned(), true));
        // The held-back "\nUs" is not released before the stop is decided.
        let mut stream = TextStream::new(&["\nUser:".to_owned()]);
        assert_eq!(stream.push(b"Hello").text, "Hello");
        assert_eq!(stream.push(b"\nUs").text, "");
        assert_eq!(stream.push(b"e").text, "", "still a prefix of the stop");
        assert_eq!(stream.push(b"x").text, "\nUsex");
    }

    #[test]
    fn false_start_of_a_stop_is_released() {
        assert_eq!(run(&["END"], &[b"EN", b"D"]), (String::new(), true));
        assert_eq!(run(&["END"], &[b"EN", b"X"]), ("ENX".to_owned(), false));
        assert_eq!(run(&["a", "bc"], &[b"xxb", b"c"]), ("xx".to_owned(), true));
    }
}
