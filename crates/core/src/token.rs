//! Access tokens: their text form, scopes and expiry, without IO.
//!
//! A token reads `dst_<id>_<secret>`: `id` is 16 lowercase hex digits (8
//! random bytes) that name the token's row on the server, `secret` is 64
//! lowercase hex digits (32 bytes, 256 bits, from the OS RNG; the caller
//! draws them, this crate does no IO). The server keeps only a keyed BLAKE3
//! of the whole text ([`Token::keyed_hash`]), so a copy of its index does
//! not let anyone in.
//!
//! Invariants: [`Token::parse`] accepts exactly the texts
//! [`Token::from_parts`] produces and rejects everything else after at most
//! one length comparison for inputs of the wrong size, so a megabyte of
//! header costs nothing to refuse. `Debug` of a token never shows its
//! secret.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What every token starts with (so a token pasted into a chat or a
/// repository is easy to spot and to search for).
pub const TOKEN_PREFIX: &str = "dst_";
/// Random bytes of a token's id.
pub const ID_BYTES: usize = 8;
/// Random bytes of a token's secret: 256 bits.
pub const SECRET_BYTES: usize = 32;
/// Length of a token's text, in bytes.
pub const TOKEN_LEN: usize = TOKEN_PREFIX.len() + 2 * ID_BYTES + 1 + 2 * SECRET_BYTES;
/// Longest token name.
pub const MAX_NAME_LEN: usize = 64;

/// Why a text is not a token. The server answers all of them alike
/// (UNAUTHENTICATED); the detail is for the command line and tests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("a token is {TOKEN_LEN} characters long; this one is {0}")]
    Length(usize),
    #[error("a token starts with `{TOKEN_PREFIX}`")]
    Prefix,
    #[error("a token reads dst_<16 hex digits>_<64 hex digits>")]
    Shape,
}

/// A token's id: the part that names its row (not a secret).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId(String);

impl TokenId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An id as stored.
    ///
    /// # Errors
    /// [`TokenError::Shape`] unless `s` is 16 lowercase hex digits.
    pub fn parse(s: &str) -> Result<TokenId, TokenError> {
        if s.len() == 2 * ID_BYTES && is_lower_hex(s) {
            Ok(TokenId(s.to_owned()))
        } else {
            Err(TokenError::Shape)
        }
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenId({})", self.0)
    }
}

/// A token: its id and its whole text (which holds the secret).
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    id: TokenId,
    text: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}, secret hidden)", self.id)
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

impl Token {
    /// The token made of these random bytes (drawn by the caller from the
    /// OS RNG).
    pub fn from_parts(id: [u8; ID_BYTES], secret: [u8; SECRET_BYTES]) -> Token {
        let id = TokenId(hex(&id));
        let text = format!("{TOKEN_PREFIX}{}_{}", id.0, hex(&secret));
        Token { id, text }
    }

    /// Parses a token's text, strictly (no spaces, no upper case).
    ///
    /// # Errors
    /// A [`TokenError`] saying what is wrong; the length is checked first.
    pub fn parse(s: &str) -> Result<Token, TokenError> {
        let id = id_of(s)?;
        Ok(Token {
            id: TokenId(id.to_owned()),
            text: s.to_owned(),
        })
    }

    pub fn id(&self) -> &TokenId {
        &self.id
    }

    /// The whole text, secret included: show it once, at creation.
    pub fn reveal(&self) -> &str {
        &self.text
    }

    /// The keyed BLAKE3 of the token's text under the server's `key`: what
    /// the server stores. Compare two with [`blake3::Hash`]'s `==`, which
    /// runs in constant time.
    pub fn keyed_hash(&self, key: &[u8; 32]) -> blake3::Hash {
        keyed_hash(key, &self.text)
    }
}

/// [`Token::keyed_hash`] of a text already checked by [`id_of`] (the
/// server's per-call path: no allocation).
pub fn keyed_hash(key: &[u8; 32], text: &str) -> blake3::Hash {
    blake3::keyed_hash(key, text.as_bytes())
}

