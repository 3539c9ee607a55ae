//! FNV-1a 64: a tiny, stable, non-cryptographic hash for config versions, body checksums and
//! request keys; and the splitmix64 finalizer that spreads it over all 64 bits.

/// The FNV-1a 64 starting value.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a 64 continued from `h` over `data`.
pub fn fnv1a(mut h: u64, data: &[u8]) -> u64 {
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// FNV-1a 64 of `data`.
pub fn fnv1a_of(data: &[u8]) -> u64 {
    fnv1a(FNV_OFFSET, data)
}

/// Finalizer of splitmix64: spreads FNV output over all 64 bits.
pub fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_values() {
        assert_eq!(super::fnv1a_of(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::fnv1a_of(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
