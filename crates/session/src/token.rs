//! Resume tokens: 128-bit random secrets, compared in constant time.

/// A resume token. The caller supplies the randomness (sans-IO); the server
/// uses the OS random source.
#[derive(Clone, PartialEq, Eq)]
pub struct ResumeToken(pub [u8; 16]);

impl ResumeToken {
    /// Compares with bytes from the wire without leaking, through timing, how
    /// many leading bytes matched. Wrong length is simply unequal.
    pub fn matches(&self, presented: &[u8]) -> bool {
        if presented.len() != self.0.len() {
            return false;
        }
        let diff = self
            .0
            .iter()
            .zip(presented)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl std::fmt::Debug for ResumeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResumeToken(..)")
    }
}