/// The id part of a token's text, checking the whole text as
/// [`Token::parse`] does, without allocating.
///
/// # Errors
/// As [`Token::parse`].
pub fn id_of(s: &str) -> Result<&str, TokenError> {
    if s.len() != TOKEN_LEN {
        return Err(TokenError::Length(s.len()));
    }
    let Some(rest) = s.strip_prefix(TOKEN_PREFIX) else {
        return Err(TokenError::Prefix);
    };
    // Only ASCII may follow; it also makes the split below fall on a
    // character boundary.
    if !rest.is_ascii() {
        return Err(TokenError::Shape);
    }
    let (id, secret) = rest.split_at(2 * ID_BYTES);
    let Some(secret) = secret.strip_prefix('_') else {
        return Err(TokenError::Shape);
    };
    if !is_lower_hex(id) || !is_lower_hex(secret) {
        return Err(TokenError::Shape);
    }
    Ok(id)
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// List, Stat, Download, Watch.
    Read,
    /// Upload, UploadBatch, UploadOffset, Delete, Rename.
    Write,
    /// Add, Sort, Submit, jobs and callbacks.
    Compute,
    /// Tokens and server status.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Write, Scope::Compute, Scope::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Compute => "compute",
            Scope::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of scopes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Scopes(u8);

/// A scope list that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("unknown scope `{}`: scopes are read, write, compute, admin", crate::echo(.0))]
    Unknown(String),
    #[error("no scope given: scopes are read, write, compute, admin")]
    Empty,
}

impl Scopes {
    pub const fn none() -> Scopes {
        Scopes(0)
    }

    pub fn all() -> Scopes {
        Scope::ALL.into_iter().collect()
    }

    pub fn contains(self, s: Scope) -> bool {
        self.0 & s.bit() != 0
    }

    pub fn insert(&mut self, s: Scope) {
        self.0 |= s.bit();
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    /// Parses `read,write,…` (spaces around names allowed, repeats folded).
    ///
    /// # Errors
    /// [`ScopeError`] for an unknown name or an empty list.
    pub fn parse(s: &str) -> Result<Scopes, ScopeError> {
        let mut scopes = Scopes::none();
        for word in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let scope = Scope::ALL
                .into_iter()
                .find(|x| x.name() == word)
                .ok_or_else(|| ScopeError::Unknown(word.to_owned()))?;
            scopes.insert(scope);
        }
        if scopes == Scopes::none() {
            return Err(ScopeError::Empty);
        }
        Ok(scopes)
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        let mut s = Scopes::none();
        for x in iter {
            s.insert(x);
        }
        s
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for s in self.iter() {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            f.write_str(s.name())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scopes({self})")
    }
}

/// A token name that is not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "token name `{}`: use 1 to {MAX_NAME_LEN} letters, digits, `-`, `_` or `.`",
    crate::echo(.0)
)]
pub struct NameError(pub String);

/// Checks a token's name (it shows in logs and listings, so it is plain).
///
/// # Errors
/// [`NameError`] for an empty, long or odd name.
pub fn check_name(name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(NameError(name.to_owned()))
    }
}

/// An `--expires` that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--expires `{}`: give a duration (90d, 12h, 2w, 30m) or a date (2027-01-01, UTC), in the future",
    crate::echo(.0)
)]
pub struct ExpiryError(pub String);

