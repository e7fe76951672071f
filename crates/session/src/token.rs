//! Resume tokens: 128-bit random secrets, compared in constant time.
//!
//! A token is all a connection needs to take over a session, so it is treated
//! like a password: random, never printed, compared without an early exit.

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

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: [u8; 16] = [
        0x3a, 0x91, 0x07, 0xfe, 0x55, 0x10, 0xc2, 0x8d, 0x00, 0xff, 0x42, 0x17, 0x9b, 0x60, 0xe4,
        0x2c,
    ];

    #[test]
    fn the_same_bytes_match() {
        assert!(ResumeToken(SECRET).matches(&SECRET));
    }

    #[test]
    fn one_bit_off_anywhere_does_not_match() {
        let token = ResumeToken(SECRET);
        for byte in 0..16 {
            for bit in 0..8 {
                let mut presented = SECRET;
                presented[byte] ^= 1 << bit;
                assert!(!token.matches(&presented), "byte {byte} bit {bit}");
            }
        }
    }

    #[test]
    fn wrong_length_does_not_match() {
        let token = ResumeToken(SECRET);
        assert!(!token.matches(&[]));
        assert!(!token.matches(&SECRET[..15]));
        let mut longer = SECRET.to_vec();
        longer.push(0);
        assert!(!token.matches(&longer));
        // All-zero tokens are not special.
        assert!(!ResumeToken([0; 16]).matches(&[0; 17]));
        assert!(ResumeToken([0; 16]).matches(&[0; 16]));
    }

    #[test]
    fn debug_does_not_print_the_secret() {
        assert_eq!(format!("{:?}", ResumeToken(SECRET)), "ResumeToken(..)");
    }
}
