//! `$(VAR)` expansion exactly like Kubernetes' `third_party/forked/golang/expansion`: `$(NAME)`
//! becomes the variable's value when it is defined and stays literally `$(NAME)` when not,
//! `$$` is an escaped `$`, a `$` before anything else (or an unclosed `$(`) stays as written.

use std::collections::HashMap;

/// Expands `input` against `vars`.
pub fn expand(input: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let mut chars = after.chars();
        match chars.next() {
            // A trailing `$` stays.
            None => {
                out.push('$');
                rest = after;
            }
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('(') => match after[1..].find(')') {
                Some(close) => {
                    let name = &after[1..1 + close];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[close + 2..];
                }
                // Unclosed: `$(` is copied and scanning continues after it.
                None => {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            Some(c) => {
                out.push('$');
                out.push(c);
                rest = &after[c.len_utf8()..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> HashMap<String, String> {
        [("A", "1"), ("B", "two"), ("EMPTY", "")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn defined_references_are_replaced() {
        assert_eq!(expand("$(A)-$(B)", &vars()), "1-two");
        assert_eq!(expand("x$(EMPTY)y", &vars()), "xy");
    }

    #[test]
    fn undefined_references_stay_literal() {
        assert_eq!(expand("$(NOPE) $(A)", &vars()), "$(NOPE) 1");
    }

    #[test]
    fn double_dollar_escapes_a_reference() {
        assert_eq!(expand("$$(A)", &vars()), "$(A)");
        assert_eq!(expand("$$$(A)", &vars()), "$1");
        assert_eq!(expand("$$$$", &vars()), "$$");
    }

    #[test]
    fn other_dollars_and_unclosed_references_are_kept() {
        assert_eq!(expand("$A ${A} $", &vars()), "$A ${A} $");
        assert_eq!(expand("$(A", &vars()), "$(A");
        assert_eq!(expand("$($(A)", &vars()), "$($(A)");
        assert_eq!(expand("€$é$(A)", &vars()), "€$é1");
    }
}
