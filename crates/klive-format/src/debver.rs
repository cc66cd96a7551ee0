//! Debian version ordering (`[epoch:]upstream[-revision]`), as dpkg compares versions, so a
//! host's kernel package version can be placed against the versions a changelog lists.

use std::cmp::Ordering;

/// Compares two Debian versions the way `dpkg --compare-versions` does.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| compare_part(ua, ub))
        .then_with(|| compare_part(ra, rb))
}

fn split(v: &str) -> (u64, &str, &str) {
    let v = v.trim();
    let (epoch, rest) = match v.split_once(':') {
        Some((e, r)) if e.bytes().all(|b| b.is_ascii_digit()) && !e.is_empty() => {
            (e.parse().unwrap_or(u64::MAX), r)
        }
        _ => (0, v),
    };
    match rest.rsplit_once('-') {
        Some((u, r)) => (epoch, u, r),
        None => (epoch, rest, ""),
    }
}

/// `~` sorts before everything (even the end), letters before other characters.
fn char_order(c: Option<u8>) -> i32 {
    match c {
        Some(b'~') => -1,
        None => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

fn compare_part(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    while !a.is_empty() || !b.is_empty() {
        // non-digit prefix
        loop {
            let ca = a.first().copied().filter(|c| !c.is_ascii_digit());
            let cb = b.first().copied().filter(|c| !c.is_ascii_digit());
            if ca.is_none() && cb.is_none() {
                break;
            }
            let (oa, ob) = (char_order(ca), char_order(cb));
            if oa != ob {
                return oa.cmp(&ob);
            }
            a = &a[1..];
            b = &b[1..];
        }
        // digit run, numerically
        let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
        let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
        let na = trim_zeros(&a[..da]);
        let nb = trim_zeros(&b[..db]);
        let ord = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
        if ord != Ordering::Equal {
            return ord;
        }
        a = &a[da..];
        b = &b[db..];
    }
    Ordering::Equal
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let zeros = d.iter().take_while(|c| **c == b'0').count();
    &d[zeros..]
}

/// True for text dpkg would accept as a version: starts with a digit (after an optional
/// epoch), and only `[A-Za-z0-9.+~:-]`.
pub fn is_valid(v: &str) -> bool {
    let (_, upstream, _) = split(v);
    upstream.bytes().next().is_some_and(|b| b.is_ascii_digit())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'~' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_like_dpkg() {
        use Ordering::*;
        let cases = [
            ("6.1.192-1", "6.1.190-1", Greater),
            ("6.1.9-1", "6.1.10-1", Less),
            ("6.1.170-3", "6.1.170-2", Greater),
            ("6.1.0~rc1-1", "6.1.0-1", Less),
            ("1:1.0-1", "2.0-1", Greater),
            ("6.1.192+2", "6.1.192-2", Greater),
            ("6.1.66-1", "6.1.66-1", Equal),
            ("1.0a-1", "1.0-1", Greater),
            ("1.0-1", "1.0+b1-1", Less),
            ("01.02-1", "1.2-1", Equal),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare(a, b), want, "{a} vs {b}");
            assert_eq!(compare(b, a), want.reverse(), "{b} vs {a}");
        }
        assert!(is_valid("6.1.192-1"));
        assert!(!is_valid("linux"));
        assert!(!is_valid("6.1 192"));
    }
}
