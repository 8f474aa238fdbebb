//! The arithmetic of the Compute service: [`Number`], [`Numbers`], checked
//! [`add`], [`sort`] and [`parse_numbers`].
//!
//! Rules, the same on every layer:
//! - A list is all integers (exact `i64`) or all decimals (`f64`). Text with at
//!   least one decimal token becomes decimals.
//! - An integer sum whose exact value leaves the `i64` range is
//!   [`ArithError::IntegerOverflow`], never a wrap; a sum that fits comes back
//!   whatever the order of the numbers (partial sums are exact, in `i128`).
//!   A decimal sum that leaves the finite range is [`ArithError::FloatOverflow`];
//!   decimals add as IEEE says, so `-0.0 + -0.0` is `-0.0`.
//! - NaN and infinities are rejected as inputs ([`ArithError::NotFinite`]), so
//!   every result is finite and decimal sorting is a total order
//!   ([`f64::total_cmp`], which puts `-0.0` before `0.0`).

use std::fmt;

/// Numbers per message when a list travels in chunks (a Sort's input and
/// output): 1 MiB of 64-bit numbers.
pub const CHUNK_NUMBERS: usize = 128 * 1024;

/// One number: an exact 64-bit integer or a finite decimal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    Int(i64),
    Float(f64),
}

impl fmt::Display for Number {
    /// Integers as digits; decimals always with a fraction or exponent
    /// (`3.0`, `1e300`), so the kind survives a round trip through text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Number::Int(i) => write!(f, "{i}"),
            Number::Float(x) => write!(f, "{x:?}"),
        }
    }
}

/// A list of numbers of one kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Numbers {
    Ints(Vec<i64>),
    Floats(Vec<f64>),
}

impl Default for Numbers {
    fn default() -> Self {
        Numbers::Ints(Vec::new())
    }
}

impl AsRef<Numbers> for Numbers {
    fn as_ref(&self) -> &Numbers {
        self
    }
}

impl From<&[Number]> for Numbers {
    fn from(n: &[Number]) -> Self {
        Numbers::from_numbers(n)
    }
}

impl From<Vec<i64>> for Numbers {
    fn from(v: Vec<i64>) -> Self {
        Numbers::Ints(v)
    }
}

impl From<Vec<f64>> for Numbers {
    fn from(v: Vec<f64>) -> Self {
        Numbers::Floats(v)
    }
}

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    #[default]
    Ascending,
    Descending,
}

/// Why an arithmetic request has no answer. Messages name the problem.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ArithError {
    #[error("add needs at least two numbers, got {0}")]
    TooFew(usize),
    #[error(
        "integer overflow: the sum exceeds the 64-bit range ({}..={})",
        i64::MIN,
        i64::MAX
    )]
    IntegerOverflow,
    #[error(
        "decimal overflow: the sum exceeds the finite f64 range (±{:e})",
        f64::MAX
    )]
    FloatOverflow,
    #[error("number #{index} is {value}: NaN and infinities are not accepted")]
    NotFinite { index: usize, value: f64 },
    #[error("cancelled")]
    Cancelled,
}

/// A token that is not a number, with its 1-based line and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {why}")]
pub struct ParseError {
    pub line: usize,
    pub token: String,
    pub why: NumberError,
}

/// Why one token is not a number (without a line: command-line arguments).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    #[error("{0:?} is not a number")]
    NotANumber(String),
    #[error("{0:?} is not a finite number (NaN and infinities are not accepted)")]
    NotFinite(String),
    #[error("{0:?} is out of the 64-bit integer range")]
    IntegerRange(String),
}

/// How often (in elements) long loops look at their cancellation flag.
const CANCEL_CHECK_EVERY: usize = 1 << 16;

