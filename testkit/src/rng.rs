//! The one PRNG of the tests: xorshift64*, seeded, so every run sees the same
//! "random" inputs (no rand crate needed).

pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed` (0, which xorshift cannot leave, becomes 1).
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    #[allow(clippy::should_implement_trait)] // an endless generator, not an iterator
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// Between 0 and `max - 1` random bytes.
    pub fn bytes_below(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        self.bytes(n)
    }

    /// Between 0 and `max - 1` characters drawn from `alphabet`.
    pub fn string(&mut self, alphabet: &[u8], max: usize) -> String {
        let n = self.below(max);
        (0..n)
            .map(|_| alphabet[self.below(alphabet.len())] as char)
            .collect()
    }

    /// Flips a few random bytes of `v`.
    pub fn mutate(&mut self, v: &mut [u8]) {
        if v.is_empty() {
            return;
        }
        for _ in 0..1 + self.below(3) {
            let i = self.below(v.len());
            v[i] = self.next() as u8;
        }
    }

    /// One of `samples`, a few bytes flipped, cut at a random length: the
    /// near-valid input of the decoders' robustness tests.
    pub fn mangled(&mut self, samples: &[Vec<u8>]) -> Vec<u8> {
        let mut v = samples[self.below(samples.len())].clone();
        self.mutate(&mut v);
        let cut = self.below(v.len() + 1);
        v.truncate(cut);
        v
    }
}
