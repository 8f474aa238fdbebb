//! `parse_byte_size`: never panics; what it accepts is the number times its
//! binary unit; a size shown in a whole unit by `ByteSize` parses back.
#![no_main]

use distribusync_core::size::{ByteSize, parse_byte_size};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, u64)| {
    let (text, n) = input;
    if let Ok(v) = parse_byte_size(text) {
        let t = text.trim();
        let digits: String = t.chars().take_while(char::is_ascii_digit).collect();
        let base: u64 = digits.parse().expect("accepted sizes start with digits");
        let unit = t[digits.len()..].trim().to_ascii_lowercase();
        let shift = match unit.chars().next() {
            None | Some('b' | 'i') => 0,
            Some('k') => 10,
            Some('m') => 20,
            Some('g') => 30,
            Some('t') => 40,
            Some(c) => panic!("{text:?} accepted with unit {c:?}"),
        };
        assert_eq!(Some(v), base.checked_mul(1 << shift), "{text:?}");
    }
    let shown = ByteSize(n).to_string();
    if !shown.contains('.') && !shown.ends_with("bytes") {
        assert_eq!(parse_byte_size(&shown), Ok(n), "{shown:?}");
    }
    assert_eq!(parse_byte_size(&n.to_string()), Ok(n));
});