impl Numbers {
    /// How many numbers the list holds.
    pub fn len(&self) -> usize {
        match self {
            Numbers::Ints(v) => v.len(),
            Numbers::Floats(v) => v.len(),
        }
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Builds one list from single numbers: integers if every one is an
    /// integer, else decimals (integers converted, rounding past 2^53).
    pub fn from_numbers(numbers: &[Number]) -> Numbers {
        if numbers.iter().all(|n| matches!(n, Number::Int(_))) {
            Numbers::Ints(
                numbers
                    .iter()
                    .map(|n| match n {
                        Number::Int(i) => *i,
                        Number::Float(x) => *x as i64,
                    })
                    .collect(),
            )
        } else {
            Numbers::Floats(
                numbers
                    .iter()
                    .map(|n| match n {
                        Number::Int(i) => *i as f64,
                        Number::Float(x) => *x,
                    })
                    .collect(),
            )
        }
    }

    /// Checks that every decimal is finite.
    ///
    /// # Errors
    /// [`ArithError::NotFinite`] naming the first offending position (1-based).
    pub fn validate(&self) -> Result<(), ArithError> {
        if let Numbers::Floats(v) = self
            && let Some(i) = v.iter().position(|x| !x.is_finite())
        {
            return Err(ArithError::NotFinite {
                index: i + 1,
                value: v[i],
            });
        }
        Ok(())
    }

    /// Appends `other`, which must be of the same kind.
    ///
    /// # Errors
    /// Gives `other` back when the kinds differ (an empty list is of any kind).
    pub fn extend(&mut self, other: Numbers) -> Result<(), Numbers> {
        match (self, other) {
            (Numbers::Ints(a), Numbers::Ints(b)) => a.extend_from_slice(&b),
            (Numbers::Floats(a), Numbers::Floats(b)) => a.extend_from_slice(&b),
            (_, b) if b.is_empty() => {}
            (s, b) if s.is_empty() => *s = b,
            (_, b) => return Err(b),
        }
        Ok(())
    }
}

/// The sum of two or more numbers. See [`add_cancellable`].
///
/// # Errors
/// [`ArithError::TooFew`], [`ArithError::NotFinite`],
/// [`ArithError::IntegerOverflow`], [`ArithError::FloatOverflow`].
pub fn add(numbers: &Numbers) -> Result<Number, ArithError> {
    add_cancellable(numbers, || false)
}

/// The sum of two or more numbers, giving up with [`ArithError::Cancelled`]
/// once `cancelled()` answers true (checked every 65,536 numbers).
///
/// Integers are summed exactly in `i128` (which cannot overflow for any
/// list a computer can hold: 2^64 numbers of at most 2^63 each fit), and the
/// sum is an overflow only if the exact total leaves the `i64` range, so the
/// answer never depends on the order of the numbers.
///
/// Decimals are summed left to right starting from `-0.0`, the IEEE additive
/// identity, so a sum of negative zeros is `-0.0` (and any `+0.0` makes it
/// `+0.0`), as IEEE addition says. If a partial sum leaves the finite range,
/// the sum is taken again with every number scaled down by a power of two
/// (exact, bar subnormals), so a total that fits is not lost to the order
/// in which big numbers came; only a total beyond the finite range is
/// [`ArithError::FloatOverflow`].
///
/// # Errors
/// As [`add`], plus [`ArithError::Cancelled`].
pub fn add_cancellable(
    numbers: &Numbers,
    cancelled: impl Fn() -> bool,
) -> Result<Number, ArithError> {
    if numbers.len() < 2 {
        return Err(ArithError::TooFew(numbers.len()));
    }
    numbers.validate()?;
    match numbers {
        Numbers::Ints(v) => sum_ints(v, cancelled).map(Number::Int),
        Numbers::Floats(v) => sum_floats(v, cancelled).map(Number::Float),
    }
}

/// The exact sum of `v`, whatever its order. See [`add_cancellable`].
fn sum_ints(v: &[i64], cancelled: impl Fn() -> bool) -> Result<i64, ArithError> {
    let mut sum: i128 = 0;
    for chunk in v.chunks(CANCEL_CHECK_EVERY) {
        if cancelled() {
            return Err(ArithError::Cancelled);
        }
        sum += chunk.iter().map(|&x| i128::from(x)).sum::<i128>();
    }
    i64::try_from(sum).map_err(|_| ArithError::IntegerOverflow)
}

/// The sum of finite `v`, left to right. See [`add_cancellable`].
fn sum_floats(v: &[f64], cancelled: impl Fn() -> bool) -> Result<f64, ArithError> {
    let plain = sum_scaled(v, 1.0, &cancelled)?;
    if plain.is_finite() {
        return Ok(plain);
    }
    // A partial sum overflowed. Every partial sum of `v` scaled by 2^-k is
    // at most len * f64::MAX * 2^-k, finite once 2^k >= 2 * len.
    let k = (v.len() as u64)
        .saturating_mul(2)
        .next_power_of_two()
        .trailing_zeros();
    let scale = 2f64.powi(i32::try_from(k).unwrap_or(i32::MAX));
    let scaled = sum_scaled(v, 1.0 / scale, &cancelled)?;
    let total = scaled * scale;
    if total.is_finite() {
        Ok(total)
    } else {
        Err(ArithError::FloatOverflow)
    }
}

/// The left-to-right sum of `v`, each number times `factor` (a power of
/// two), starting from `-0.0`; infinite if a partial sum overflowed.
fn sum_scaled(v: &[f64], factor: f64, cancelled: &impl Fn() -> bool) -> Result<f64, ArithError> {
    let mut sum: f64 = -0.0;
    for chunk in v.chunks(CANCEL_CHECK_EVERY) {
        if cancelled() {
            return Err(ArithError::Cancelled);
        }
        for &x in chunk {
            sum += x * factor;
        }
        if !sum.is_finite() {
            // Once infinite it stays infinite or turns NaN: stop here.
            return Ok(f64::INFINITY);
        }
    }
    Ok(sum)
}

/// Sorts in place on the calling thread. Decimals by [`f64::total_cmp`].
/// The server uses a parallel sort with the same comparators
/// ([`cmp_ints`], [`cmp_floats`]).
pub fn sort(numbers: &mut Numbers, order: Order) {
    match numbers {
        Numbers::Ints(v) => v.sort_unstable_by(|a, b| cmp_ints(a, b, order)),
        Numbers::Floats(v) => v.sort_unstable_by(|a, b| cmp_floats(a, b, order)),
    }
}

/// The integer comparator for `order`.
#[inline]
pub fn cmp_ints(a: &i64, b: &i64, order: Order) -> std::cmp::Ordering {
    match order {
        Order::Ascending => a.cmp(b),
        Order::Descending => b.cmp(a),
    }
}

/// The decimal comparator for `order` (IEEE total order).
#[inline]
pub fn cmp_floats(a: &f64, b: &f64, order: Order) -> std::cmp::Ordering {
    match order {
        Order::Ascending => a.total_cmp(b),
        Order::Descending => b.total_cmp(a),
    }
}

/// Appends to `out` the merge of `a` and `b` until `out` holds `max` values
/// or one side runs out; returns how much of `a` and `b` was taken.
fn merge_step<T: Copy, F: Fn(&T, &T) -> std::cmp::Ordering>(
    a: &[T],
    b: &[T],
    cmp: &F,
    out: &mut Vec<T>,
    max: usize,
) -> (usize, usize) {
    let (mut i, mut j) = (0, 0);
    let room = max.saturating_sub(out.len());
    // Every step takes exactly one value, so the loop can run this often
    // without checking `out` or either end again.
    let steps = room.min(a.len() + b.len());
    let mut taken = 0;
    while taken < steps && i < a.len() && j < b.len() {
        // Either side can run out before `steps`; bound this burst by the
        // shorter remainder so no index check is needed inside it.
        let burst = (steps - taken).min(a.len() - i).min(b.len() - j);
        for _ in 0..burst {
            let (x, y) = (a[i], b[j]);
            let take_b = cmp(&y, &x) == std::cmp::Ordering::Less;
            out.push(if take_b { y } else { x });
            j += usize::from(take_b);
            i += usize::from(!take_b);
        }
        taken += burst;
    }
    (i, j)
}

/// Merges runs, each already sorted by `cmp`, handing out the merged order
/// a chunk at a time (so a server can send the start of a big sort while it
/// merges the rest). The runs form a balanced tree of lazy two-way merges,
/// each with a small buffer: no copy of the whole input is ever made.
#[derive(Debug)]
pub struct MergeRuns<T, F> {
    root: Node<T>,
    cmp: F,
}

/// Values each inner merge prepares at a time.
const MERGE_BUF: usize = 32 * 1024;

#[derive(Debug)]
enum Node<T> {
    Run {
        data: Vec<T>,
        pos: usize,
    },
    Merge {
        left: Box<Node<T>>,
        right: Box<Node<T>>,
        buf: Vec<T>,
        pos: usize,
    },
}

impl<T: Copy> Node<T> {
    /// A balanced tree over `runs` (at least one).
    fn build(mut runs: Vec<Vec<T>>) -> Self {
        if runs.len() <= 1 {
            return Node::Run {
                data: runs.pop().unwrap_or_default(),
                pos: 0,
            };
        }
        let right = runs.split_off(runs.len() / 2);
        Node::Merge {
            left: Box::new(Self::build(runs)),
            right: Box::new(Self::build(right)),
            buf: Vec::new(),
            pos: 0,
        }
    }

