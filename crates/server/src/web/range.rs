//! HTTP `Range` requests on one file: a single byte range (what browsers
//! send to resume a download or seek in a video).

/// What to send of a file of `size` bytes for a `Range` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Span {
    /// The whole file (no header, or one we do not serve: several ranges).
    Whole,
    /// Bytes `start..=end`.
    Part { start: u64, end: u64 },
    /// Nothing satisfiable: 416.
    Unsatisfiable,
}

/// Parses `bytes=a-b`, `bytes=a-` and `bytes=-n` against `size`.
pub(crate) fn span(header: Option<&str>, size: u64) -> Span {
    let Some(h) = header else {
        return Span::Whole;
    };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return Span::Unsatisfiable;
    };
    if spec.contains(',') {
        // Several ranges: allowed to answer with the whole file.
        return Span::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Span::Unsatisfiable;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        (true, true) => None,
        // The last n bytes.
        (true, false) => b
            .parse::<u64>()
            .ok()
            .and_then(|n| (n > 0 && size > 0).then(|| (size.saturating_sub(n), size - 1))),
        (false, _) => a.parse::<u64>().ok().and_then(|start| {
            let end = if b.is_empty() {
                Some(size.saturating_sub(1))
            } else {
                b.parse::<u64>().ok().map(|e| e.min(size.saturating_sub(1)))
            }?;
            (start < size && start <= end).then_some((start, end))
        }),
    };
    match parsed {
        Some((start, end)) => Span::Part { start, end },
        None => Span::Unsatisfiable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_as_browsers_send_them() {
        assert_eq!(span(None, 10), Span::Whole);
        assert_eq!(span(Some("bytes=0-"), 10), Span::Part { start: 0, end: 9 });
        assert_eq!(span(Some("bytes=2-4"), 10), Span::Part { start: 2, end: 4 });
        assert_eq!(
            span(Some("bytes=2-400"), 10),
            Span::Part { start: 2, end: 9 }
        );
        assert_eq!(span(Some("bytes=-3"), 10), Span::Part { start: 7, end: 9 });
        assert_eq!(span(Some("bytes=-30"), 10), Span::Part { start: 0, end: 9 });
        assert_eq!(span(Some("bytes=10-"), 10), Span::Unsatisfiable);
        assert_eq!(span(Some("bytes=5-2"), 10), Span::Unsatisfiable);
        assert_eq!(span(Some("bytes=x-2"), 10), Span::Unsatisfiable);
        assert_eq!(span(Some("items=0-1"), 10), Span::Unsatisfiable);
        assert_eq!(span(Some("bytes=0-0"), 0), Span::Unsatisfiable);
        assert_eq!(span(Some("bytes=0-1,3-4"), 10), Span::Whole);
    }
}
