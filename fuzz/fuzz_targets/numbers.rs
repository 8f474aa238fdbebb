//! Number parsing and the arithmetic on what it yields (`core::compute`,
//! which the CLI's `add`/`sort` arguments and files and the server share):
//! tokens round-trip through their display; the text parser and the
//! token-by-token path agree; an integer sum is exact or an overflow; a
//! decimal sum is finite; sorting and merging sorted runs give one order.
#![no_main]

use std::cmp::Ordering;

use distribusync_core::compute::{
    ArithError, MergeRuns, Number, Numbers, Order, add, cmp_floats, cmp_ints, parse_number,
    parse_numbers, sort,
};
use libfuzzer_sys::fuzz_target;

fn same(a: Number, b: Number) -> bool {
    match (a, b) {
        (Number::Int(x), Number::Int(y)) => x == y,
        (Number::Float(x), Number::Float(y)) => x.to_bits() == y.to_bits(),
        _ => false,
    }
}

fn check_token(token: &str) {
    match parse_number(token) {
        Ok(n @ Number::Int(_)) => {
            let t = token.trim();
            let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
            assert!(
                !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()),
                "{token:?}"
            );
            assert!(same(parse_number(&n.to_string()).unwrap(), n), "{token:?}");
        }
        Ok(n @ Number::Float(x)) => {
            assert!(x.is_finite(), "{token:?}");
            let shown = n.to_string();
            let back = parse_number(&shown).unwrap_or_else(|e| panic!("{shown:?}: {e}"));
            assert!(same(back, n), "{token:?} -> {shown:?} -> {back:?}");
        }
        Err(_) => {}
    }
}

/// Merges `v` cut into sorted runs at `cuts`, `chunk` values at a time.
fn merged<T: Copy>(v: &[T], cuts: &[u8], chunk: usize, cmp: impl Fn(&T, &T) -> Ordering) -> Vec<T> {
    let mut runs = Vec::new();
    let mut rest = v;
    for &c in cuts {
        let at = usize::from(c).min(rest.len());
        let (run, tail) = rest.split_at(at);
        let mut run = run.to_vec();
        run.sort_by(&cmp);
        runs.push(run);
        rest = tail;
    }
    let mut last = rest.to_vec();
    last.sort_by(&cmp);
    runs.push(last);
    let mut m = MergeRuns::new(runs, cmp);
    assert_eq!(m.remaining(), v.len());
    let mut out = Vec::new();
    while let Some(c) = m.next_chunk(chunk) {
        assert!(!c.is_empty() && c.len() <= chunk);
        out.extend(c);
    }
    assert_eq!(m.remaining(), 0);
    out
}

fn check_numbers(numbers: &Numbers, cuts: &[u8], chunk: usize, order: Order) {
    match (numbers, add(numbers)) {
        (n, Err(ArithError::TooFew(k))) => assert!(n.len() < 2 && k == n.len()),
        (_, Err(ArithError::Cancelled)) => panic!("cancelled without a cancel"),
        (Numbers::Ints(v), r) => {
            let exact: i128 = v.iter().map(|&x| i128::from(x)).sum();
            match i64::try_from(exact) {
                Ok(s) => assert_eq!(r, Ok(Number::Int(s))),
                Err(_) => assert_eq!(r, Err(ArithError::IntegerOverflow)),
            }
        }
        (Numbers::Floats(v), Ok(Number::Float(x))) => {
            assert!(x.is_finite(), "{v:?}");
        }
        (Numbers::Floats(v), Err(ArithError::FloatOverflow)) => {
            // Only a total beyond the finite range overflows: the exact sum
            // (approximated in a wider scaled form) is out of range.
            let scaled: f64 = v.iter().map(|x| x / 1024.0).sum();
            assert!(scaled.abs() * 1024.0 >= f64::MAX * 0.99, "{v:?}");
        }
        (n, r) => panic!("{n:?} gave {r:?}"),
    }
    let mut sorted = numbers.clone();
    sort(&mut sorted, order);
    match (numbers, &sorted) {
        (Numbers::Ints(v), Numbers::Ints(s)) => {
            assert!(s.is_sorted_by(|a, b| cmp_ints(a, b, order) != Ordering::Greater));
            let mut want = v.clone();
            want.sort_by(|a, b| cmp_ints(a, b, order));
            assert_eq!(&want, s);
            assert_eq!(&merged(v, cuts, chunk, |a, b| cmp_ints(a, b, order)), s);
        }
        (Numbers::Floats(v), Numbers::Floats(s)) => {
            assert!(s.is_sorted_by(|a, b| cmp_floats(a, b, order) != Ordering::Greater));
            let bits = |x: &[f64]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            let mut want = v.clone();
            want.sort_by(|a, b| cmp_floats(a, b, order));
            assert_eq!(bits(&want), bits(s));
            assert_eq!(
                bits(&merged(v, cuts, chunk, |a, b| cmp_floats(a, b, order))),
                bits(s)
            );
        }
        _ => panic!("sorting changed the kind"),
    }
}

fuzz_target!(|input: (&str, Vec<u8>, u8, bool)| {
    let (text, cuts, chunk, descending) = input;
    let order = if descending {
        Order::Descending
    } else {
        Order::Ascending
    };
    let chunk = usize::from(chunk).max(1);
    let tokens: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|t| !t.is_empty())
        .collect();
    for t in &tokens {
        check_token(t);
    }
    check_token(text);
    match parse_numbers(text) {
        Ok(numbers) => {
            // The command line parses token by token; a file as text: the
            // same numbers either way.
            let each: Vec<Number> = tokens.iter().map(|t| parse_number(t).unwrap()).collect();
            assert_eq!(Numbers::from_numbers(&each), numbers);
            check_numbers(&numbers, &cuts, chunk, order);
        }
        Err(e) => {
            assert!(e.line >= 1 && e.line <= text.lines().count(), "{e}");
            assert!(parse_number(&e.token).is_err());
            assert!(tokens.contains(&e.token.as_str()), "{e}");
        }
    }
});