    /// Values ready to be taken, in order (empty only when all are out,
    /// once [`Node::refill`] has been called).
    fn ready(&self) -> &[T] {
        match self {
            Node::Run { data, pos } => &data[*pos..],
            Node::Merge { buf, pos, .. } => &buf[*pos..],
        }
    }

    fn take(&mut self, n: usize) {
        match self {
            Node::Run { pos, .. } | Node::Merge { pos, .. } => *pos += n,
        }
    }

    fn remaining(&self) -> usize {
        match self {
            Node::Run { data, pos } => data.len() - pos,
            Node::Merge {
                left,
                right,
                buf,
                pos,
            } => buf.len() - pos + left.remaining() + right.remaining(),
        }
    }

    /// Makes values ready if none are and any are left.
    fn refill<F: Fn(&T, &T) -> std::cmp::Ordering>(&mut self, cmp: &F) {
        let Node::Merge {
            left,
            right,
            buf,
            pos,
        } = self
        else {
            return;
        };
        if *pos < buf.len() {
            return;
        }
        buf.clear();
        *pos = 0;
        left.refill(cmp);
        right.refill(cmp);
        let (i, j) = merge_step(left.ready(), right.ready(), cmp, buf, MERGE_BUF);
        left.take(i);
        right.take(j);
        if buf.is_empty() {
            // A side had nothing ready, so it is out for good (a refill
            // makes values ready if any are left): the other's follow as
            // they are.
            let side = if left.ready().is_empty() { right } else { left };
            let n = side.ready().len().min(MERGE_BUF);
            buf.extend_from_slice(&side.ready()[..n]);
            side.take(n);
        }
    }
}

impl<T: Copy, F: Fn(&T, &T) -> std::cmp::Ordering> MergeRuns<T, F> {
    /// Empty runs are allowed.
    pub fn new(runs: Vec<Vec<T>>, cmp: F) -> Self {
        let runs: Vec<Vec<T>> = runs.into_iter().filter(|r| !r.is_empty()).collect();
        MergeRuns {
            root: Node::build(runs),
            cmp,
        }
    }

