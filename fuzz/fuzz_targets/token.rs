//! Token text, scopes, names and `--expires`: parsing never panics; an
//! accepted token round-trips and its id is the one `id_of` finds without
//! allocating; accepted scopes print back to the same set; an accepted name
//! obeys the documented alphabet and length.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use distribusync_core::token::{Scopes, Token, check_name, id_of, parse_expiry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, u32)| {
    let (text, now_secs) = input;
    match (Token::parse(text), id_of(text)) {
        (Ok(t), Ok(id)) => {
            assert_eq!(t.reveal(), text);
            assert_eq!(t.id().as_str(), id);
            assert_eq!(
                Token::parse(t.reveal()).map(|u| u.reveal().to_owned()).ok(),
                Some(text.to_owned())
            );
        }
        (Err(_), Err(_)) => {}
        (a, b) => panic!("parse and id_of disagree on {text:?}: {a:?} / {b:?}"),
    }
    if let Ok(s) = Scopes::parse(text) {
        assert_eq!(Scopes::parse(&s.to_string()).ok(), Some(s), "{text:?}");
    }
    if check_name(text).is_ok() {
        assert!(!text.is_empty() && text.is_ascii(), "{text:?}");
    }
    let now = UNIX_EPOCH + Duration::from_secs(u64::from(now_secs));
    let _ = parse_expiry(text, now);
});
