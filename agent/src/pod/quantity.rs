//! Kubernetes resource quantities (`100m`, `0.5`, `128Mi`, `1e3`) as exact integers: CPU in
//! millicores and memory in bytes, rounded up like the API server's `Quantity` does.
//!
//! The value is kept as a decimal fraction (`digits / 10^scale`) times a rational suffix
//! multiplier, so `0.1Gi` or `1.5k` are exact; nothing goes through floating point.

/// A quantity that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not `<number><suffix>` with a known suffix.
    #[error("invalid quantity {0:?}")]
    Syntax(String),
    /// Negative quantities are never valid resources.
    #[error("negative quantity {0:?}")]
    Negative(String),
    /// Beyond what fits in 64 bits.
    #[error("quantity {0:?} is too large")]
    TooLarge(String),
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `(numerator, denominator)` of a suffix.
fn suffix(s: &str) -> Option<(u128, u128)> {
    const K: u128 = 1000;
    const KI: u128 = 1024;
    Some(match s {
        "" => (1, 1),
        "n" => (1, K * K * K),
        "u" => (1, K * K),
        "m" => (1, K),
        "k" => (K, 1),
        "M" => (K.pow(2), 1),
        "G" => (K.pow(3), 1),
        "T" => (K.pow(4), 1),
        "P" => (K.pow(5), 1),
        "E" => (K.pow(6), 1),
        "Ki" => (KI, 1),
        "Mi" => (KI.pow(2), 1),
        "Gi" => (KI.pow(3), 1),
        "Ti" => (KI.pow(4), 1),
        "Pi" => (KI.pow(5), 1),
        "Ei" => (KI.pow(6), 1),
        _ => {
            // Decimal exponent: e3, E-2.
            let rest = s.strip_prefix('e').or_else(|| s.strip_prefix('E'))?;
            let exp: i32 = rest.parse().ok()?;
            if !(-18..=18).contains(&exp) {
                return None;
            }
            if exp >= 0 {
                (10u128.pow(exp.unsigned_abs()), 1)
            } else {
                (1, 10u128.pow(exp.unsigned_abs()))
            }
        }
    })
}

/// `value * unit`, rounded up to an integer.
fn parse_scaled(q: &str, unit: u128) -> Result<u64> {
    let s = q.trim();
    let syntax = || Error::Syntax(q.to_owned());
    let (neg, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, suf) = s.split_at(end);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') || frac.len() > 18 {
        return Err(syntax());
    }
    let (n, d) = suffix(suf).ok_or_else(syntax)?;
    let digits: u128 = format!("{int}{frac}").parse().map_err(|_| syntax())?;
    if neg && digits != 0 {
        return Err(Error::Negative(q.to_owned()));
    }
    let scale = 10u128.pow(frac.len() as u32);
    let big = || Error::TooLarge(q.to_owned());
    let num = digits.checked_mul(n).and_then(|v| v.checked_mul(unit)).ok_or_else(big)?;
    let den = scale.checked_mul(d).ok_or_else(big)?;
    let v = num.div_ceil(den);
    u64::try_from(v).map_err(|_| big())
}

/// A CPU quantity in millicores (`0.5` and `500m` are 500), rounded up.
pub fn cpu_millis(q: &str) -> Result<u64> {
    parse_scaled(q, 1000)
}

/// A memory (or any count) quantity in units (`1Ki` is 1024), rounded up.
pub fn bytes(q: &str) -> Result<u64> {
    parse_scaled(q, 1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities_are_millicores() {
        for (q, m) in [("100m", 100), ("0.5", 500), ("2", 2000), ("1.25", 1250), ("1e-3", 1)] {
            assert_eq!(cpu_millis(q).unwrap(), m, "{q}");
        }
    }

    #[test]
    fn sub_millicore_cpu_rounds_up() {
        assert_eq!(cpu_millis("1u").unwrap(), 1);
        assert_eq!(cpu_millis("0.0001").unwrap(), 1);
        assert_eq!(cpu_millis("0").unwrap(), 0);
    }

    #[test]
    fn memory_suffixes_are_binary_and_decimal() {
        for (q, b) in [
            ("128Mi", 128 << 20),
            ("1Gi", 1 << 30),
            ("1G", 1_000_000_000),
            ("1k", 1000),
            ("1e3", 1000),
            ("1E6", 1_000_000),
            ("0.5Ki", 512),
            ("123", 123),
        ] {
            assert_eq!(bytes(q).unwrap(), b, "{q}");
        }
    }

    #[test]
    fn fractional_bytes_round_up() {
        assert_eq!(bytes("0.1").unwrap(), 1);
        assert_eq!(bytes("1500m").unwrap(), 2);
    }

    #[test]
    fn malformed_quantities_are_refused() {
        for q in ["", "abc", "1X", "1.2.3", "Mi", ".", "1 Mi", "1e99"] {
            assert!(matches!(bytes(q), Err(Error::Syntax(_))), "{q}");
        }
        assert!(matches!(bytes("-1"), Err(Error::Negative(_))));
        assert!(matches!(bytes("100Ei"), Err(Error::TooLarge(_))));
    }
}