    /// How many values are left.
    pub fn remaining(&self) -> usize {
        self.root.remaining()
    }

    /// The next at most `max` values in order; `None` when all are out.
    pub fn next_chunk(&mut self, max: usize) -> Option<Vec<T>> {
        let mut out = Vec::with_capacity(max.min(self.remaining()));
        while out.len() < max {
            self.root.refill(&self.cmp);
            let ready = self.root.ready();
            if ready.is_empty() {
                break;
            }
            let n = ready.len().min(max - out.len());
            out.extend_from_slice(&ready[..n]);
            self.root.take(n);
        }
        (!out.is_empty()).then_some(out)
    }
}

/// Parses one token: an integer (`-12`, `+7`) or a finite decimal (`1.5`,
/// `-2e10`, `.5`). Words such as `inf` or `NaN` are refused.
///
/// # Errors
/// [`NumberError`] naming the token.
pub fn parse_number(token: &str) -> Result<Number, NumberError> {
    let t = token.trim();
    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
    if digits.is_empty() || !digits.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        // Rejects "inf", "NaN", "infinity" and words, which `f64::from_str`
        // would otherwise accept.
        return Err(NumberError::NotANumber(token.to_owned()));
    }
    if digits.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<i64>()
            .map(Number::Int)
            .map_err(|_| NumberError::IntegerRange(token.to_owned()));
    }
    match t.parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(Number::Float(x)),
        Ok(_) => Err(NumberError::NotFinite(token.to_owned())),
        Err(_) => Err(NumberError::NotANumber(token.to_owned())),
    }
}

