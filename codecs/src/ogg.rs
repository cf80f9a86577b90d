//! The Ogg page checksum (RFC 3533 section 6), for the two Ogg Opus users: recordings
//! write pages (`confer-conference`), prompts are read from them (`confer-pstn-bridge`).
//! The rest of each side's Ogg handling differs (one writes a live stream, the other
//! checks a whole file), so only the checksum is shared.

/// CRC-32 with polynomial 0x04C11DB7, initial value 0, not reflected, no final XOR.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut r = (i as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            r = if r & 0x8000_0000 != 0 {
                (r << 1) ^ 0x04c1_1db7
            } else {
                r << 1
            };
            bit += 1;
        }
        table[i] = r;
        i += 1;
    }
    table
};

/// Continues the Ogg CRC `crc` (0 to start) over `data`. A page's checksum is the CRC of
/// the whole page with its checksum field (bytes 22..26) taken as zero.
pub fn crc(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = (crc << 8) ^ CRC_TABLE[usize::from((crc >> 24) as u8 ^ b)];
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crc_matches_the_ogg_reference_value() {
        // Ogg's parameters are CRC-32/POSIX without its final XOR, whose check value for
        // "123456789" is !0x765E7680.
        assert_eq!(crc(0, b"123456789"), 0x89a1_897f);
        assert_eq!(crc(crc(0, b"1234"), b"56789"), 0x89a1_897f);
    }
}