/// When a token given `--expires s` at `now` expires: a duration
/// (`90d`, `12h`, `2w`, `30m`, `45s`) after `now`, or the start (UTC) of a
/// date `YYYY-MM-DD`. The result must lie after `now`.
///
/// # Errors
/// [`ExpiryError`] for anything else.
pub fn parse_expiry(s: &str, now: SystemTime) -> Result<SystemTime, ExpiryError> {
    let err = || ExpiryError(s.to_owned());
    let t = if let Some(days) = parse_date(s) {
        let secs = u64::try_from(days.checked_mul(86_400).ok_or_else(err)?).map_err(|_| err())?;
        UNIX_EPOCH.checked_add(Duration::from_secs(secs))
    } else {
        let unit_at = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        let (n, unit) = s.split_at(unit_at);
        let n: u64 = n.parse().map_err(|_| err())?;
        let per = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            _ => return Err(err()),
        };
        n.checked_mul(per)
            .and_then(|secs| now.checked_add(Duration::from_secs(secs)))
    }
    .ok_or_else(err)?;
    if t <= now {
        return Err(err());
    }
    Ok(t)
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date (proleptic Gregorian).
fn parse_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > month_days[usize::try_from(m - 1).ok()?] {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_made_token_parses_back_to_itself_and_hides_its_secret() {
        let t = Token::from_parts([0xab; ID_BYTES], [0x01; SECRET_BYTES]);
        assert_eq!(t.reveal().len(), TOKEN_LEN);
        assert!(t.reveal().starts_with("dst_abababababababab_0101"));
        assert_eq!(Token::parse(t.reveal()), Ok(t.clone()));
        assert!(!format!("{t:?}").contains("0101"));
    }

    #[test]
    fn malformed_tokens_are_refused_with_a_reason() {
        let good = Token::from_parts([1; ID_BYTES], [2; SECRET_BYTES]);
        let g = good.reveal();
        assert_eq!(Token::parse(""), Err(TokenError::Length(0)));
        assert_eq!(
            Token::parse(&"x".repeat(1 << 20)),
            Err(TokenError::Length(1 << 20))
        );
        assert_eq!(
            Token::parse(&g.replacen("dst_", "dsx_", 1)),
            Err(TokenError::Prefix)
        );
        assert_eq!(Token::parse(&g.to_uppercase()), Err(TokenError::Prefix));
        let mut upper = g.to_owned();
        upper.replace_range(TOKEN_LEN - 1.., "A");
        assert_eq!(Token::parse(&upper), Err(TokenError::Shape));
        let mut no_sep = g.to_owned();
        no_sep.replace_range(20..21, "0");
        assert_eq!(Token::parse(&no_sep), Err(TokenError::Shape));
        // A multi-byte character of the right byte length is not a panic.
        let mut odd = g[..TOKEN_LEN - 2].to_owned();
        odd.push('é');
        assert_eq!(Token::parse(&odd), Err(TokenError::Shape));
        let mut odd = g[..TOKEN_PREFIX.len() + 15].to_owned();
        odd.push('é');
        odd.push_str(&g[TOKEN_PREFIX.len() + 17..]);
        assert_eq!(Token::parse(&odd), Err(TokenError::Shape));
    }

    #[test]
    fn keyed_hashes_differ_by_key_and_by_token() {
        let a = Token::from_parts([1; ID_BYTES], [2; SECRET_BYTES]);
        let b = Token::from_parts([1; ID_BYTES], [3; SECRET_BYTES]);
        assert_ne!(a.keyed_hash(&[0; 32]), a.keyed_hash(&[1; 32]));
        assert_ne!(a.keyed_hash(&[0; 32]), b.keyed_hash(&[0; 32]));
        assert_eq!(a.keyed_hash(&[7; 32]), a.keyed_hash(&[7; 32]));
    }

    #[test]
    fn scopes_parse_display_and_refuse_unknown_names() {
        let s = Scopes::parse("write, read,read").expect("valid");
        assert!(s.contains(Scope::Read) && s.contains(Scope::Write));
        assert!(!s.contains(Scope::Admin));
        assert_eq!(s.to_string(), "read,write");
        assert_eq!(Scopes::all().to_string(), "read,write,compute,admin");
        assert_eq!(
            Scopes::parse("read,root"),
            Err(ScopeError::Unknown("root".into()))
        );
        assert_eq!(Scopes::parse(" , "), Err(ScopeError::Empty));
    }

    #[test]
    fn names_are_plain() {
        assert!(check_name("photo-frame_2.local").is_ok());
        for bad in ["", "a b", "ü", &"x".repeat(MAX_NAME_LEN + 1), "a/b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn expiry_takes_durations_and_dates_in_the_future() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_expiry("90d", now),
            Ok(now + Duration::from_secs(90 * 86_400))
        );
        assert_eq!(parse_expiry("2h", now), Ok(now + Duration::from_secs(7200)));
        assert_eq!(
            parse_expiry("2027-01-01", now),
            Ok(UNIX_EPOCH + Duration::from_secs(1_798_761_600))
        );
        for bad in [
            "",
            "90",
            "d",
            "90y",
            "-1d",
            "0d",
            "2020-01-01",
            "2027-02-30",
            "2027-1-01",
            "99999999999999999999d",
            "18446744073709551615w",
        ] {
            assert!(parse_expiry(bad, now).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn every_made_token_parses(id in any::<[u8; ID_BYTES]>(), secret in any::<[u8; SECRET_BYTES]>()) {
            let t = Token::from_parts(id, secret);
            prop_assert_eq!(Token::parse(t.reveal()), Ok(t.clone()));
        }

        #[test]
        fn parse_never_panics_and_accepts_only_the_canonical_shape(s in "\\PC{0,100}") {
            if let Ok(t) = Token::parse(&s) {
                prop_assert_eq!(t.reveal(), s.as_str());
                prop_assert!(s.starts_with(TOKEN_PREFIX) && s.len() == TOKEN_LEN);
            }
        }

        #[test]
        fn one_changed_character_of_a_token_is_another_or_no_token(
            id in any::<[u8; ID_BYTES]>(), secret in any::<[u8; SECRET_BYTES]>(),
            at in 0..TOKEN_LEN, c in any::<char>(),
        ) {
            let t = Token::from_parts(id, secret);
            let mut s: Vec<char> = t.reveal().chars().collect();
            let same = s[at] == c;
            s[at] = c;
            let s: String = s.into_iter().collect();
            // Another character is never the same token: no folding of
            // case, no ignored separator.
            if let Ok(u) = Token::parse(&s) {
                prop_assert_eq!(u == t, same);
            }
        }
    }
}