/// Parses numbers separated by whitespace (newlines included) or commas.
/// Integers if every token is one, else decimals.
///
/// # Errors
/// [`ParseError`] naming the first bad token and its line (1-based).
pub fn parse_numbers(text: &str) -> Result<Numbers, ParseError> {
    let mut ints: Vec<i64> = Vec::new();
    let mut floats: Option<Vec<f64>> = None;
    for (i, line) in text.lines().enumerate() {
        let tokens = line
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|t| !t.is_empty());
        for token in tokens {
            let n = parse_number(token).map_err(|why| ParseError {
                line: i + 1,
                token: token.to_owned(),
                why,
            })?;
            match (n, &mut floats) {
                (Number::Int(x), None) => ints.push(x),
                (Number::Int(x), Some(f)) => f.push(x as f64),
                (Number::Float(x), Some(f)) => f.push(x),
                (Number::Float(x), None) => {
                    let mut f: Vec<f64> = ints.drain(..).map(|i| i as f64).collect();
                    f.push(x);
                    floats = Some(f);
                }
            }
        }
    }
    Ok(match floats {
        Some(f) => Numbers::Floats(f),
        None => Numbers::Ints(ints),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn adds_integers_exactly() {
        assert_eq!(add(&Numbers::Ints(vec![2, 3, 4])), Ok(Number::Int(9)));
        assert_eq!(
            add(&Numbers::Ints(vec![i64::MAX, -1, 1])),
            Ok(Number::Int(i64::MAX))
        );
    }

    #[test]
    fn integer_overflow_is_an_error_naming_it() {
        let e = add(&Numbers::Ints(vec![i64::MAX, 1])).unwrap_err();
        assert_eq!(e, ArithError::IntegerOverflow);
        assert!(e.to_string().contains("overflow"), "{e}");
        assert!(e.to_string().contains("9223372036854775807"), "{e}");
        assert_eq!(
            add(&Numbers::Ints(vec![i64::MIN, -1])),
            Err(ArithError::IntegerOverflow)
        );
    }

    #[test]
    fn integer_add_does_not_depend_on_order() {
        // Issue 9, item 7: `add 9223372036854775807 1 -1` overflowed while
        // `add 1 -1 9223372036854775807` answered.
        for v in [
            vec![i64::MAX, 1, -1],
            vec![1, -1, i64::MAX],
            vec![1, i64::MAX, -1],
            vec![-1, i64::MAX, 1],
        ] {
            assert_eq!(
                add(&Numbers::Ints(v.clone())),
                Ok(Number::Int(i64::MAX)),
                "{v:?}"
            );
        }
        assert_eq!(
            add(&Numbers::Ints(vec![i64::MIN, -1, 1])),
            Ok(Number::Int(i64::MIN))
        );
        assert_eq!(
            add(&Numbers::Ints(vec![
                i64::MAX,
                i64::MAX,
                i64::MIN,
                i64::MIN,
                1
            ])),
            Ok(Number::Int(-1))
        );
        assert_eq!(
            add(&Numbers::Ints(vec![-1, i64::MAX, 1, 1])),
            Err(ArithError::IntegerOverflow)
        );
    }

    #[test]
    fn negative_zeros_add_to_negative_zero() {
        let sign = |n: Result<Number, ArithError>| match n {
            Ok(Number::Float(x)) => (x, x.is_sign_negative()),
            other => panic!("{other:?}"),
        };
        assert_eq!(sign(add(&Numbers::Floats(vec![-0.0, -0.0]))), (0.0, true));
        assert_eq!(
            sign(add(&Numbers::Floats(vec![-0.0; 200_000]))),
            (0.0, true)
        );
        assert_eq!(sign(add(&Numbers::Floats(vec![-0.0, 0.0]))), (0.0, false));
        assert_eq!(sign(add(&Numbers::Floats(vec![0.0, -0.0]))), (0.0, false));
        assert_eq!(sign(add(&Numbers::Floats(vec![1.5, -1.5]))), (0.0, false));
        assert_eq!(Number::Float(-0.0).to_string(), "-0.0");
    }

    #[test]
    fn a_decimal_sum_that_fits_survives_an_overflowing_partial_sum() {
        assert_eq!(
            add(&Numbers::Floats(vec![f64::MAX, f64::MAX, -f64::MAX])),
            Ok(Number::Float(f64::MAX))
        );
        assert_eq!(
            add(&Numbers::Floats(vec![-f64::MAX, -f64::MAX, 1.0, f64::MAX])),
            Ok(Number::Float(-f64::MAX))
        );
        assert_eq!(
            add(&Numbers::Floats(vec![f64::MAX, f64::MAX, -1.0])),
            Err(ArithError::FloatOverflow)
        );
    }

    #[test]
    fn too_few_numbers() {
        assert_eq!(add(&Numbers::Ints(vec![1])), Err(ArithError::TooFew(1)));
        assert_eq!(add(&Numbers::Floats(vec![])), Err(ArithError::TooFew(0)));
    }

    #[test]
    fn decimals_non_finite_rejected_and_overflow_detected() {
        assert_eq!(
            add(&Numbers::Floats(vec![1.5, 1.5])),
            Ok(Number::Float(3.0))
        );
        assert!(matches!(
            add(&Numbers::Floats(vec![1.0, f64::NAN])),
            Err(ArithError::NotFinite { index: 2, .. })
        ));
        assert!(matches!(
            add(&Numbers::Floats(vec![f64::INFINITY, 1.0])),
            Err(ArithError::NotFinite { index: 1, .. })
        ));
        assert_eq!(
            add(&Numbers::Floats(vec![f64::MAX, f64::MAX])),
            Err(ArithError::FloatOverflow)
        );
    }

    #[test]
    fn cancellation_stops_a_sum() {
        let v = Numbers::Ints(vec![1; 200_000]);
        assert_eq!(add_cancellable(&v, || true), Err(ArithError::Cancelled));
    }

    #[test]
    fn sorts_both_ways_and_orders_signed_zero() {
        let mut n = Numbers::Ints(vec![5, 1, 4]);
        sort(&mut n, Order::Descending);
        assert_eq!(n, Numbers::Ints(vec![5, 4, 1]));
        let mut f = Numbers::Floats(vec![0.0, -0.0, -1.5, 2.0]);
        sort(&mut f, Order::Ascending);
        let Numbers::Floats(f) = f else {
            unreachable!()
        };
        assert_eq!(f[0], -1.5);
        assert!(f[1].is_sign_negative() && f[1] == 0.0);
        assert!(f[2].is_sign_positive() && f[2] == 0.0);
    }

    #[test]
    fn parses_tokens() {
        assert_eq!(parse_number("-12"), Ok(Number::Int(-12)));
        assert_eq!(parse_number("+7"), Ok(Number::Int(7)));
        assert_eq!(parse_number("1.5"), Ok(Number::Float(1.5)));
        assert_eq!(parse_number("-2e3"), Ok(Number::Float(-2000.0)));
        assert_eq!(parse_number(".5"), Ok(Number::Float(0.5)));
        for bad in [
            "two", "inf", "-inf", "NaN", "infinity", "", "-", "1x", "0x10",
        ] {
            assert!(parse_number(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            parse_number("1e999"),
            Err(NumberError::NotFinite("1e999".into()))
        );
        assert_eq!(
            parse_number("9223372036854775808"),
            Err(NumberError::IntegerRange("9223372036854775808".into()))
        );
        assert_eq!(
            parse_number("9223372036854775807"),
            Ok(Number::Int(i64::MAX))
        );
    }

    #[test]
    fn parse_names_the_line_of_a_stray_word() {
        let e = parse_numbers("1 2\n3\n4 oops 5\n").unwrap_err();
        assert_eq!(
            e,
            ParseError {
                line: 3,
                token: "oops".into(),
                why: NumberError::NotANumber("oops".into()),
            }
        );
        assert_eq!(e.to_string(), "line 3: \"oops\" is not a number");
        let e = parse_numbers("1\n99999999999999999999").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 2: \"99999999999999999999\" is out of the 64-bit integer range"
        );
    }

    #[test]
    fn commas_separate_too() {
        assert_eq!(
            parse_numbers("1,2, 3 ,4\n5"),
            Ok(Numbers::Ints(vec![1, 2, 3, 4, 5]))
        );
        assert!(parse_numbers("1,,2").is_ok());
    }

    #[test]
    fn parse_mixed_becomes_decimals_and_empty_is_empty() {
        assert_eq!(
            parse_numbers("1\n2.5  3\n"),
            Ok(Numbers::Floats(vec![1.0, 2.5, 3.0]))
        );
        assert_eq!(parse_numbers(" \n\t\n"), Ok(Numbers::Ints(vec![])));
    }

    #[test]
    fn display_keeps_the_kind() {
        assert_eq!(Number::Int(3).to_string(), "3");
        assert_eq!(Number::Float(3.0).to_string(), "3.0");
    }

    #[test]
    fn extend_checks_kinds() {
        let mut n = Numbers::default();
        n.extend(Numbers::Floats(vec![1.0])).unwrap();
        n.extend(Numbers::Floats(vec![2.0])).unwrap();
        assert_eq!(n, Numbers::Floats(vec![1.0, 2.0]));
        assert!(n.extend(Numbers::Ints(vec![3])).is_err());
        n.extend(Numbers::Ints(vec![])).unwrap();
        let mut m = Numbers::Ints(vec![1]);
        m.extend(Numbers::Ints(vec![2])).unwrap();
        assert_eq!(m, Numbers::Ints(vec![1, 2]));
    }

    #[test]
    fn merging_runs_bigger_than_the_merge_buffers_keeps_every_value_in_order() {
        // Runs of uneven lengths around and past the inner buffers' size,
        // with many equal values, both orders.
        let mut x = 12345u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for order in [Order::Ascending, Order::Descending] {
            let lens = [
                0,
                1,
                MERGE_BUF - 1,
                MERGE_BUF,
                MERGE_BUF + 1,
                3 * MERGE_BUF + 7,
                100_000,
            ];
            let runs: Vec<Vec<i64>> = lens
                .iter()
                .map(|&n| {
                    let mut r: Vec<i64> = (0..n).map(|_| (next() % 1000) as i64 - 500).collect();
                    r.sort_unstable_by(|a, b| cmp_ints(a, b, order));
                    r
                })
                .collect();
            let mut expected: Vec<i64> = runs.concat();
            expected.sort_unstable_by(|a, b| cmp_ints(a, b, order));
            let mut m = MergeRuns::new(runs, |a: &i64, b: &i64| cmp_ints(a, b, order));
            assert_eq!(m.remaining(), expected.len());
            let mut got = Vec::new();
            while let Some(c) = m.next_chunk(10_007) {
                assert!(c.len() <= 10_007);
                got.extend(c);
            }
            assert_eq!(got, expected);
            assert_eq!(m.remaining(), 0);
        }
    }

    proptest! {
        #[test]
        fn integer_add_is_the_exact_sum_in_any_order(
            v in proptest::collection::vec(
                prop_oneof![any::<i64>(), Just(i64::MAX), Just(i64::MIN), -3i64..3],
                2..40,
            ),
            seed in any::<u64>(),
        ) {
            let exact: i128 = v.iter().map(|&x| i128::from(x)).sum();
            let expected = i64::try_from(exact).map_err(|_| ArithError::IntegerOverflow);
            // The given order, its reverse and a shuffle all agree with the
            // exact sum.
            let mut shuffled = v.clone();
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut reversed = v.clone();
            reversed.reverse();
            for order in [v, reversed, shuffled] {
                prop_assert_eq!(add(&Numbers::Ints(order)), expected.clone().map(Number::Int));
            }
        }

        #[test]
        fn integer_add_of_a_fitting_sum_never_overflows_midway(
            big in prop_oneof![Just(i64::MAX), Just(i64::MIN)],
            n in 1usize..6,
        ) {
            // big, then n pushes past the range, then n pulls back: the exact
            // sum is big, whatever the order.
            let step = if big > 0 { 1 } else { -1 };
            let mut v = vec![big];
            v.extend(std::iter::repeat_n(step, n));
            v.extend(std::iter::repeat_n(-step, n));
            prop_assert_eq!(add(&Numbers::Ints(v.clone())), Ok(Number::Int(big)));
            v.reverse();
            prop_assert_eq!(add(&Numbers::Ints(v)), Ok(Number::Int(big)));
        }

        #[test]
        fn sort_is_a_sorted_permutation(v in proptest::collection::vec(any::<i64>(), 0..200), desc in any::<bool>()) {
            let order = if desc { Order::Descending } else { Order::Ascending };
            let mut n = Numbers::Ints(v.clone());
            sort(&mut n, order);
            let Numbers::Ints(s) = n else { unreachable!() };
            let mut expected = v;
            expected.sort();
            if desc { expected.reverse(); }
            prop_assert_eq!(s, expected);
        }

        #[test]
        fn merging_sorted_runs_sorts(
            runs in proptest::collection::vec(proptest::collection::vec(any::<i64>(), 0..50), 0..6),
            chunk in 1usize..20,
            desc in any::<bool>(),
        ) {
            let order = if desc { Order::Descending } else { Order::Ascending };
            let mut expected: Vec<i64> = runs.concat();
            expected.sort_unstable_by(|a, b| cmp_ints(a, b, order));
            let sorted_runs: Vec<Vec<i64>> = runs
                .into_iter()
                .map(|mut r| { r.sort_unstable_by(|a, b| cmp_ints(a, b, order)); r })
                .collect();
            let mut m = MergeRuns::new(sorted_runs, |a: &i64, b: &i64| cmp_ints(a, b, order));
            let mut got = Vec::new();
            while let Some(c) = m.next_chunk(chunk) {
                prop_assert!(c.len() <= chunk && !c.is_empty());
                got.extend(c);
            }
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn text_round_trip(v in proptest::collection::vec(any::<i64>(), 0..100)) {
            let text: String = v.iter().map(|x| format!("{x}\n")).collect();
            prop_assert_eq!(parse_numbers(&text), Ok(Numbers::Ints(v)));
        }

        #[test]
        fn finite_floats_round_trip_through_display(x in proptest::num::f64::NORMAL | proptest::num::f64::ZERO) {
            let shown = Number::Float(x).to_string();
            prop_assert_eq!(parse_number(&shown), Ok(Number::Float(x)));
        }
    }
}
