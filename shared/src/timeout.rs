//! The `grpc-timeout` header: how long the caller will wait, as the gRPC over HTTP/2
//! protocol writes it (`PROTOCOL-HTTP2.md`, in the grpc/grpc repository):
//!
//! ```text
//! Timeout      → "grpc-timeout" TimeoutValue TimeoutUnit
//! TimeoutValue → {positive integer as ASCII string of at most 8 digits}
//! TimeoutUnit  → Hour / Minute / Second / Millisecond / Microsecond / Nanosecond
//!                "H"    "M"      "S"      "m"           "u"           "n"
//! ```
//!
//! tonic enforces the header on its server but does not hand it to the handler, so a hop
//! that passes a deadline on (the retry example) or a proxy that bounds its own wait (the
//! proxy example) reads it itself, here, so that both agree on what a header means.

use std::time::Duration;

/// Reads a `grpc-timeout` value (`250m`, `5S`, `1234000u`); `None` if it is not one.
///
/// Strict where the grammar is: ASCII digits only, at most 8 (99 999 999 hours fit a `u64`
/// many times over). `u64::from_str` alone would read `+5S` as five seconds; the grammar has
/// no sign, and a header two readers understand differently (a proxy bounding a call the next
/// hop sees without a deadline) is worse than one both refuse, as no header at all. Zero is
/// read, though the grammar says "positive": tonic writes `0n` when the time is gone, and
/// reading that as no deadline would give the call more time, not none.
pub fn parse(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::parse;

    #[test]
    fn every_unit_is_read() {
        let cases = [
            ("2H", Duration::from_secs(2 * 3600)),
            ("3M", Duration::from_secs(3 * 60)),
            ("5S", Duration::from_secs(5)),
            ("250m", Duration::from_millis(250)),
            ("1234000u", Duration::from_millis(1234)),
            ("7n", Duration::from_nanos(7)),
            ("0n", Duration::ZERO),
        ];
        for (value, expected) in cases {
            assert_eq!(parse(value), Some(expected), "{value}");
        }
    }

    #[test]
    fn a_sign_is_refused_as_the_grammar_has_none() {
        for signed in ["+5S", "-5S", "+0n"] {
            assert_eq!(parse(signed), None, "{signed}");
        }
    }

    #[test]
    fn eight_digits_are_read_and_nine_are_refused() {
        assert_eq!(parse("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse("00000005S"), Some(Duration::from_secs(5)));
        assert_eq!(parse("123456789m"), None);
        assert_eq!(parse("000000005S"), None, "leading zeros count as digits");
    }

    #[test]
    fn the_largest_value_does_not_overflow_and_a_larger_one_is_refused() {
        assert_eq!(parse("99999999H"), Some(Duration::from_secs(99_999_999 * 3600)));
        // One past u64::MAX: refused by its length before any arithmetic.
        assert_eq!(parse("18446744073709551616S"), None);
    }

    #[test]
    fn garbage_is_refused() {
        let garbage =
            ["", "S", "m", "100", "5s", "5h", "5x", "1.5S", "5 S", " 5S", "5S ", "5SS", "½S", "5é"];
        for value in garbage {
            assert_eq!(parse(value), None, "{value:?}");
        }
    }

    #[test]
    fn what_tonic_writes_reads_back() {
        let long = Duration::from_secs(4 * 365 * 24 * 3600); // past 8 digits of seconds: minutes
        for duration in [Duration::ZERO, Duration::from_nanos(1), Duration::from_millis(1234), long]
        {
            let mut request = tonic::Request::new(());
            request.set_timeout(duration);
            let value = request.metadata().get("grpc-timeout").unwrap().to_str().unwrap();
            let read = parse(value).unwrap_or_else(|| panic!("{value} was refused"));
            // tonic rounds down to the unit that fits 8 digits; never up.
            assert!(read <= duration, "{value} read as {read:?}, more than {duration:?}");
        }
    }
}
