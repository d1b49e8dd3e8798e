//! The one piece of `Range` handling that is ours. RFC 9110 §14.1.2: a
//! last position at or beyond the end means the last byte, however many
//! digits it has, and a suffix longer than the representation means all of
//! it. The range parser under `ServeDir` answers 416 to both when the
//! number does not fit 64 bits, and to the second always. Such ranges are
//! rewritten into the open range they mean before `ServeDir` sees them.

/// The header value with each `first-LAST` whose LAST overflows made
/// `first-`, and each suffix `-N` that covers the whole file (overflowing,
/// or at least `len` when the length is known) made `0-`; `None` if
/// nothing changed or the value is not a `bytes` range (the parser answers
/// those).
pub fn normalize(value: &str, len: Option<u64>) -> Option<String> {
    let specs = value.strip_prefix("bytes=")?;
    let mut changed = false;
    let mut out = String::with_capacity(value.len());
    out.push_str("bytes=");
    for (i, spec) in specs.split(',').enumerate() {
        if i > 0 {
            out.push(',');
        }
        let Some((first, last)) = spec.split_once('-') else {
            out.push_str(spec);
            continue;
        };
        let digits = last.trim();
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(spec);
            continue;
        }
        let n = digits.parse::<u64>().ok();
        let suffix = first.trim().is_empty();
        if suffix && (n.is_none() || len.is_some_and(|l| l > 0 && n >= Some(l))) {
            changed = true;
            out.push_str(first);
            out.push_str("0-");
        } else if !suffix && n.is_none() {
            changed = true;
            out.push_str(first);
            out.push('-');
        } else {
            out.push_str(spec);
        }
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_that_mean_to_the_end_are_made_open() {
        assert_eq!(
            normalize("bytes=0-99999999999999999999999", None).as_deref(),
            Some("bytes=0-")
        );
        assert_eq!(
            normalize("bytes=-99999999999999999999999, 5-6", None).as_deref(),
            Some("bytes=0-, 5-6")
        );
        assert_eq!(normalize("bytes=-99", Some(6)).as_deref(), Some("bytes=0-"));
        assert_eq!(normalize("bytes=-6", Some(6)).as_deref(), Some("bytes=0-"));
        assert_eq!(normalize("bytes=-5", Some(6)), None);
        assert_eq!(normalize("bytes=-99", None), None);
        assert_eq!(normalize("bytes=0-99", Some(6)), None);
        assert_eq!(normalize("bytes=0-", None), None);
        assert_eq!(normalize("items=0-99999999999999999999999", None), None);
        // A first position that overflows stays: it is past any end (416).
        assert_eq!(normalize("bytes=99999999999999999999999-", None), None);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(10_000))]

            #[test]
            fn any_value_never_panics_and_normalizing_twice_changes_nothing(
                v in any::<String>(),
                len in proptest::option::of(any::<u64>()),
            ) {
                if let Some(once) = normalize(&v, len) {
                    prop_assert!(once.starts_with("bytes="));
                    prop_assert_eq!(once.split(',').count(), v.split(',').count());
                    prop_assert_eq!(normalize(&once, len), None);
                }
            }

            /// Ranges with numbers that fit, and suffixes shorter than the
            /// file, are passed on exactly as they came.
            #[test]
            fn ranges_that_fit_are_untouched(
                specs in proptest::collection::vec((any::<u64>(), any::<u64>()), 1..5),
                len in any::<u64>(),
            ) {
                let text: Vec<String> = specs.iter().map(|(a, b)| format!("{a}-{b}")).collect();
                let v = format!("bytes={}", text.join(","));
                prop_assert_eq!(normalize(&v, Some(len)), None);
            }

            #[test]
            fn overflowing_ends_become_open_ranges(first in any::<u64>(), extra in "[0-9]{1,30}") {
                let v = format!("bytes={first}-99999999999999999999{extra}");
                prop_assert_eq!(normalize(&v, None), Some(format!("bytes={first}-")));
            }
        }
    }
}
